"""Every number leapcore is built on, each written once: the wire's, the timers', the budgets'.

The rule this module holds: a number of ``design.md``'s table, a protocol constant other
modules share, or a budget's default and accepted range is assigned here and nowhere else.
Cores, drivers, the configuration and the CLIs import it from here (``tests/proto/
test_limits.py`` fails when another module assigns a constant of the same name). Values and
value classes only — no I/O, no clock, nothing but :mod:`leapcore.errors` imported — so any
layer may read it, ``net/`` included.

Sections: the wire (transport frames, message size, relay and credit); timers (heartbeat,
liveness, reconnect backoff, go-away, rekey, stopping on a signal); registration keys and
the hub store; the worker's budgets; the listener's budgets (:class:`ServerLimits`,
:class:`FrameBudget`); the hub's budgets (:class:`HubLimits`, :data:`LIMIT_RANGES`). What
each budget does when exceeded is in ``docs/budgets.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs

from ..errors import ConfigError

#: Every constant (an upper-case name) is exported, and these (see the end of the module).
_EXPORTED: Final = (
    "FrameBudget",
    "HubLimits",
    "ServerLimits",
    "check_limit",
    "describe",
    "max_message_size_problem",
    "validate_max_message_size",
)

# --- The wire -----------------------------------------------------------------------------

#: Bytes of one transport frame's ciphertext (spec/handshake.md; a link data record's
#: ciphertext field is at most this).
MAX_CIPHERTEXT: Final = 65535
#: Bytes of plaintext one transport frame carries: the ciphertext less the 16-byte
#: ChaCha20-Poly1305 tag (:data:`leapcore.crypto.primitives.AEAD_TAG_SIZE`).
MAX_PLAINTEXT: Final = MAX_CIPHERTEXT - 16  # 65519
#: A channel's message size when nobody asks for another (negotiated at open).
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
#: The smallest message size a channel may negotiate: one frame's plaintext.
MIN_MAX_MESSAGE_SIZE: Final = MAX_PLAINTEXT
#: The largest message size a channel may negotiate.
MAX_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024
#: Chunked messages a channel endpoint (the worker's, by default) reassembles at once.
DEFAULT_MAX_INCOMPLETE: Final = 4
#: How far past the negotiated size the hub's estimate of a chunked message may go.
REASSEMBLY_SLACK: Final = 64 * 1024
#: Bytes of credit each sending end of a channel starts with at the hub.
CHANNEL_CREDIT: Final = 1024 * 1024
#: The hub gives credit back once this much is pending: a quarter of the credit, so that a
#: batch plus the largest frame fit in it and a sender never waits on credit held back.
CREDIT_BATCH: Final = CHANNEL_CREDIT // 4
#: The largest a byte stream's receive window grows to while its reader keeps up
#: (:mod:`leapcore.proto.channel_windows`; it starts at 256 KiB).
MAX_STREAM_WINDOW: Final = 4 * 1024 * 1024
#: Bytes of window growth one channel end lends its byte streams altogether: with the
#: initial windows, the most a channel end promises to buffer for its byte streams.
CHANNEL_WINDOW_BUDGET: Final = 8 * 1024 * 1024
#: Capabilities a worker advertises in its ``connect`` (service groups: ``exec``, ``pty``, …;
#: :mod:`leapcore.proto.capabilities`).
MAX_CAPABILITIES: Final = 64
#: One capability name: 1 .. this many characters of ``[A-Za-z0-9_.-]``.
MAX_CAPABILITY: Final = 64
#: A worker's ``os`` and ``arch`` in its ``connect`` (``linux``, ``x86_64``, …).
MAX_PLATFORM: Final = 64


def max_message_size_problem(value: object) -> str | None:
    """None when ``value`` is a message size a channel may negotiate, else what is required.

    The one check of the range (the configuration words its error with it too)."""
    if type(value) is not int or not MIN_MAX_MESSAGE_SIZE <= value <= MAX_MAX_MESSAGE_SIZE:
        return f"must be an integer in {MIN_MAX_MESSAGE_SIZE}..{MAX_MAX_MESSAGE_SIZE}"
    return None


def validate_max_message_size(value: object) -> int:
    """``value`` if it is an integer in 65519 .. 67108864, else :class:`ConfigError`."""
    problem = max_message_size_problem(value)
    if problem is None and type(value) is int:
        return value
    raise ConfigError(f"max_message_size {problem}, got {value!r}")


# --- Timers (seconds) ---------------------------------------------------------------------

#: The worker checks this often whether an idle heartbeat is due ...
HEARTBEAT_CHECK_INTERVAL: Final = 2.0
#: ... and sends one when it has sent nothing for this long.
HEARTBEAT_IDLE_AFTER: Final = 5.0
#: The hub counts a worker silent this long (nothing received) as offline.
LIVENESS_TIMEOUT: Final = 10.0
#: A peer's wait for the hub's greeting after signing in, before it gives up on the link.
GREETING_TIMEOUT: Final = 10.0
#: Reconnect backoff: the first base delay ...
BACKOFF_INITIAL: Final = 1.0
#: ... multiplied by this after each attempt (on the un-jittered base) ...
BACKOFF_MULTIPLIER: Final = 2.0
#: ... up to this base ...
BACKOFF_MAX: Final = 180.0
#: ... each wait uniform within this fraction either side of the base.
BACKOFF_JITTER: Final = 0.2
#: A connection that lasted this long (timed from the dial) resets the backoff.
BACKOFF_RESET_AFTER: Final = 30.0
#: The wait a hub that is shutting down asks of its workers (a whole number of seconds).
GO_AWAY_DELAY: Final = 10
#: Hub URLs one worker may be given (``--hub`` repeated, a comma-separated list); more is a
#: configuration error (:mod:`leapcore.proto.hub_failover`).
MAX_HUB_URLS: Final = 16
#: Seconds a channel open may take: the hub's wait for the worker's answer, and a
#: client's whole open (request, handshake and first Ping).
OPEN_TIMEOUT: Final = 30.0
#: Seconds a worker spends dialling a tunnel's target (name resolution and TCP connect);
#: past it the open is refused ``timed_out``.
TUNNEL_DIAL_TIMEOUT: Final = 30.0
#: A client's default wait for a tunnel open (``Channel.open_tcp``): longer than the worker's
#: dial timeout, so that the worker's ``timed_out`` answer arrives first.
TUNNEL_OPEN_TIMEOUT: Final = TUNNEL_DIAL_TIMEOUT + 5.0
#: Bytes a tunnel end reads from its TCP socket at once: four whole BYTES_DATA messages
#: (each at most one frame's plaintext less its kind byte), so that no read leaves a small
#: tail message -- a 64 KiB read cost two frames, the second one of 18 bytes.
TUNNEL_READ_SIZE: Final = 4 * (MAX_PLAINTEXT - 1)
#: Processes the ``exec`` service runs for one channel at once (started and not yet reaped
#: with ``exec.wait``, or whose process group still has members); one more is refused
#: ``resource_exhausted``.
EXEC_MAX_PROCESSES: Final = 16
#: Seconds between the SIGTERM and the SIGKILL sent to an ``exec`` process group when its
#: channel closes, its timeout passes or its opener resets the stream (sooner if the
#: process exits first: the SIGKILL then takes the rest of the group).
EXEC_KILL_GRACE: Final = 2.0
#: Bytes the ``exec`` service reads from a process's stdout or stderr pipe at once (whole
#: BYTES_DATA messages, as for tunnels).
EXEC_READ_SIZE: Final = TUNNEL_READ_SIZE
#: Bytes of stdout, and of stderr, ``Channel.run_command`` keeps by default; more fails the
#: run (``ProcessOutputTooLarge``) and the process is killed.
EXEC_RUN_MAX_OUTPUT: Final = 64 * 1024 * 1024
#: Bytes the ``files`` service (and ``Channel.put``/``get``) reads from a file at once (whole
#: BYTES_DATA messages, as for tunnels).
FILES_READ_SIZE: Final = TUNNEL_READ_SIZE
#: Entries one ``files.list`` stream item carries, at most.
FILES_LIST_BATCH: Final = 512
#: Entries one recursive copy handles, at most (a listing past it fails the copy).
FILES_MAX_ENTRIES: Final = 1_000_000
#: Bytes of UTF-8 in a path of a ``files`` payload, at most (Linux's PATH_MAX).
FILES_MAX_PATH: Final = 4096
#: Files ``Channel.put``/``get`` copy at once (byte streams open at once on the channel).
FILES_PARALLEL: Final = 8
#: Terminal sessions (``pty.*``) one worker keeps at once, running or exited; a spawn past
#: it forgets the oldest exited session, or is refused ``resource_exhausted`` if all run.
PTY_MAX_SESSIONS: Final = 32
#: Workspaces (git worktrees) one worker keeps, at most; a create past it is refused
#: ``resource_exhausted``.
WORKSPACE_MAX: Final = 256
#: Bytes of a repository URL, at most.
WORKSPACE_MAX_URL: Final = 2048
#: Seconds one git command (clone, fetch, worktree add) may take before it is killed.
WORKSPACE_GIT_TIMEOUT: Final = 600.0
#: git commands a worker runs at once (more wait their turn, one per workspace call).
WORKSPACE_GIT_PARALLEL: Final = 4
#: Bytes of a failed git command's stderr kept for the error message (its tail).
WORKSPACE_GIT_OUTPUT: Final = 8192
#: The worker's audit log is rotated at this size (bytes; setting ``audit_max_bytes``,
#: within AUDIT_LOG_MAX_BYTES_RANGE) ...
AUDIT_LOG_MAX_BYTES: Final = 16 * 1024 * 1024
AUDIT_LOG_MAX_BYTES_RANGE: Final = (64 * 1024, 1024**4)
#: ... and its rotated files are deleted after this many days (``audit_retention_days``).
AUDIT_LOG_RETENTION_DAYS: Final = 90
#: The largest per-capability concurrency limit a worker accepts (``concurrency``).
CONCURRENCY_MAX: Final = 100_000
#: A worker policy file's size, at most (bytes); a larger one is refused unread.
POLICY_MAX_FILE_BYTES: Final = 1024 * 1024
#: Entries in one list of a policy file (exec.allow, files.roots, ...), at most.
POLICY_MAX_RULES: Final = 4096
#: Characters of one entry of a policy file's list, at most.
POLICY_MAX_RULE_LENGTH: Final = 4096
#: A terminal's size: columns and rows 1 .. these, and at most PTY_MAX_CELLS cells (the
#: emulator's screen costs memory per cell).
PTY_MAX_COLS: Final = 1000
PTY_MAX_ROWS: Final = 1000
PTY_MAX_CELLS: Final = 200_000
#: Lines that scrolled off a session's screen kept as text for ``pty.capture``.
PTY_SCROLLBACK_LINES: Final = 2000
#: Bytes the worker reads from a terminal at once: the terminal emulator (pure Python,
#: a few hundred KB/s) parses each read before the worker's other tasks run again, so
#: reads stay small enough (a few ms each) not to hold them up.
PTY_READ_SIZE: Final = 4096
#: Output bytes held for one attached stream that does not keep up; past it they are
#: dropped and the stream gets a fresh screen snapshot instead (a redraw).
PTY_ATTACH_BACKLOG: Final = 256 * 1024
#: Streams attached to one session at once.
PTY_MAX_ATTACHED: Final = 8
#: Bytes of keys one ``pty.send`` carries.
PTY_MAX_SEND: Final = 64 * 1024
#: Seconds between the SIGHUP and the SIGKILL sent to a session's process groups when it
#: is killed (or the worker stops).
PTY_KILL_GRACE: Final = 2.0
#: Seconds a session whose process exited waits for the rest of its output (the terminal
#: held open by a leftover background process) before it is closed.
PTY_EXIT_DRAIN: Final = 1.0
#: SOCKS5 handshakes (greeting and request, not yet answered) one tunnel listener holds at
#: once; one more closes the oldest, so an idle flood cannot lock out real clients.
SOCKS_MAX_PENDING_HANDSHAKES: Final = 512
#: Channel opens one link may have waiting at the hub for their worker at once.
MAX_PENDING_OPENS: Final = 64
#: Requests (hub calls and channel opens, orphaned opens included) a peer holds on one link.
MAX_PENDING_REQUESTS: Final = 64
#: Rekey: a key this old is replaced ...
REKEY_MAX_AGE: Final = 3600.0
#: ... an age-only request sooner than this after the last rekey is rejected ...
REKEY_MIN_INTERVAL: Final = 3000.0
#: ... and a key this old closes the channel.
REKEY_HARD_CEILING: Final = 4200.0
#: A rejected rekey is asked again after this long (when the reject names no time).
REKEY_REJECT_BACKOFF: Final = 60.0
#: A rekey request unanswered this long closes the channel.
REKEY_TIMEOUT: Final = 10.0
#: How often an idle channel's key age is checked.
REKEY_IDLE_CHECK: Final = 60.0
#: How long the previous receive key still decrypts after a rekey.
GRACE_WINDOW: Final = 10.0
#: How long a hub, worker or solo process may take to stop after the first SIGINT/SIGTERM
#: (a second signal, or this, cancels it outright).
STOP_GRACE: Final = 10.0

# --- The hub's web page (leapcore.hub.web) ----------------------------------------------------

#: Signed-in web sessions held at once, in all and per user; one more evicts the least
#: recently used (the user's own first).
WEB_MAX_SESSIONS: Final = 1024
WEB_MAX_SESSIONS_PER_USER: Final = 16
#: Seconds a web session lives without a request (an open event stream counts).
WEB_SESSION_IDLE: Final = 12 * 3600.0
#: Event streams (``GET /api/events``) open at once, in all and per session; one more is 429.
WEB_MAX_STREAMS: Final = 64
WEB_MAX_STREAMS_PER_SESSION: Final = 4
#: Connections to the web listener at once (event streams included); one more gets 503.
WEB_MAX_CONNECTIONS: Final = 128
#: Bytes of a request line and headers (431 beyond), headers in a request (431 beyond) and
#: bytes of a request body (413 beyond).
WEB_MAX_REQUEST_HEAD: Final = 8192
WEB_MAX_HEADERS: Final = 48
WEB_MAX_BODY: Final = 4096
#: Seconds a client has to send its whole request (408 after), and to take each write.
WEB_REQUEST_TIMEOUT: Final = 10.0
WEB_SEND_TIMEOUT: Final = 10.0
#: Seconds between an event stream's keep-alive comments (each re-checks the session).
WEB_KEEPALIVE: Final = 15.0
#: Presence changes queued per event stream; a stream that falls further behind is closed
#: (the browser reconnects and gets the whole list again).
WEB_EVENT_QUEUE: Final = 64
#: Seconds between the page's keep-alive calls for a registration key while its panel is open.
WEB_REGKEY_KEEPALIVE: Final = 30.0

# --- Registration keys and the hub store ----------------------------------------------------

#: Characters in every id the hub mints (registration keys, worker ids, tokens), drawn
#: from ``[A-Za-z0-9]``.
ID_LENGTH: Final = 48
#: Milliseconds a registration key lives after it is minted or extended ...
REG_KEY_LIFETIME_MS: Final = 5 * 60 * 1000
#: ... and it may be extended only when less than this is left.
REG_KEY_EXTEND_WINDOW_MS: Final = 2 * 60 * 1000
#: Active workers one user may register (0: unlimited); hub setting ``max_workers_per_user``.
DEFAULT_MAX_WORKERS_PER_USER: Final = 64
#: Connections one hub keeps to PostgreSQL at most, and the most that hub setting
#: ``store_pool_size`` may say (``leapcore.store.pgdb``).
DEFAULT_STORE_POOL_SIZE: Final = 8
MAX_STORE_POOL_SIZE: Final = 100

# --- The worker's budgets -------------------------------------------------------------------

#: Channels open at once on a worker's link; worker setting ``max_channels``.
MAX_CHANNELS: Final = 256
#: The worker's metrics listener (``--metrics-listen``): seconds from accept to the answer
#: written (the request head read, the response sent); a slower client is closed.
METRICS_REQUEST_TIMEOUT: Final = 5.0
#: The worker's metrics listener: connections served at once (from all addresses: loopback
#: peers are one address); one more is answered 503 and closed.
METRICS_MAX_CONNECTIONS: Final = 8
#: The worker's metrics listener: bytes of a request head (larger: 400).
METRICS_MAX_REQUEST_HEAD: Final = 8 * 1024
#: The worker's ``calls_total{capability,outcome}``: distinct label pairs kept; calls of
#: further pairs are counted under ``{capability="other",outcome="other"}``.
METRICS_MAX_CALL_SERIES: Final = 256
#: The upper bounds (seconds) of the worker's ``call_duration_seconds`` buckets (then +Inf).
METRICS_CALL_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# --- The listener's budgets -----------------------------------------------------------------
# What one peer can make a :class:`~leapcore.net.listen.LinkServer` hold; what each one does
# is described in :mod:`leapcore.net.listen`.

#: Seconds from accept to a link (TLS, HTTP/1 head or HTTP/2 preface, upgrade or link stream).
HANDSHAKE_TIMEOUT: Final = 10.0
#: Live connections from one IP address (an IPv6 peer counts by its /64 prefix; Unix-socket
#: peers: one address, "unix").
MAX_CONNECTIONS_PER_ADDRESS: Final = 128
#: Connections accepted that are not yet a link (TLS, HTTP head, upgrade or link stream, or
#: serving only routes), from all addresses together.
MAX_PENDING_CONNECTIONS: Final = 512
#: Bytes of an HTTP/1 request head; HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE.
MAX_HEADER_LIST_SIZE: Final = 16 * 1024
#: HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
MAX_CONCURRENT_STREAMS: Final = 100
#: Bytes an HTTP/2 connection may hold to send before it is closed (the peer is not reading).
MAX_PENDING_OUTPUT: Final = 1024 * 1024
#: Control frames (WebSocket ping/pong; HTTP/2 PING and PING ACK, SETTINGS and SETTINGS ACK,
#: RST_STREAM, PRIORITY, DATA without data) one connection may send per second.
MAX_CONTROL_FRAMES: Final = 100
#: First wait after accept fails for lack of descriptors or memory; doubles while it persists.
ACCEPT_BACKOFF_INITIAL: Final = 0.005
#: Longest wait between accept attempts while descriptors or memory are short.
ACCEPT_BACKOFF_MAX: Final = 1.0


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _at_least(minimum: int) -> Callable[[object, attrs.Attribute[Any], int], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value!r}")

    return check


@attrs.frozen
class ServerLimits:
    """What one peer can make a listener hold (:mod:`leapcore.net.listen` says what each does)."""

    handshake_timeout: float = attrs.field(default=HANDSHAKE_TIMEOUT, validator=_positive)
    max_connections_per_address: int = attrs.field(
        default=MAX_CONNECTIONS_PER_ADDRESS, validator=_at_least(1)
    )
    max_pending_connections: int = attrs.field(
        default=MAX_PENDING_CONNECTIONS, validator=_at_least(1)
    )
    max_header_list_size: int = attrs.field(default=MAX_HEADER_LIST_SIZE, validator=_at_least(1024))
    max_concurrent_streams: int = attrs.field(
        default=MAX_CONCURRENT_STREAMS, validator=_at_least(1)
    )
    max_pending_output: int = attrs.field(default=MAX_PENDING_OUTPUT, validator=_at_least(65536))
    max_control_frames: int = attrs.field(default=MAX_CONTROL_FRAMES, validator=_at_least(1))
    accept_backoff_initial: float = attrs.field(default=ACCEPT_BACKOFF_INITIAL, validator=_positive)
    accept_backoff_max: float = attrs.field(default=ACCEPT_BACKOFF_MAX, validator=_positive)


class FrameBudget:
    """At most ``limit`` events (a connection's control frames) per fixed window of
    ``window`` seconds; time is the ``now`` argument."""

    __slots__ = ("_count", "_start", "limit", "window")

    def __init__(self, limit: int, window: float = 1.0) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._start = -float("inf")
        self._count = 0

    def spend(self, now: float, n: int = 1) -> bool:
        """Count ``n`` events at ``now``; False once this window holds more than ``limit``."""
        if n <= 0:
            return True
        if now >= self._start + self.window:
            self._start, self._count = now, 0
        self._count += n
        return self._count <= self.limit


# --- The hub's budgets ----------------------------------------------------------------------
# What signed-in peers may make the hub hold, and how often it re-checks them: the fields of
# HubLimits, whose docstring says what happens when each is exceeded.

#: Seconds a new link has to send its first record (sign in, connect or register).
SIGNIN_TIMEOUT: Final = 10.0
#: Seconds a client link may send nothing before it is closed.
CLIENT_IDLE_TIMEOUT: Final = 600.0
#: Signed-in client links per user.
MAX_LINKS_PER_USER: Final = 32
#: Signed-in links (client and worker) per peer IP address.
MAX_LINKS_PER_ADDRESS: Final = 256
#: Channels (live or opening) one link has opened.
MAX_CHANNELS_PER_LINK: Final = 256
#: Channels (live or opening) one user's links have opened.
MAX_CHANNELS_PER_USER: Final = 1024
#: Channels (live or opening) one worker serves.
MAX_CHANNELS_PER_WORKER: Final = 256
#: Channel opens waiting for one worker's answer at once.
MAX_PENDING_OPENS_PER_WORKER: Final = 64
#: Bytes of control records queued for one link's writer.
MAX_LINK_QUEUE_BYTES: Final = 4 * 1024 * 1024
#: A user's unexpired registration keys.
MAX_LIVE_REGISTRATION_KEYS: Final = 16
#: Seconds an expired registration key is kept before it is purged.
REGISTRATION_KEY_RETENTION: Final = 24 * 3600.0
#: Seconds between purges of expired registration keys (and of old audit events).
PURGE_INTERVAL: Final = 3600.0
#: Seconds a worker's ``last_seen_at`` may wait in the hub's memory before it is written
#: (heartbeats are batched into one transaction; a link's end writes at once).
LAST_SEEN_FLUSH_INTERVAL: Final = 5.0
#: Store calls a hub runs at once, each in a worker thread, when its store does not say
#: (its ``max_concurrent_calls``): SQLite's one connection serves one call at a time.
STORE_CALLS_AT_ONCE: Final = 1
# Several hubs as one (leapcore.hub.cluster): a hub renews its lease and its workers'
# presence leases every CLUSTER_RENEW_INTERVAL, in one transaction; a worker on a hub that
# stopped renewing shows offline once its lease (CLUSTER_LEASE) ends.
CLUSTER_RENEW_INTERVAL: Final = 5.0
CLUSTER_LEASE: Final = 15.0
#: Their accepted ranges (hub settings ``cluster_renew_interval``, ``cluster_lease``; the
#: lease must also be longer than the interval).
CLUSTER_RENEW_RANGE: Final = (0.1, 600.0)
CLUSTER_LEASE_RANGE: Final = (0.5, 3600.0)
#: Hub-to-hub links: seconds for the dial and the secret's challenge-response, the ping
#: interval, and the silence after which a link is dead.
CLUSTER_HANDSHAKE_TIMEOUT: Final = 10.0
CLUSTER_PING_INTERVAL: Final = 5.0
CLUSTER_IDLE_TIMEOUT: Final = 15.0
#: Hub-to-hub connections accepted at once (signed in or not); more are closed unread.
CLUSTER_MAX_CONNECTIONS: Final = 64
#: Opens being looked up in the database at once to be carried to another hub (more are
#: answered as for a worker offline, ``worker_offline``).
CLUSTER_MAX_LOOKUPS: Final = 256
#: Least bytes in a cluster secret file (after stripping surrounding whitespace).
CLUSTER_SECRET_MIN: Final = 16
#: Days an audit event is kept (:mod:`leapcore.proto.audit_events`).
AUDIT_RETENTION_DAYS: Final = 365
#: Milliseconds in a day (token lifetimes are set in days).
DAY_MS: Final = 86_400_000
#: Days a worker's auth token lives (then it is refused ``token_expired``).
WORKER_TOKEN_LIFETIME_DAYS: Final = 90
#: Days an API token lives.
API_TOKEN_LIFETIME_DAYS: Final = 90
#: Days before its worker token expires that a connected worker is offered a new one.
TOKEN_ROTATION_WINDOW_DAYS: Final = 7
#: Seconds between checks for revoked API tokens and deregistered or deleted workers.
REVOCATION_CHECK_INTERVAL: Final = 0.5
#: Seconds a deregistering worker's link may wait for its acknowledgement.
DEREGISTER_GRACE: Final = 10.0

#: Field -> (type, minimum, maximum), both bounds inclusive. A ``float`` field takes an
#: ``int`` too; an ``int`` field only an ``int``.
LIMIT_RANGES: Final[dict[str, tuple[type, float, float]]] = {
    "signin_timeout": (float, 1.0, 600.0),
    "client_idle_timeout": (float, 60.0, 7 * 24 * 3600.0),
    "max_links_per_user": (int, 1, 1_000_000),
    "max_links_per_address": (int, 1, 1_000_000),
    "max_channels_per_link": (int, 1, 1_000_000),
    "max_channels_per_user": (int, 1, 1_000_000),
    "max_channels_per_worker": (int, 1, 1_000_000),
    "max_pending_opens_per_worker": (int, 1, 1_000_000),
    # At least two of the largest control records (128 KiB each).
    "max_link_queue_bytes": (int, 256 * 1024, 1024 * 1024 * 1024),
    "max_live_registration_keys": (int, 1, 1_000_000),
    "registration_key_retention": (float, 0.0, 365 * 24 * 3600.0),
    "purge_interval": (float, 1.0, 7 * 24 * 3600.0),
    "audit_retention_days": (int, 1, 36500),
    "worker_token_lifetime_days": (int, 2, 3650),
    "api_token_lifetime_days": (int, 1, 3650),
    "token_rotation_window_days": (int, 1, 365),
    "revocation_check_interval": (float, 0.05, 60.0),
    "deregister_grace": (float, 1.0, 600.0),
    # The listener's (ServerLimits), within that class's own checks.
    "handshake_timeout": (float, 1.0, 600.0),
    "max_connections_per_address": (int, 1, 1_000_000),
    "max_header_list_size": (int, 1024, 1024 * 1024),
    "max_concurrent_streams": (int, 1, 10_000),
    "max_pending_output": (int, 64 * 1024, 256 * 1024 * 1024),
    "max_control_frames": (int, 1, 1_000_000),
    "max_pending_connections": (int, 1, 1_000_000),
}
#: The fields of :class:`HubLimits` that configure the listener.
SERVER_FIELDS: Final = (
    "handshake_timeout",
    "max_connections_per_address",
    "max_header_list_size",
    "max_concurrent_streams",
    "max_pending_output",
    "max_control_frames",
    "max_pending_connections",
)


def check_limit(name: str, value: Any) -> str | None:
    """None when ``value`` is acceptable for field ``name``, else what is required."""
    kind, low, high = LIMIT_RANGES[name]
    allowed = (int, float) if kind is float else (int,)
    if type(value) not in allowed:
        return "must be a number" if kind is float else "must be an integer"
    if not low <= value <= high:
        return f"must be between {describe(low)} and {describe(high)}"
    return None


def describe(value: float) -> str:
    """A bound or default as messages and help write it: ``600``, ``0.5``, ``31536000``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _validate(instance: Any, attribute: Any, value: Any) -> None:
    problem = check_limit(attribute.name, value)
    if problem is not None:
        raise ConfigError(f"HubLimits.{attribute.name} {problem}, got {value!r}")


@attrs.frozen(kw_only=True)
class HubLimits:
    """The hub's budgets: one frozen value passed to ``Hub(..., limits=HubLimits(...))``.

    Every field has a default (the constant of the same name in upper case) and an accepted
    range (:data:`LIMIT_RANGES`), which the hub's configuration (``hub.toml``,
    ``LEAPCORE_HUB_*``, ``leapcore-hub serve`` flags) uses under the same names. When one is
    exceeded:

    * ``signin_timeout`` (10 s): a new link must send its first record (``register``,
      ``connect`` or ``client_hello``) within this long of becoming a link, or it is closed.
      (The listener's ``handshake_timeout`` bounds the time before that.)
    * ``client_idle_timeout`` (600 s, at least 60 s): a client link that sends nothing (a
      heartbeat counts) for that long is closed with an ``error`` record ``unavailable``.
    * ``max_links_per_user`` (32): a user's signed-in client links; one more is refused with
      ``error`` ``quota_exceeded``.
    * ``max_links_per_address`` (256): signed-in links (client and worker) from one IP
      address; one more is refused with ``error`` ``quota_exceeded``. Unix-socket peers are
      not counted (they are local). Every link is also a connection, so the listener's
      ``max_connections_per_address`` (128 by default) applies first: raise both for many
      users behind one NAT address.
    * ``max_channels_per_link`` (256), ``max_channels_per_user`` (1024),
      ``max_channels_per_worker`` (256): channels opened by one link, opened by one user's
      links (its clients and its workers), and served by one worker — live and still
      opening; one more is ``channel_refused`` ``quota_exceeded``.
    * ``max_pending_opens_per_worker`` (64): opens waiting for one worker's answer, whoever
      asked; one more is ``channel_refused`` ``unavailable`` (as for the per-link
      :data:`MAX_PENDING_OPENS`).
    * ``max_link_queue_bytes`` (4 MiB): control records queued for one link's writer, in
      bytes (besides :data:`leapcore.hub.server.SEND_QUEUE` records); a peer that lets more
      pile up is not reading, and its link is closed.
    * ``max_live_registration_keys`` (16): a user's unexpired registration keys; minting one
      more is refused ``quota_exceeded``.
    * ``registration_key_retention`` (1 day) and ``purge_interval`` (1 h): keys expired (or
      used, or revoked) for longer than the retention are deleted when the hub starts and
      then every interval.
    * ``audit_retention_days`` (365, 1 to 36500): audit events older than this many days
      are deleted at the same times.
    * ``worker_token_lifetime_days`` (90, 2 to 3650) and ``api_token_lifetime_days`` (90, 1
      to 3650): a worker auth token or an API token made from now on expires this many days
      after it was made; an expired one is refused (``token_expired``).
    * ``token_rotation_window_days`` (7, 1 to 365, less than the worker token lifetime): a
      connected worker whose token expires within this many days is offered a new one
      (``rotate_token``), at its connect and at every revocation check.
    * ``revocation_check_interval`` (0.5 s): how often the hub asks the store whether the API
      tokens of its client links are still live and its workers still active (the admin
      CLI, or another hub, may change them at any time).
    * ``deregister_grace`` (10 s): how long a deregistering worker's link may stay after its
      ``deregister`` was sent, waiting for the acknowledgement.

    The listener's budgets (:class:`ServerLimits`) are hub settings too, under the same
    names, so that an operator sets every budget in one place: ``handshake_timeout``,
    ``max_connections_per_address``, ``max_header_list_size``, ``max_concurrent_streams``,
    ``max_pending_output``, ``max_control_frames`` and ``max_pending_connections``
    (:meth:`server_limits` hands them to the listener).
    """

    signin_timeout: float = attrs.field(default=SIGNIN_TIMEOUT, validator=_validate)
    client_idle_timeout: float = attrs.field(default=CLIENT_IDLE_TIMEOUT, validator=_validate)
    max_links_per_user: int = attrs.field(default=MAX_LINKS_PER_USER, validator=_validate)
    max_links_per_address: int = attrs.field(default=MAX_LINKS_PER_ADDRESS, validator=_validate)
    max_channels_per_link: int = attrs.field(default=MAX_CHANNELS_PER_LINK, validator=_validate)
    max_channels_per_user: int = attrs.field(default=MAX_CHANNELS_PER_USER, validator=_validate)
    max_channels_per_worker: int = attrs.field(default=MAX_CHANNELS_PER_WORKER, validator=_validate)
    max_pending_opens_per_worker: int = attrs.field(
        default=MAX_PENDING_OPENS_PER_WORKER, validator=_validate
    )
    max_link_queue_bytes: int = attrs.field(default=MAX_LINK_QUEUE_BYTES, validator=_validate)
    max_live_registration_keys: int = attrs.field(
        default=MAX_LIVE_REGISTRATION_KEYS, validator=_validate
    )
    registration_key_retention: float = attrs.field(
        default=REGISTRATION_KEY_RETENTION, validator=_validate
    )
    purge_interval: float = attrs.field(default=PURGE_INTERVAL, validator=_validate)
    audit_retention_days: int = attrs.field(default=AUDIT_RETENTION_DAYS, validator=_validate)
    worker_token_lifetime_days: int = attrs.field(
        default=WORKER_TOKEN_LIFETIME_DAYS, validator=_validate
    )
    api_token_lifetime_days: int = attrs.field(default=API_TOKEN_LIFETIME_DAYS, validator=_validate)
    token_rotation_window_days: int = attrs.field(
        default=TOKEN_ROTATION_WINDOW_DAYS, validator=_validate
    )
    revocation_check_interval: float = attrs.field(
        default=REVOCATION_CHECK_INTERVAL, validator=_validate
    )
    deregister_grace: float = attrs.field(default=DEREGISTER_GRACE, validator=_validate)
    handshake_timeout: float = attrs.field(default=HANDSHAKE_TIMEOUT, validator=_validate)
    max_connections_per_address: int = attrs.field(
        default=MAX_CONNECTIONS_PER_ADDRESS, validator=_validate
    )
    max_header_list_size: int = attrs.field(default=MAX_HEADER_LIST_SIZE, validator=_validate)
    max_concurrent_streams: int = attrs.field(default=MAX_CONCURRENT_STREAMS, validator=_validate)
    max_pending_output: int = attrs.field(default=MAX_PENDING_OUTPUT, validator=_validate)
    max_control_frames: int = attrs.field(default=MAX_CONTROL_FRAMES, validator=_validate)
    max_pending_connections: int = attrs.field(default=MAX_PENDING_CONNECTIONS, validator=_validate)

    def __attrs_post_init__(self) -> None:
        if self.token_rotation_window_days >= self.worker_token_lifetime_days:
            raise ConfigError(
                f"HubLimits.token_rotation_window_days ({self.token_rotation_window_days}) "
                "must be less than worker_token_lifetime_days "
                f"({self.worker_token_lifetime_days})"
            )

    def server_limits(self) -> ServerLimits:
        """The listener's budgets among these."""
        return ServerLimits(**{name: getattr(self, name) for name in SERVER_FIELDS})

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> HubLimits:
        """The limits among ``settings`` (other keys are ignored)."""
        return cls(**{name: settings[name] for name in LIMIT_RANGES if name in settings})


__all__ = sorted(
    [name for name in globals() if name.isupper() and not name.startswith("_")]
) + list(_EXPORTED)
