"""Solo mode: one process runs a hub and its own, auto-registered worker (trio).

::

    solo = SoloHub(data_dir)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(functools.partial(solo.run, port=0))
        await solo.ready.wait()          # the worker is online, its keys are known
        ...
        await solo.shutdown()

The hub keeps its database in ``<data dir>/hub.db``; the worker its state in
``<data dir>/solo-worker/state.json``. On the first start the user ``solo`` is created
and the worker is registered **through the store** (no network involved); the user's API
token is kept in ``<data dir>/solo.json`` (mode 0600). Later starts reuse both: same
worker id, same keys, no re-registration. A worker whose state or hub record is gone (or
was deregistered by an administrator) is registered again. A solo worker's token that
expired while the solo hub was not running is renewed at start through the store (its
connected link renews it in the rotation window otherwise).

:meth:`SoloHub.run_until_signal` is :meth:`~SoloHub.run` for a process: it serves until
SIGINT or SIGTERM, which shut the worker and then the hub down (:mod:`leapcore.net.signals`).

When the hub listens, the token is saved as the local credential for the hub's URL
(:func:`leapcore.peer.connect.save_credentials`), so ``leapcore remote … --hub URL`` works at
once. The solo worker cannot be deregistered by its owner (``worker.deregister`` answers
``failed_precondition``: :data:`PROTECTED_MESSAGE`); ``leapcore-hub admin`` still can.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from ._version import __version__
from .errors import FailedPrecondition, LeapcoreError, LocalError, NotFound, Unauthenticated
from .hub.server import DEFAULT_LIMITS, HUB_MAX_MESSAGE_SIZE, Hub, url_of
from .net.signals import DEFAULT_SIGNALS, run_until_signal
from .peer.connect import save_credentials
from .proto.audit_events import Origin
from .proto.limits import DEFAULT_MAX_WORKERS_PER_USER, STOP_GRACE, HubLimits
from .store.atomicfile import write_atomic
from .store.hubstore import Notification, SQLiteHubStore, WorkerStatus
from .store.paths import hub_database_path
from .store.workerstate import (
    HubRecord,
    WorkerState,
    ensure_keys,
    format_utc,
    load_hub,
    load_state,
    save_hub,
    save_state,
)
from .worker.daemon import Worker, WorkerExit
from .worker.signpool import Signer

__all__ = [
    "PROTECTED_MESSAGE",
    "SOLO_FILE",
    "SOLO_USER",
    "SOLO_WORKER_DIR",
    "SoloHub",
    "SoloHubStore",
    "SoloIdentity",
    "default_worker_name",
    "hub_url",
    "prepare_solo",
]

log = logging.getLogger(__name__)

SOLO_USER: Final = "solo"
SOLO_WORKER_DIR: Final = "solo-worker"
SOLO_FILE: Final = "solo.json"
PROTECTED_MESSAGE: Final = "the solo worker cannot be deregistered"
#: Seconds the worker may take to come online and report its keys.
READY_TIMEOUT: Final = 60.0
#: Seconds the worker may take to close its link when the solo hub stops.
WORKER_STOP_TIMEOUT: Final = 5.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class SoloHubStore(SQLiteHubStore):
    """The hub store, refusing an owner's deregistration of the ``protected`` workers."""

    def __init__(self, path: Path | str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        #: Worker ids their owner may not deregister.
        self.protected: set[str] = set()

    def deregister_worker(
        self,
        worker_id: str,
        now_ms: int,
        *,
        requested_by: str | None,
        origin: Origin | None = None,
    ) -> Notification:
        if requested_by is not None and worker_id in self.protected:
            owner = None
            with contextlib.suppress(NotFound):
                owner = self.get_worker(worker_id).owner_id
            if owner == requested_by:
                raise FailedPrecondition(PROTECTED_MESSAGE)
        return super().deregister_worker(
            worker_id, now_ms, requested_by=requested_by, origin=origin
        )


@attrs.frozen(repr=False)
class SoloIdentity:
    """Who the solo hub's user and worker are (the token is secret: not in the repr)."""

    user_id: str
    user_name: str
    token: str
    worker_id: str
    worker_name: str
    worker_dir: Path
    #: True when this start created the user / registered the worker.
    created_user: bool
    registered: bool

    def __repr__(self) -> str:
        return f"SoloIdentity(user={self.user_name!r}, worker_id={self.worker_id!r})"


def default_worker_name() -> str:
    """The host name (up to its first dot), else ``solo``."""
    name = socket.gethostname().split(".")[0].strip()
    return name if name and name.isprintable() and len(name) <= 64 else SOLO_USER


def _read_solo_file(path: Path) -> str | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.warning("%s is unreadable; a new API token will be made", path)
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None


def _solo_user(store: SQLiteHubStore, data_dir: Path) -> tuple[str, str, str, bool]:
    """(user id, name, token, created): the saved token if it still works, else a new one."""
    path = data_dir / SOLO_FILE
    token = _read_solo_file(path)
    if token is not None:
        try:
            user = store.authenticate_user(token, _now_ms())
            return user.id, user.name, token, False
        except Unauthenticated:
            log.warning("the saved solo API token is no longer accepted; making a new one")
    created = False
    try:
        user = store.get_user(SOLO_USER)
        token = store.create_token(user.id, _now_ms())
    except NotFound:
        user, token = store.create_user(SOLO_USER, _now_ms(), is_admin=True)
        created = True
    document = {"user_id": user.id, "user": user.name, "token": token}
    write_atomic(path, (json.dumps(document, indent=2) + "\n").encode())
    return user.id, user.name, token, created


def _renew_expired(
    store: SQLiteHubStore, worker_dir: Path, state: WorkerState, expires_at: int | None
) -> None:
    """The solo worker's token expired while the solo hub was not running (it is renewed
    over the link otherwise): renew it through the store, as a rotation does -- the new
    token pending, saved to ``state.json``, then made current -- so that no step leaves the
    worker without a token that works."""
    now = _now_ms()
    if expires_at is None or expires_at > now:
        return
    token, _ = store.offer_worker_token(state.worker_id, now)
    save_state(worker_dir, attrs.evolve(state, auth_token=token))
    store.promote_worker_token(state.worker_id, token, now)
    log.info("the solo worker's token had expired; renewed it")


def prepare_solo(store: SQLiteHubStore, data_dir: Path, *, name: str | None = None) -> SoloIdentity:
    """Make (first start) or find (later starts) the solo user and worker; no network."""
    user_id, user_name, token, created_user = _solo_user(store, data_dir)
    worker_dir = data_dir / SOLO_WORKER_DIR
    state = ensure_keys(worker_dir, load_state(worker_dir))
    worker_name = name or default_worker_name()
    if state.registered:
        try:
            record = store.get_worker(state.worker_id)
        except NotFound:
            record = None
        if (
            record is not None
            and record.owner_id == user_id
            and record.status is WorkerStatus.ACTIVE
        ):
            _renew_expired(store, worker_dir, state, record.token_expires_at)
            return SoloIdentity(
                user_id, user_name, token, record.id, record.name, worker_dir, created_user, False
            )
        log.warning("solo worker %s is gone from the hub; registering it again", state.worker_id)
    _, key = store.mint_registration_key(user_id, _now_ms())
    record, auth = store.register_worker(
        key,
        name=worker_name,
        version=__version__,
        labels={},
        now_ms=_now_ms(),
        auto_registered=True,
    )
    save_state(worker_dir, attrs.evolve(state, worker_id=record.id, auth_token=auth))
    previous = load_hub(worker_dir)
    if previous is not None and previous.hub_id != store.hub_id:
        # Registered again on a new database: this is the hub now (the URL stays; the
        # greeting updates it), so the worker does not take its own hub for a stranger.
        save_hub(
            worker_dir,
            HubRecord(store.hub_id, previous.hub_url, format_utc(dt.datetime.now(dt.UTC))),
        )
    return SoloIdentity(
        user_id, user_name, token, record.id, record.name, worker_dir, created_user, True
    )


def hub_url(host: str, port: int, *, tls: bool = False) -> str:
    return url_of("https" if tls else "http", (host, port))


def _dial_host(host: str) -> str:
    """Where the in-process worker dials: loopback for a wildcard listener."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class SoloHub:
    """A hub and its auto-registered worker, in this process (see the module docstring).

    ``save_credential``: save the solo user's token for the hub's URL where
    ``leapcore remote`` looks for it (:func:`leapcore.peer.connect.save_credentials`).
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        name: str | None = None,
        encryption_mode: str = "post-quantum",
        max_workers_per_user: int = DEFAULT_MAX_WORKERS_PER_USER,
        signer: Signer | None = None,
        save_credential: bool = True,
        limits: HubLimits = DEFAULT_LIMITS,
        max_message_size: int = HUB_MAX_MESSAGE_SIZE,
    ) -> None:
        self.data_dir = Path(data_dir)
        db = hub_database_path(self.data_dir)
        #: True when this start created the hub database.
        self.created_database = not db.exists()
        store = SoloHubStore(db, max_workers_per_user=max_workers_per_user)
        self.hub = Hub(
            db,
            max_workers_per_user=max_workers_per_user,
            store=store,
            limits=limits,
            max_message_size=max_message_size,
        )
        try:
            self.identity = prepare_solo(store, self.data_dir, name=name)
        except BaseException:
            store.close()
            raise
        store.protected.add(self.identity.worker_id)
        self.encryption_mode = encryption_mode
        self.signer = signer
        self.save_credential = save_credential
        #: The hub's URL, once it listens.
        self.url = ""
        #: Where the credential was saved (``None`` until then, or when not saved).
        self.credentials: Path | None = None
        #: The worker's fingerprint as the hub knows it (set when :attr:`ready`).
        self.fingerprint = ""
        #: Set once the worker is online and the hub holds its keys.
        self.ready = trio.Event()
        self.worker: Worker | None = None
        self._worker_done = trio.Event()
        self._stopping = False

    async def run(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until :meth:`shutdown`; ``task_status.started`` gets the hub's URL as soon as
        it listens; :attr:`ready` is set once the worker is online."""
        if ssl_context is not None:
            raise LocalError("solo mode serves plain HTTP on loopback; drop the TLS settings")
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                self._serve_hub, host, port, unix_path, nursery.cancel_scope
            )
            self.url = hub_url(bound[0], bound[1])
            dial = hub_url(_dial_host(bound[0]), bound[1])
            if self.save_credential:
                self.credentials = save_credentials(self.url, self.identity.token)
                if dial != self.url:
                    save_credentials(dial, self.identity.token)
            self.worker = Worker(
                self.identity.worker_dir,
                hub_url=dial,
                name=self.identity.worker_name,
                encryption_mode=self.encryption_mode,
                signer=self.signer,
            )
            task_status.started(self.url)
            nursery.start_soon(self._run_worker, self.worker)
            with trio.fail_after(READY_TIMEOUT):
                await self.worker.wait_online()
                while True:
                    record = await self.hub.store_call(
                        self.hub.store.get_worker, self.identity.worker_id
                    )
                    if record.keys is not None:
                        break
                    await trio.sleep(0.01)
            self.fingerprint = record.keys.fingerprint
            self.ready.set()

    async def run_until_signal(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: str | None = None,
        listening: Callable[[str], object] | None = None,
        online: Callable[[], Awaitable[object]] | None = None,
        signals: Sequence[int] = DEFAULT_SIGNALS,
        grace: float = STOP_GRACE,
    ) -> None:
        """:meth:`run` until :meth:`shutdown` or a signal: the first of ``signals`` shuts the
        worker and then the hub down, with ``grace`` seconds to finish; a second one cancels
        outright (:func:`leapcore.net.signals.run_until_signal`). ``listening(url)`` is called
        once the hub listens, ``online()`` awaited once the worker is online (it may call
        :meth:`shutdown` itself: the run then ends)."""

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                url = await nursery.start(
                    functools.partial(self.run, host=host, port=port, unix_path=unix_path)
                )
                if listening is not None:
                    listening(url)
                await self.ready.wait()
                if online is not None:
                    await online()

        await run_until_signal(main, self.shutdown, default=None, signals=signals, grace=grace)

    async def _serve_hub(
        self,
        host: str,
        port: int,
        unix_path: str | None,
        scope: trio.CancelScope,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.hub.serve(host=host, port=port, unix_path=unix_path, task_status=task_status)
        scope.cancel()  # the hub stopped: so does everything else

    async def _run_worker(self, worker: Worker) -> None:
        try:
            result = await worker.run()
            if result is not WorkerExit.STOPPED and not self._stopping:
                log.error("the solo worker ended (%s); the hub keeps running", result.value)
        except LeapcoreError as exc:
            log.error("the solo worker failed: %s", exc)
        finally:
            self._worker_done.set()

    async def shutdown(self) -> None:
        """Stop the worker (its link closes cleanly), then the hub (go-away to every link)."""
        self._stopping = True
        if self.worker is not None:
            self.worker.stop()
            with trio.move_on_after(WORKER_STOP_TIMEOUT):
                await self._worker_done.wait()
        await self.hub.shutdown()
