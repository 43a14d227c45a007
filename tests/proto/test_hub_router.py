"""The hub's routing core, driven directly: one rule per test, then a stateful model.

Links are plain strings (or ints in the model); :class:`Net` is a tiny driver that
carries out what the router answers (a store of four workers for look-ups, links that do
or do not take offered records) and records every record each link was sent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from leapcore.errors import LocalError
from leapcore.proto.hub_actions import (
    DEBUG,
    Action,
    ChannelGone,
    Close,
    EndLink,
    Forward,
    FrameDropped,
    FrameRejected,
    Log,
    Lookup,
    Offer,
    OpenOutcome,
    Send,
    Target,
)
from leapcore.proto.hub_router import HubRouter
from leapcore.proto.limits import (
    CHANNEL_CREDIT,
    CREDIT_BATCH,
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_MAX_MESSAGE_SIZE,
    MAX_PENDING_OPENS,
    MIN_MAX_MESSAGE_SIZE,
    OPEN_TIMEOUT,
    HubLimits,
)
from leapcore.proto.link_codec import (
    ChannelAccept,
    ChannelClose,
    ChannelCredit,
    ChannelData,
    ChannelOpened,
    ChannelRefused,
    ChannelReject,
    ChannelRequest,
    LinkMessage,
    OpenChannel,
)
from leapcore.proto.relay import RelayDirection

TW, TC = RelayDirection.TO_WORKER, RelayDirection.TO_CLIENT
FULL = 65535
SIZE = DEFAULT_MAX_MESSAGE_SIZE
#: The hub's store: alice owns wa1, wa2 and the deregistered wgone; bob owns wb1.
STORE = {
    "wa1": Target("wa1", "alice", True),
    "wa2": Target("wa2", "alice", True),
    "wgone": Target("wgone", "alice", False),
    "wb1": Target("wb1", "bob", True),
}
#: The worker each worker link of the unit tests serves.
STORE_OF = {"w1": "wa1", "w2": "wa2", "wb": "wb1"}


class Net:
    """Carries out a router's answers, as the hub does, and records them."""

    def __init__(self, router: HubRouter[Hashable]) -> None:
        self.router = router
        self.sent: dict[Hashable, list[LinkMessage]] = defaultdict(list)
        self.forwards: list[Forward[Hashable]] = []
        self.outcomes: list[str] = []
        self.counted: list[Action[Hashable]] = []
        self.logs: list[Log] = []
        self.ended: list[Hashable] = []
        self.gone: list[ChannelGone[Hashable]] = []
        #: Links that no longer take records (their queue is closed).
        self.broken: set[Hashable] = set()

    def run(self, actions: Iterable[Action[Hashable]]) -> None:
        for action in actions:
            if isinstance(action, Lookup):
                self.run(self.router.found(action, STORE.get(action.message.worker_id)))
            elif isinstance(action, Offer):
                taken = action.link not in self.broken
                if taken:
                    self.sent[action.link].append(action.message)
                self.run(self.router.offered(action, taken))
            elif isinstance(action, (Send, Close)):
                self.sent[action.link].append(action.message)
            elif isinstance(action, Forward):
                self.forwards.append(action)
                self.sent[action.link].append(action.frame)
            elif isinstance(action, OpenOutcome):
                self.outcomes.append(action.result)
            elif isinstance(action, Log):
                assert action.text % action.args  # a well-formed line
                self.logs.append(action)
            elif isinstance(action, ChannelGone):
                self.gone.append(action)
            elif isinstance(action, EndLink):
                self.ended.append(action.link)
            else:
                assert isinstance(action, (FrameDropped, FrameRejected))
                self.counted.append(action)

    def take(self, link: Hashable) -> list[LinkMessage]:
        """What ``link`` was sent since the last call."""
        out, self.sent[link] = self.sent[link], []
        return out

    def write(self) -> None:
        """Write every forwarded frame, returning credit as the hub does."""
        while self.forwards:
            f = self.forwards.pop(0)
            credit = self.router.written(f.frame.channel_id, f.direction, f.cost)
            if credit is not None:
                self.run([credit])


def hub(**limits: int) -> tuple[HubRouter[Hashable], Net]:
    """A router with clients c1 (alice), c2 (alice), cb (bob) and alice's worker wa1 on w1."""
    router: HubRouter[Hashable] = HubRouter(HubLimits(**limits))
    net = Net(router)
    router.join("c1", "alice")
    router.join("c2", "alice")
    router.join("cb", "bob")
    router.join("w1", "alice", "wa1")
    net.run(router.publish("w1"))
    return router, net


def ask(
    router: HubRouter[Hashable],
    net: Net,
    link: str,
    rid: int,
    worker: str = "wa1",
    size: int = SIZE,
    now: float = 0.0,
) -> list[LinkMessage]:
    """``link`` sends open_channel; what it was answered at once."""
    net.run(router.receive(link, OpenChannel(rid, worker, b"m1", size), now))
    return net.take(link)


def opened(
    router: HubRouter[Hashable], net: Net, link: str = "c1", rid: int = 1, worker_link: str = "w1"
) -> int:
    """An open from ``link``, accepted: its channel id."""
    assert ask(router, net, link, rid, STORE_OF[worker_link]) == []
    [request] = net.take(worker_link)
    assert isinstance(request, ChannelRequest)
    net.run(router.receive(worker_link, accept_of(request), 0.0))
    [answer] = net.take(link)
    assert answer == ChannelOpened(rid, request.channel_id, b"m2", request.max_message_size)
    return request.channel_id


def accept_of(request: ChannelRequest, size: int | None = None) -> ChannelAccept:
    return ChannelAccept(
        request.request_id, request.channel_id, b"m2", size or request.max_message_size
    )


def refusal(messages: list[LinkMessage]) -> tuple[str, str]:
    [refused] = messages
    assert isinstance(refused, ChannelRefused)
    return refused.code, refused.message


# -- opening ---------------------------------------------------------------------------------


def test_an_open_goes_to_the_workers_link_with_ids_of_the_hubs_own() -> None:
    router = HubRouter[Hashable](HubLimits(), max_message_size=8 * 1024 * 1024)
    net = Net(router)
    router.join("c1", "alice")
    router.join("w1", "alice", "wa1")
    net.run(router.publish("w1"))
    assert ask(router, net, "c1", 7, size=MAX_MAX_MESSAGE_SIZE) == []
    # The hub's request id and channel id, the opener's owner, min(client, hub) size.
    assert net.take("w1") == [ChannelRequest(1, 1, "alice", b"m1", 8 * 1024 * 1024)]
    assert router.pending_count == 1 and router.channel_count == 0
    net.run(router.receive("w1", ChannelAccept(1, 1, b"m2", 65519), 0.0))
    assert net.take("c1") == [ChannelOpened(7, 1, b"m2", 65519)]
    assert net.outcomes == ["opened"]
    assert router.ends(1) == ("c1", "w1") and router.channel_count == 1
    assert router.pending_count == 0
    # The next open: fresh ids, one request-id sequence for everything the hub asks.
    assert router.next_request_id() == 2
    assert ask(router, net, "c1", 8) == []
    [second] = net.take("w1")
    assert isinstance(second, ChannelRequest) and (second.request_id, second.channel_id) == (3, 2)


REFUSALS = [
    # (why, code, message contains, counted as)
    ("size", "invalid_max_message_size", "max_message_size 65518 is outside", None),
    ("closing", "unavailable", "hub is shutting down", None),
    ("retired", "permission_denied", "this worker is deregistering", None),
    ("pending", "unavailable", f"too many channel opens pending (at most {MAX_PENDING_OPENS})",
     None),
    ("link_quota", "quota_exceeded", "this link already has 1 channels", None),
    ("user_quota", "quota_exceeded", "this account already has 1 channels", None),
    ("unknown", "not_found", "worker not found", None),
    ("inactive", "not_found", "worker not found", None),
    ("itself", "not_found", "worker not found", None),
    ("stranger", "not_found", "worker not found", "not_owner"),
    ("offline", "worker_offline", "worker is offline", None),
    ("worker_pending", "unavailable", "the worker has too many channel opens pending (at most 1)",
     None),
    ("worker_quota", "quota_exceeded", "the worker already serves 1 channels", None),
]  # fmt: skip


@pytest.mark.parametrize(("why", "code", "text", "result"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal(why: str, code: str, text: str, result: str | None) -> None:
    limits = {
        "link_quota": {"max_channels_per_link": 1},
        "user_quota": {"max_channels_per_user": 1},
        "worker_pending": {"max_pending_opens_per_worker": 1},
        "worker_quota": {"max_channels_per_worker": 1},
    }.get(why, {})
    router, net = hub(**limits)
    link, worker, size = "c1", "wa1", SIZE
    if why == "size":
        size = MIN_MAX_MESSAGE_SIZE - 1
    elif why == "closing":
        net.run(router.shutdown())
    elif why == "retired":
        link = "w1"
        net.run(router.retire("w1"))
    elif why == "pending":
        router.join("w2", "alice", "wa2")
        net.run(router.publish("w2"))
        for i in range(MAX_PENDING_OPENS):  # half to each worker: the per-link cap counts
            assert ask(router, net, "c1", i + 1, ("wa1", "wa2")[i % 2]) == []
    elif why in ("link_quota", "worker_quota"):
        opened(router, net, "c1" if why == "link_quota" else "c2")
    elif why == "user_quota":
        opened(router, net, "c2")
    elif why == "worker_pending":
        assert ask(router, net, "c2", 1) == []
    worker = {"unknown": "nope", "inactive": "wgone", "stranger": "wb1", "offline": "wa2"}.get(
        why, worker
    )
    if why == "itself":
        link = "w1"
    before = list(net.outcomes)
    got = refusal(ask(router, net, link, 99, worker, size))
    assert got[0] == code and text in got[1]
    assert net.outcomes == [*before, result or code]
    assert net.logs[-1].text == "%s: open_channel to %s refused: %s"
    assert net.logs[-1].args == (link, worker, got[1])


def test_a_request_the_worker_link_does_not_take_is_refused_offline() -> None:
    router, net = hub()
    net.broken.add("w1")
    assert refusal(ask(router, net, "c1", 1)) == ("worker_offline", "worker is offline")
    assert router.pending_count == 0 and not router.references()
    net.broken.clear()
    assert ask(router, net, "c1", 2) == []  # the refused open held no slot
    [request] = net.take("w1")
    assert isinstance(request, ChannelRequest) and request.channel_id == 2  # ids not reused


def test_an_opened_the_opener_does_not_take_closes_the_channel_at_the_worker() -> None:
    router, net = hub()
    assert ask(router, net, "c1", 1) == []
    [request] = net.take("w1")
    assert isinstance(request, ChannelRequest)
    net.broken.add("c1")
    net.run(router.receive("w1", accept_of(request), 0.0))
    assert net.take("w1") == [
        ChannelClose(request.channel_id, "link_lost", "the other end's link to the hub was lost")
    ]
    assert router.channel_count == 0 and net.outcomes == []


def test_only_the_asked_worker_link_settles_an_open_and_only_once() -> None:
    router, net = hub()
    router.join("w2", "alice", "wa2")
    net.run(router.publish("w2"))
    assert ask(router, net, "c1", 1) == []
    [request] = net.take("w1")
    assert isinstance(request, ChannelRequest)
    for link, answer in [
        ("w2", accept_of(request)),  # another worker link
        ("c2", accept_of(request)),  # a client
        ("w1", ChannelAccept(request.request_id, request.channel_id + 1, b"m2", SIZE)),
        ("w1", ChannelReject(request.request_id + 5, request.channel_id, "closed", "no")),
    ]:
        net.run(router.receive(link, answer, 0.0))
        assert net.logs[-1].level == DEBUG and "unknown open" in net.logs[-1].text
    assert net.take("c1") == [] and router.pending_count == 1
    busy = ChannelReject(request.request_id, request.channel_id, "resource_exhausted", "busy")
    net.run(router.receive("w1", busy, 0.0))
    assert refusal(net.take("c1")) == ("resource_exhausted", "worker rejected channel: busy")
    net.run(router.receive("w1", accept_of(request), 0.0))  # late: ignored
    assert net.take("c1") == [] and router.channel_count == 0
    assert net.outcomes == ["rejected"]


def test_an_accept_with_a_size_out_of_range_is_refused() -> None:
    router, net = hub()
    assert ask(router, net, "c1", 1, size=70000) == []
    [request] = net.take("w1")
    assert isinstance(request, ChannelRequest)
    net.run(router.receive("w1", accept_of(request, 70001), 0.0))
    assert refusal(net.take("c1")) == (
        "handshake_failed",
        "worker answered an invalid max_message_size",
    )
    text = "max_message_size 70001 is outside 65519 .. 70000"
    assert net.take("w1") == [ChannelClose(request.channel_id, "closed", text)]
    assert net.outcomes == ["invalid_accept"] and router.channel_count == 0


def test_an_open_not_answered_in_time_is_refused_timeout() -> None:
    router, net = hub()
    assert router.next_deadline() == float("inf")
    ask(router, net, "c1", 1, now=100.0)
    ask(router, net, "c2", 1, now=105.0)
    [first, second] = net.take("w1")
    assert isinstance(first, ChannelRequest) and isinstance(second, ChannelRequest)
    assert router.next_deadline() == 100.0 + OPEN_TIMEOUT
    net.run(router.poll(100.0 + OPEN_TIMEOUT - 0.001))
    assert net.take("c1") == []
    net.run(router.poll(100.0 + OPEN_TIMEOUT))
    assert refusal(net.take("c1")) == ("timeout", "worker did not answer the open within 30 s")
    assert net.take("w1") == [ChannelClose(first.channel_id, "closed", "channel open timed out")]
    assert router.next_deadline() == 105.0 + OPEN_TIMEOUT
    assert net.outcomes == ["timeout"]
    # The late answer is ignored; the other open is answered in time.
    net.run(router.receive("w1", accept_of(first), 0.0))
    net.run(router.receive("w1", accept_of(second), 0.0))
    assert net.take("c1") == []
    assert net.take("c2") == [ChannelOpened(1, second.channel_id, b"m2", SIZE)]
    assert router.next_deadline() == float("inf")


def test_deadlines_never_go_backwards() -> None:
    """A clock that steps back never lets a newer open expire before an older one."""
    router, net = hub()
    ask(router, net, "c1", 1, now=50.0)
    ask(router, net, "c2", 1, now=10.0)
    assert router.next_deadline() == 50.0 + OPEN_TIMEOUT
    net.run(router.poll(50.0 + OPEN_TIMEOUT))
    assert refusal(net.take("c1"))[0] == "timeout"
    assert refusal(net.take("c2"))[0] == "timeout"  # due with it, not earlier


# -- channels --------------------------------------------------------------------------------


def test_data_both_ways_and_credit_in_batches() -> None:
    router, net = hub()
    channel = opened(router, net)
    frames = [ChannelData(channel, i + 1, 0, bytes(FULL)) for i in range(5)]
    for frame in frames:
        net.run(router.receive("c1", frame, 0.0))
    assert net.take("w1") == frames
    assert [f.cost for f in net.forwards] == [FULL] * 5
    assert router.credit(channel, TW) == CHANNEL_CREDIT - 5 * FULL
    net.write()  # four frames are just short of a batch; the fifth makes one due
    assert net.take("c1") == [ChannelCredit(channel, 5 * FULL)]
    assert router.credit(channel, TW) == CHANNEL_CREDIT
    back = ChannelData(channel, 9, 0, b"x" * 16)
    net.run(router.receive("w1", back, 0.0))
    assert net.take("c1") == [back] and net.forwards[0].direction is TC


def test_frames_and_closes_from_a_link_that_is_not_an_end_are_dropped() -> None:
    router, net = hub()
    channel = opened(router, net)
    for link in ("c2", "cb"):
        net.run(router.receive(link, ChannelData(channel, 1, 0, bytes(16)), 0.0))
        net.run(router.receive(link, ChannelClose(channel, "closed", "no"), 0.0))
    net.run(router.receive("c1", ChannelData(channel + 1, 1, 0, bytes(16)), 0.0))
    assert len(net.counted) == 3 and all(isinstance(c, FrameDropped) for c in net.counted)
    assert net.take("w1") == [] and router.ends(channel) == ("c1", "w1")


def test_a_relay_violation_closes_that_channel_at_both_ends() -> None:
    router, net = hub()
    bad, good = opened(router, net, "c1", 1), opened(router, net, "c1", 2)
    net.run(router.receive("w1", ChannelData(bad, 0, 0, bytes(16)), 0.0))
    close = ChannelClose(bad, "relay_violation", f"channel {bad}: correlation id 0 is reserved")
    assert net.take("w1") == [close] and net.take("c1") == [close]
    assert net.counted == [FrameRejected("relay_violation")]
    assert net.logs[-1].text == "%s: %s" and net.logs[-1].args[0] == "w1"
    assert [g.channel_id for g in net.gone] == [bad]
    assert router.ends(bad) is None and router.ends(good) == ("c1", "w1")


def test_credit_overrun_is_a_violation_and_credit_is_never_negative() -> None:
    router, net = hub()
    channel = opened(router, net)
    while router.credit(channel, TW) >= FULL:
        net.run(router.receive("c1", ChannelData(channel, 1, 0, bytes(FULL)), 0.0))
    left = router.credit(channel, TW)
    net.run(router.receive("c1", ChannelData(channel, 1, 0, bytes(left + 1)), 0.0))
    [close] = [m for m in net.take("c1") if isinstance(m, ChannelClose)]
    assert close.code == "relay_violation" and f"credit of {left} bytes" in close.message
    net.write()  # written after the end: no credit comes back
    assert not [m for m in net.take("c1") if isinstance(m, ChannelCredit)]


def test_close_and_close_frames_end_the_channel() -> None:
    router, net = hub()
    a, b = opened(router, net, "c1", 1), opened(router, net, "c1", 2)
    net.run(router.receive("c1", ChannelClose(a, "closed", "bye"), 0.0))
    assert net.take("w1") == [ChannelClose(a, "closed", "bye")] and net.take("c1") == []
    net.run(router.receive("w1", ChannelData(b, 1, 2, b""), 0.0))
    assert net.take("c1") == [ChannelData(b, 1, 2, b"")]
    assert [g.channel_id for g in net.gone] == [a, b]
    assert router.channel_count == 0 and not router.references()


# -- links -----------------------------------------------------------------------------------


def test_a_lost_client_takes_its_channels_and_opens_with_it() -> None:
    router, net = hub()
    a = opened(router, net)
    ask(router, net, "c1", 2)
    [request] = net.take("w1")
    assert isinstance(request, ChannelRequest)
    net.run(router.leave("c1"))
    lost = "the other end's link to the hub was lost"
    assert net.take("w1") == [
        ChannelClose(a, "link_lost", lost),
        ChannelClose(request.channel_id, "link_lost", lost),
    ]
    assert "c1" not in router.references() and "c1" not in set(router.links())
    assert router.leave("c1") == [] and router.drop("c1") == []


def test_a_lost_worker_refuses_its_opens_and_closes_its_channels() -> None:
    router, net = hub()
    a = opened(router, net)
    ask(router, net, "c2", 5)
    net.run(router.drop("w1"))  # the reader ended: still published until it leaves
    assert net.take("c1") == [
        ChannelClose(a, "link_lost", "the other end's link to the hub was lost")
    ]
    assert refusal(net.take("c2")) == ("worker_offline", "worker went offline")
    assert router.worker_link("wa1") == "w1" and not router.references()
    net.run(router.leave("w1"))
    assert router.worker_link("wa1") is None and router.online_of("alice") == frozenset()
    assert refusal(ask(router, net, "c1", 9))[0] == "worker_offline"


def test_a_newer_worker_link_replaces_the_older() -> None:
    router, net = hub()
    a = opened(router, net)
    router.join("w1b", "alice", "wa1")
    net.run(router.publish("w1b"))
    assert net.take("c1") == [
        ChannelClose(a, "replaced", "the worker connected again; its older link was closed")
    ]
    assert net.ended == ["w1"] and router.worker_link("wa1") == "w1b"
    net.run(router.leave("w1"))  # the older one leaving does not unpublish the newer
    assert router.worker_link("wa1") == "w1b" and router.online_of("alice") == {"wa1"}
    assert router.worker_count == 1 and router.online_workers == {"wa1"}


def test_a_retired_worker_link_stops_serving() -> None:
    router, net = hub()
    a = opened(router, net)
    net.run(router.retire("w1"))
    assert net.take("c1") == [ChannelClose(a, "closed", "the worker was deregistered")]
    assert router.is_retired("w1") and router.worker_link("wa1") is None
    assert refusal(ask(router, net, "c1", 2))[0] == "worker_offline"
    assert refusal(ask(router, net, "w1", 3, "wa2")) == (
        "permission_denied",
        "this worker is deregistering",
    )


def test_shutdown_closes_everything_and_refuses_what_comes() -> None:
    router, net = hub()
    a = opened(router, net)
    ask(router, net, "c2", 1)
    [request] = net.take("w1")
    assert isinstance(request, ChannelRequest)
    net.run(router.shutdown())
    stop = "hub is shutting down"
    assert net.take("c1") == [ChannelClose(a, "shutdown", stop)]
    assert net.take("w1") == [
        ChannelClose(a, "shutdown", stop),
        ChannelClose(request.channel_id, "shutdown", stop),
    ]
    assert refusal(net.take("c2")) == ("unavailable", stop)
    assert net.outcomes[-1] == "unavailable" and router.closing
    assert router.channel_count == router.pending_count == 0


def test_what_changed_while_the_store_was_asked_is_checked_again() -> None:
    """The hub asks the store about an open's worker off the event loop: a shutdown, the
    opener's retirement or its user's channel budget filled meanwhile refuses the open."""
    router, net = hub(max_channels_per_user=1)
    first = router.receive("c1", OpenChannel(1, "wa1", b"m1", SIZE), 0.0)
    second = router.receive("c2", OpenChannel(1, "wa1", b"m1", SIZE), 0.0)
    assert all(isinstance(a, Lookup) for a in [*first, *second])  # both asked the store
    net.run(first)
    [request] = net.take("w1")
    assert isinstance(request, ChannelRequest)
    net.run(second)  # c1's open holds alice's one channel now
    assert refusal(net.take("c2"))[0] == "quota_exceeded"
    router, net = hub()
    router.join("w2", "alice", "wa2")
    net.run(router.publish("w2"))
    retiring = router.receive("w2", OpenChannel(2, "wa1", b"m1", SIZE), 0.0)
    net.run(router.retire("w2"))
    net.run(retiring)
    assert refusal(net.take("w2"))[0] == "permission_denied"
    late = router.receive("cb", OpenChannel(3, "wb1", b"m1", SIZE), 0.0)
    net.run(router.shutdown())
    net.take("cb")
    net.run(late)
    assert refusal(net.take("cb")) == ("unavailable", "hub is shutting down")


def test_misuse_is_a_local_error() -> None:
    router, _ = hub()
    with pytest.raises(LocalError, match="joined already"):
        router.join("c1", "alice")
    with pytest.raises(LocalError, match="has not joined"):
        router.receive("x", OpenChannel(1, "wa1", b"m1", SIZE), 0.0)
    with pytest.raises(LocalError, match="not a worker's"):
        router.publish("c1")
    with pytest.raises(LocalError, match="max_message_size must be an integer in"):
        HubRouter(max_message_size=1)


# -- the stateful model ----------------------------------------------------------------------

WORKERS = ("wa1", "wa2", "wb1")
OWNER = {"wa1": "alice", "wa2": "alice", "wb1": "bob"}


class RouterMachine(RuleBasedStateMachine):
    """Random links joining and going, opens, answers, data, closes and time; the model
    checks every record the router asks to send against what it knows."""

    def __init__(self) -> None:
        super().__init__()
        limits = HubLimits(
            max_channels_per_link=3,
            max_channels_per_user=6,
            max_channels_per_worker=4,
            max_pending_opens_per_worker=3,
        )
        self.router: HubRouter[int] = HubRouter(limits)
        self.now = 0.0
        self.next_link = 0
        self.rid = 0
        #: link -> owner (joined, not yet left); links still sending (their reader runs);
        #: links taking records (their queue is open); links that always took them.
        self.joined: dict[int, str] = {}
        self.active: set[int] = set()
        self.writable: set[int] = set()
        self.sound: set[int] = set()
        self.worker_of: dict[int, str] = {}
        #: channel id -> (opener, worker) as the router asked the worker.
        self.ends_of: dict[int, tuple[int, int]] = {}
        self.live: set[int] = set()
        #: (opener link, its request id) -> results it was sent.
        self.results: dict[tuple[int, int], int] = {}
        #: Channel requests a worker link was sent (answerable).
        self.requests: list[tuple[int, ChannelRequest]] = []
        #: (channel, direction) -> bytes charged, and granted back.
        self.charged: dict[tuple[int, RelayDirection], int] = defaultdict(int)
        self.granted: dict[tuple[int, RelayDirection], int] = defaultdict(int)
        self.queued: dict[int, list[Forward[int]]] = defaultdict(list)

    # -- carrying out ------------------------------------------------------------------------

    def run(self, actions: Iterable[Action[int]], asker: int | None = None) -> None:
        for action in actions:
            if isinstance(action, Lookup):
                found = self.router.found(action, STORE.get(action.message.worker_id))
                self.run(found, asker=action.link)
            elif isinstance(action, Offer):
                taken = action.link in self.writable
                message = action.message
                if isinstance(message, ChannelRequest):
                    assert asker is not None and message.channel_id not in self.ends_of
                    self.ends_of[message.channel_id] = (asker, action.link)
                if taken:
                    self.deliver(action.link, message)
                else:
                    assert action.link not in self.sound
                self.run(self.router.offered(action, taken))
                if taken and isinstance(message, ChannelOpened):
                    self.live.add(message.channel_id)
            elif isinstance(action, (Send, Close)):
                self.deliver(action.link, action.message)
            elif isinstance(action, Forward):
                self.deliver(action.link, action.frame)
                self.charged[(action.frame.channel_id, action.direction)] += action.cost
                self.queued[action.link].append(action)
            elif isinstance(action, ChannelGone):
                assert action.ends == self.ends_of[action.channel_id]
                self.live.discard(action.channel_id)
            elif isinstance(action, EndLink):
                self.active.discard(action.link)
                self.writable.discard(action.link)
                self.sound.discard(action.link)

    def deliver(self, link: int, message: LinkMessage) -> None:
        assert link in self.joined, f"{message} sent to link {link}, which left"
        channel_id = getattr(message, "channel_id", None)
        if channel_id is not None:  # a channel id is only ever routed to its two ends
            assert link in self.ends_of[channel_id], (channel_id, link, message)
        if isinstance(message, ChannelRequest):
            self.requests.append((link, message))
        if isinstance(message, (ChannelOpened, ChannelRefused)):
            key = (link, message.request_id)
            assert key in self.results, f"an answer to an open never asked: {key}"
            self.results[key] += 1
            assert self.results[key] == 1, f"open {key} answered twice"
        if isinstance(message, ChannelCredit):
            opener, _ = self.ends_of[message.channel_id]
            way = TW if link == opener else TC
            self.granted[(message.channel_id, way)] += message.credit

    # -- rules -----------------------------------------------------------------------------

    def _link(self) -> int:
        self.next_link += 1
        return self.next_link

    @initialize()
    def start(self) -> None:
        """Two clients of alice's, one of bob's, every worker online."""
        for user in ("alice", "alice", "bob"):
            self.client_up(user)
        for worker in WORKERS:
            self.worker_up(worker)

    @rule(user=st.sampled_from(["alice", "bob"]))
    def client_up(self, user: str) -> None:
        link = self._link()
        self.router.join(link, user)
        self.joined[link] = user
        self.active.add(link)
        self.writable.add(link)
        self.sound.add(link)

    @rule(worker=st.sampled_from(WORKERS), dice=st.integers(0, 3))
    def worker_again(self, worker: str, dice: int) -> None:
        """A worker connects again, now and then (its older link is replaced)."""
        if not dice:
            self.worker_up(worker)

    def worker_up(self, worker: str) -> None:
        link = self._link()
        self.router.join(link, OWNER[worker], worker)
        self.joined[link] = OWNER[worker]
        self.worker_of[link] = worker
        self.active.add(link)
        self.writable.add(link)
        self.sound.add(link)
        self.run(self.router.publish(link))
        assert self.router.worker_link(worker) == link

    @precondition(lambda self: self.active)
    @rule(data=st.data(), dice=st.integers(0, 3))
    def retire(self, data: st.DataObject, dice: int) -> None:
        if dice:  # now and then
            return
        workers = sorted(link for link in self.active if link in self.worker_of)
        if workers:
            link = data.draw(st.sampled_from(workers))
            self.run(self.router.retire(link))
            assert self.router.is_retired(link) and link not in self.router.references()
            # It ends after its deregister_ack (or grace); its own waiting opens ended
            # with its channels, unanswered, as a lost link's do.
            self.sound.discard(link)

    @precondition(lambda self: self.active)
    @rule(data=st.data(), dice=st.integers(0, 3))
    def break_link(self, data: st.DataObject, dice: int) -> None:
        """A link stops taking records (its peer stopped reading, or it failed)."""
        if dice:  # now and then
            return
        link = data.draw(st.sampled_from(sorted(self.active)))
        self.sound.discard(link)
        self.writable.discard(link)
        if data.draw(st.booleans()):
            self.active.discard(link)  # its reader ended too: it is dropped
            self.run(self.router.drop(link))
            assert link not in self.router.references()

    @precondition(lambda self: self.joined)
    @rule(data=st.data(), dice=st.integers(0, 3))
    def leave(self, data: st.DataObject, dice: int) -> None:
        if dice:  # now and then
            return
        link = data.draw(st.sampled_from(sorted(self.joined)))
        self.active.discard(link)
        self.writable.discard(link)
        self.sound.discard(link)
        self.run(self.router.leave(link))
        del self.joined[link]
        self.queued.pop(link, None)
        self.requests = [(w, r) for w, r in self.requests if w != link]

    @precondition(lambda self: self.active)
    @rule(
        data=st.data(),
        worker=st.sampled_from([*WORKERS, *WORKERS, "wa1", "wgone", "nope"]),
        size=st.sampled_from([SIZE] * 5 + [MIN_MAX_MESSAGE_SIZE, 70000, 1, 2**26 + 1]),
        answer_now=st.booleans(),
    )
    def open(
        self,
        data: st.DataObject,
        worker: str,
        size: int,
        answer_now: bool,
        link: int | None = None,
    ) -> None:
        """An open (the worker accepting it at once, sometimes)."""
        if link is None:
            link = data.draw(st.sampled_from(sorted(self.active)))
        self.rid += 1
        self.results[(link, self.rid)] = 0
        asked = len(self.requests)
        self.run(self.router.receive(link, OpenChannel(self.rid, worker, b"m1", size), self.now))
        if answer_now and len(self.requests) > asked:
            destination, request = self.requests[-1]
            if destination in self.active:
                self.run(self.router.receive(destination, accept_of(request), self.now))

    @precondition(lambda self: self.active)
    @rule(data=st.data())
    def channel_up(self, data: st.DataObject) -> None:
        """An open that should succeed: to an online worker of the opener's owner, accepted."""
        link = data.draw(st.sampled_from(sorted(self.active)))
        owner = self.joined[link]
        targets = [w for w in WORKERS if OWNER[w] == owner and w != self.worker_of.get(link)]
        if targets:
            self.open(data, data.draw(st.sampled_from(targets)), SIZE, True, link)

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), how=st.sampled_from(["accept", "small", "too_big", "reject", "stranger"]))
    def answer(self, data: st.DataObject, how: str) -> None:
        link, request = data.draw(st.sampled_from(self.requests))
        if link not in self.active:
            return
        if how == "stranger":
            others = sorted(self.active - {link})
            if not others:
                return
            link = data.draw(st.sampled_from(others))
        size = {"small": MIN_MAX_MESSAGE_SIZE, "too_big": request.max_message_size + 1}.get(
            how, request.max_message_size
        )
        if how == "reject":
            answer: LinkMessage = ChannelReject(
                request.request_id, request.channel_id, "closed", "no"
            )
        else:
            answer = ChannelAccept(request.request_id, request.channel_id, b"m2", size)
        self.run(self.router.receive(link, answer, self.now))

    @precondition(lambda self: self.live)
    @rule(
        data=st.data(),
        frames=st.lists(
            st.tuples(
                st.one_of(st.just(FULL), st.integers(0, FULL)),
                st.sampled_from([0] * 30 + [1, 1, 2, 7]),  # FINAL, MORE, CLOSE, unknown
                st.sampled_from([1, 2, 3] * 10 + [0]),  # correlation ids (0 is reserved)
            ),
            min_size=1,
            max_size=24,
        ),
    )
    def data_frames(self, data: st.DataObject, frames: list[tuple[int, int, int]]) -> None:
        """A burst of frames from one end of a channel (the hub may close it midway)."""
        channel = data.draw(st.sampled_from(sorted(self.live)))
        sender = data.draw(st.sampled_from(self.ends_of[channel]))
        for size, flags, correlation_id in frames:
            if sender not in self.active:
                return
            payload = bytes(0 if flags == 2 else size)
            self.run(self.router.data(sender, ChannelData(channel, correlation_id, flags, payload)))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), count=st.integers(1, 20), written=st.booleans())
    def stream(self, data: st.DataObject, count: int, written: bool) -> None:
        """Full frames one way, the receiver's queue written after each (or never: past
        the credit, the channel closes)."""
        channel = data.draw(st.sampled_from(sorted(self.live)))
        sender, receiver = data.draw(st.permutations(self.ends_of[channel]))
        for i in range(count):
            if sender not in self.active or channel not in self.live:
                return
            frame = ChannelData(channel, i + 1, 0, bytes(FULL))
            self.run(self.router.data(sender, frame))
            if written:
                self.write_all(receiver)

    def write_all(self, link: int) -> None:
        while self.queued[link]:
            f = self.queued[link].pop(0)
            credit = self.router.written(f.frame.channel_id, f.direction, f.cost)
            if credit is not None:
                self.run([credit])

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        channel = data.draw(st.sampled_from(sorted(self.live)))
        sender = data.draw(st.sampled_from(self.ends_of[channel]))
        if sender in self.active:
            self.run(self.router.receive(sender, ChannelClose(channel, "closed", "bye"), self.now))

    @precondition(lambda self: any(self.queued.values()))
    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        link = data.draw(st.sampled_from(sorted(k for k, v in self.queued.items() if v)))
        count = data.draw(st.integers(1, len(self.queued[link])))
        for _ in range(count):
            f = self.queued[link].pop(0)
            credit = self.router.written(f.frame.channel_id, f.direction, f.cost)
            if credit is not None:
                self.run([credit])

    @rule(seconds=st.floats(0, 2 * OPEN_TIMEOUT))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.run(self.router.poll(self.now))
        assert self.router.next_deadline() > self.now

    @precondition(lambda self: not self.router.closing)
    @rule(dice=st.integers(0, 19))
    def shutdown(self, dice: int) -> None:
        if dice:  # rarely: nothing opens afterwards
            return
        self.run(self.router.shutdown())
        assert self.router.channel_count == self.router.pending_count == 0

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def nothing_outlives_its_links(self) -> None:
        assert set(self.router.links()) == set(self.joined)
        assert self.router.references() <= set(self.joined)

    @invariant()
    def channels_are_what_the_model_saw(self) -> None:
        assert self.router.channel_count == len(self.live)
        for channel in self.live:
            assert self.router.ends(channel) == self.ends_of[channel]

    @invariant()
    def credit_is_never_negative(self) -> None:
        for channel in self.live:
            for way in (TW, TC):
                credit = self.router.credit(channel, way)
                assert 0 <= credit <= CHANNEL_CREDIT
                key = (channel, way)
                assert credit == CHANNEL_CREDIT - self.charged[key] + self.granted[key]

    @invariant()
    def published_links_are_joined_workers(self) -> None:
        for worker in WORKERS:
            link = self.router.worker_link(worker)
            assert link is None or (link in self.joined and self.worker_of[link] == worker)

    def teardown(self) -> None:
        """Every open ends in exactly one result for a link that could always be told."""
        self.now += 10 * OPEN_TIMEOUT
        self.run(self.router.poll(self.now))
        assert self.router.pending_count == 0
        for (link, rid), count in self.results.items():
            assert count <= 1
            if link in self.sound:
                assert count == 1, f"open {rid} of link {link} never answered"


RouterMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=80, deadline=None)
TestRouterStateful = RouterMachine.TestCase


def test_credit_batch_is_below_a_frame_short_of_the_credit() -> None:
    assert CREDIT_BATCH + FULL <= CHANNEL_CREDIT
