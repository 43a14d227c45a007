"""The peer's side of a hub link, driven directly: ``leapcore.proto.link_session``.

One test per rule of the module docstring, then a hypothesis state machine: random calls
and opens, answers in any order from a hostile hub (duplicates, unknown ids, the wrong
kind), cancellations and timeouts through ``now``, link failures, and channel credit.
"""

from __future__ import annotations

import math

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

from leapcore.errors import ConfigError, LinkClosed, LinkProtocolError, LocalError
from leapcore.proto.chunking import FrameFlag
from leapcore.proto.limits import CHANNEL_CREDIT, MAX_PENDING_REQUESTS
from leapcore.proto.link_codec import (
    ChannelClose,
    ChannelOpened,
    ChannelRefused,
    HubRequest,
    HubResponse,
    LinkMessage,
    OpenChannel,
)
from leapcore.proto.link_session import (
    ORPHAN_CLOSE,
    Answer,
    CallAnswered,
    CallRefused,
    LinkSession,
    OpenAnswered,
    Outcome,
    RequestFailed,
    RequestStatus,
    RequestTimedOut,
    SendCredit,
)


def opened(request_id: int, channel_id: int = 7) -> ChannelOpened:
    return ChannelOpened(request_id, channel_id, b"m2", 65519)


def refused(request_id: int) -> ChannelRefused:
    return ChannelRefused(request_id, "worker_offline", "offline")


def orphan_close(channel_id: int) -> ChannelClose:
    return ChannelClose(channel_id, *ORPHAN_CLOSE)


def call(s: LinkSession, now: float = 0.0, timeout: float = 30.0) -> int:
    return s.start_call("workers.list", {}, now=now, timeout=timeout)


def open_(s: LinkSession, now: float = 0.0, timeout: float = 30.0) -> int:
    return s.start_open("w-1", b"m1", 65519, now=now, timeout=timeout)


# -- rule 1: ids ---------------------------------------------------------------------------


def test_ids_count_up_from_one_and_each_request_is_queued_once() -> None:
    s = LinkSession()
    assert s.last_id == 0
    assert [call(s), open_(s), call(s)] == [1, 2, 3]
    assert s.messages_to_send() == [
        HubRequest(1, "workers.list", {}),
        OpenChannel(2, "w-1", b"m1", 65519),
        HubRequest(3, "workers.list", {}),
    ]
    assert s.messages_to_send() == []
    s.receive(HubResponse(1, {}))
    s.take(1)
    assert call(s) == 4  # an id is never reused, even once its request is over


# -- rule 2: slots ----------------------------------------------------------------------------


def test_slots_bound_the_requests_held() -> None:
    s = LinkSession(max_pending=2)
    call(s)
    open_(s)
    assert not s.has_room and s.held == 2
    with pytest.raises(LocalError, match="2 requests are already held"):
        call(s)
    assert s.last_id == 2  # nothing was issued
    s.receive(HubResponse(1, {}))
    assert not s.has_room  # answered, but its caller has not taken it yet
    s.take(1)
    assert s.has_room
    assert LinkSession().max_pending == MAX_PENDING_REQUESTS
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            LinkSession(max_pending=bad)
    with pytest.raises(LocalError, match="timeout"):
        call(s, timeout=-1)
    with pytest.raises(LocalError, match="timeout"):
        call(s, timeout=math.nan)


# -- rule 3: deadlines ------------------------------------------------------------------------


def test_deadlines_end_pending_requests_through_now() -> None:
    s = LinkSession()
    assert s.next_deadline() is None
    a = call(s, now=10, timeout=5)
    b = open_(s, now=11, timeout=2)
    c = call(s, now=11, timeout=math.inf)
    assert s.next_deadline() == 13
    assert s.deadline(a) == 15 and s.deadline(c) == math.inf
    assert s.poll(12.999) == []
    assert s.poll(13) == [RequestTimedOut(b)]
    assert s.status(b) is RequestStatus.READY and s.deadline(b) is None
    assert s.next_deadline() == 15
    assert s.poll(100) == [RequestTimedOut(a)]
    assert s.poll(1000) == []  # each request times out once
    assert s.next_deadline() is None  # an infinite deadline is no deadline
    assert s.take(a) == RequestTimedOut(a)
    assert s.status(c) is RequestStatus.PENDING


# -- rule 4: matching -------------------------------------------------------------------------


def test_answers_end_their_request_once() -> None:
    s = LinkSession()
    a, b, c, d, e = call(s), call(s), call(s), open_(s), open_(s)
    assert s.receive(HubResponse(a, {"x": 1})) == [CallAnswered(a, {"x": 1})]
    assert s.receive(HubResponse(b, error_code="not_found", error_message="no")) == [
        CallRefused(b, "not_found", "no")
    ]
    (failed,) = s.receive(HubResponse(c))
    assert isinstance(failed, RequestFailed) and isinstance(failed.error, LinkProtocolError)
    assert s.receive(opened(d)) == [OpenAnswered(d, opened(d))]
    assert s.receive(refused(e)) == [OpenAnswered(e, refused(e))]
    # A duplicate changes nothing, before or after the caller took the outcome.
    assert s.receive(HubResponse(a, {"x": 2})) == []
    assert s.take(a) == CallAnswered(a, {"x": 1})
    assert s.receive(HubResponse(a, {"x": 3})) == []
    assert s.receive(opened(d, 99)) == []
    assert s.take(d) == OpenAnswered(d, opened(d))
    assert s.messages_to_send()[-1] == OpenChannel(e, "w-1", b"m1", 65519)  # no close
    with pytest.raises(LocalError):
        s.take(a)  # taken already


def test_an_answer_to_an_id_never_issued_breaks_the_link_rule() -> None:
    s = LinkSession()
    with pytest.raises(LinkProtocolError, match="hub_response for unknown request 1"):
        s.receive(HubResponse(1, {}))
    call(s)
    for bad in (HubResponse(0, {}), HubResponse(2, {}), opened(5), refused(0)):
        with pytest.raises(LinkProtocolError, match="unknown request"):
            s.receive(bad)
    assert s.status(1) is RequestStatus.PENDING


def test_the_wrong_kind_of_answer_to_a_waiting_request_breaks_the_link_rule() -> None:
    s = LinkSession()
    a, b = call(s), open_(s)
    with pytest.raises(LinkProtocolError, match="not an open"):
        s.receive(opened(a))
    with pytest.raises(LinkProtocolError, match="not a call"):
        s.receive(HubResponse(b, {}))
    assert s.status(a) is s.status(b) is RequestStatus.PENDING  # nothing changed
    # Once the caller is done, a wrong-kind answer is only late.
    s.abandon(a)
    assert s.receive(opened(a)) == []
    assert s.messages_to_send()[-1] == OpenChannel(b, "w-1", b"m1", 65519)


# -- rule 5: orphans --------------------------------------------------------------------------


def test_an_open_abandoned_then_opened_is_closed_once() -> None:
    s = LinkSession()
    r = open_(s)
    s.messages_to_send()
    s.abandon(r)
    assert s.status(r) is RequestStatus.ORPHANED and s.held == 1 and s.waiting == 0
    assert s.deadline(r) is None and s.next_deadline() is None
    assert s.poll(1e9) == []  # an orphan has no deadline: it waits for the hub
    assert s.receive(opened(r, 41)) == []
    assert s.messages_to_send() == [orphan_close(41)]
    assert s.status(r) is None and s.held == 0 and s.orphans_closed == 1
    assert s.receive(opened(r, 41)) == []  # a duplicate: no second close
    assert s.messages_to_send() == []


def test_an_open_that_timed_out_then_opened_is_closed_even_before_the_caller_looks() -> None:
    s = LinkSession()
    r = open_(s, timeout=4)
    s.messages_to_send()
    assert s.poll(4) == [RequestTimedOut(r)]
    assert s.receive(opened(r, 9)) == []
    assert s.messages_to_send() == [orphan_close(9)]
    assert s.take(r) == RequestTimedOut(r)
    assert s.status(r) is None


def test_an_open_that_timed_out_and_was_taken_keeps_its_slot_until_the_hub_answers() -> None:
    s = LinkSession(max_pending=1)
    r = open_(s, timeout=4)
    s.poll(5)
    s.take(r)
    assert s.status(r) is RequestStatus.ORPHANED and not s.has_room
    assert s.receive(refused(r)) == []  # refused: nothing to close, the slot is free
    assert s.has_room and s.orphans_closed == 0
    assert s.messages_to_send() == [OpenChannel(r, "w-1", b"m1", 65519)]


def test_an_opened_answer_never_taken_is_closed_when_the_caller_gives_up() -> None:
    s = LinkSession()
    r = open_(s)
    s.messages_to_send()
    s.receive(opened(r, 12))
    s.abandon(r)
    assert s.messages_to_send() == [orphan_close(12)]
    assert s.status(r) is None
    s.abandon(r)  # over: nothing more
    assert s.messages_to_send() == []


def test_giving_up_on_what_needs_no_close() -> None:
    s = LinkSession()
    a, b, c = call(s), open_(s), open_(s)
    s.messages_to_send()
    s.abandon(a)
    assert s.status(a) is None  # a late call answer is harmless: the slot is free at once
    assert s.receive(HubResponse(a, {})) == []
    s.receive(refused(b))
    s.abandon(b)
    s.receive(opened(c, 3))
    s.take(c)
    s.abandon(c)  # taken: the caller owns the channel
    assert s.messages_to_send() == [] and s.held == 0


# -- rule 6: link end ---------------------------------------------------------------------------


def test_the_link_ending_fails_what_waits_and_forgets_orphans() -> None:
    s = LinkSession()
    a, b, c, d = call(s), open_(s), open_(s), call(s)
    s.receive(HubResponse(d, {"ok": True}))
    s.abandon(c)
    error = LinkClosed("gone")
    assert s.fail(error) == [RequestFailed(a, error), RequestFailed(b, error)]
    assert s.messages_to_send() == []  # the unsent requests are dropped
    assert s.status(c) is None  # the hub closes a lost link's channels itself
    assert s.take(d) == CallAnswered(d, {"ok": True})  # an outcome already there stays
    assert s.take(a) == RequestFailed(a, error)
    assert s.fail(LinkClosed("again")) == [] and s.failure is error
    assert not s.has_room
    with pytest.raises(LinkClosed, match="gone"):
        call(s)
    assert s.receive(opened(c)) == [] and s.receive(HubResponse(99, {})) == []
    s.abandon(b)
    assert s.held == 0 and s.messages_to_send() == []


# -- credit ---------------------------------------------------------------------------------------


def test_send_credit() -> None:
    credit = SendCredit()
    assert credit.available == CHANNEL_CREDIT
    assert SendCredit.cost(FrameFlag.FINAL, 100) == SendCredit.cost(FrameFlag.MORE, 100) == 100
    assert SendCredit.cost(FrameFlag.CLOSE, 0) == 0
    credit = SendCredit(100)
    assert credit.allows(100) and not credit.allows(101)
    credit.spend(60)
    with pytest.raises(LocalError, match="credit of 40"):
        credit.spend(41)
    assert credit.available == 40
    credit.spend(40)
    assert credit.allows(0) and not credit.allows(1)
    credit.grant(25)
    credit.grant(0)
    assert credit.available == 25
    with pytest.raises(LocalError):
        credit.grant(-1)
    with pytest.raises(LocalError):
        credit.spend(-1)
    with pytest.raises(ConfigError):
        SendCredit(-1)


# -- the state machine ---------------------------------------------------------------------


class _Model:
    """What the model knows of one request."""

    def __init__(self, kind: str, deadline: float) -> None:
        self.kind = kind
        self.deadline = deadline
        self.outcome: Outcome | None = None
        self.caller_done = False
        self.answered = False
        self.orphaned_open = False  # an open the caller gave up on before taking an answer


class LinkSessionMachine(RuleBasedStateMachine):
    """A hostile hub against one session; the model says what must happen."""

    @initialize(
        max_pending=st.integers(1, 6),
        starts=st.lists(st.sampled_from(["call", "open"]), max_size=4),
    )
    def setup(self, max_pending: int, starts: list[str]) -> None:
        self.s = LinkSession(max_pending=max_pending)
        self.now = 0.0
        self.issued: list[int] = []
        self.live: dict[int, _Model] = {}  # requests the session must still hold
        self.outcomes: dict[int, list[Outcome]] = {}  # every outcome event, per request
        self.caller_ends: dict[int, int] = {}  # take or abandon, per request
        self.sent: list[LinkMessage] = []
        self.expected_closes: list[ChannelClose] = []
        self.next_channel = 100
        self.failed = False
        self.credit = SendCredit(1000)
        self.credit_model = 1000
        for kind in starts[:max_pending]:
            self._start(kind, 5.0)

    # -- the peer's side

    def _start(self, kind: str, timeout: float) -> None:
        start = call if kind == "call" else open_
        rid = start(self.s, now=self.now, timeout=timeout)
        assert rid == len(self.issued) + 1  # ids count up, never reused
        self.issued.append(rid)
        self.live[rid] = _Model(kind, self.now + timeout)
        self.outcomes[rid] = []
        self.caller_ends[rid] = 0

    @precondition(lambda self: not self.failed)
    @rule(
        starts=st.lists(
            st.tuples(st.sampled_from(["call", "open"]), st.sampled_from([0.0, 1.0, 5.0, 30.0])),
            min_size=1,
            max_size=3,
        )
    )
    def start(self, starts: list[tuple[str, float]]) -> None:
        for kind, timeout in starts:
            if len(self.live) >= self.s.max_pending:
                assert not self.s.has_room
                with pytest.raises(LocalError):
                    self._start(kind, timeout)
                return
            assert self.s.has_room
            self._start(kind, timeout)

    def _forget_if_over(self, rid: int) -> None:
        m = self.live[rid]
        if m.caller_done and (m.kind == "call" or m.answered or self.failed):
            del self.live[rid]

    def _ready(self) -> list[int]:
        return sorted(r for r, m in self.live.items() if m.outcome and not m.caller_done)

    @precondition(lambda self: self._ready())
    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self._ready()))
        assert self.s.take(rid) == self.live[rid].outcome == self.outcomes[rid][-1]
        self.caller_ends[rid] += 1
        self.live[rid].caller_done = True
        self._forget_if_over(rid)

    @precondition(lambda self: self.issued)
    @rule(data=st.data(), live=st.booleans())
    def abandon(self, data: st.DataObject, live: bool) -> None:
        rid = data.draw(st.sampled_from(sorted(self.live) if live and self.live else self.issued))
        m = self.live.get(rid)
        self.s.abandon(rid)
        if m is None or m.caller_done:
            return  # over for the caller already: nothing happens
        self.caller_ends[rid] += 1
        m.caller_done = True
        if m.kind == "open" and not self.failed:
            answer = m.outcome.answer if isinstance(m.outcome, OpenAnswered) else None
            if isinstance(answer, ChannelOpened):
                self.expected_closes.append(orphan_close(answer.channel_id))
            elif not m.answered:
                m.orphaned_open = True
        self._forget_if_over(rid)

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 5.0, 30.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        expected = [
            RequestTimedOut(r)
            for r, m in self.live.items()
            if m.outcome is None and not m.caller_done and m.deadline <= self.now
        ]
        got = self.s.poll(self.now)
        assert sorted(got, key=lambda o: o.request_id) == expected
        for outcome in got:
            self._record(outcome)
            m = self.live[outcome.request_id]
            if m.kind == "open":
                m.orphaned_open = True  # its deadline passed: the caller gave up on it

    def _record(self, outcome: Outcome) -> None:
        self.outcomes[outcome.request_id].append(outcome)
        self.live[outcome.request_id].outcome = outcome

    # -- the hub's side (hostile)

    @rule(
        data=st.data(),
        shape=st.sampled_from(["result", "error", "empty", "opened", "refused"]),
        unknown=st.sampled_from([None, None, None, None, 0, 1, 7]),
        live=st.booleans(),
    )
    def hub_answers(self, data: st.DataObject, shape: str, unknown: int | None, live: bool) -> None:
        if unknown is None and self.issued:
            rid = data.draw(
                st.sampled_from(sorted(self.live) if live and self.live else self.issued)
            )
        else:
            rid = 0 if unknown in (None, 0) else len(self.issued) + unknown
        m = self.live.get(rid)
        if live and m is not None:  # mostly the right kind of answer for a live request
            kind_shapes = ["result", "error", "empty"] if m.kind == "call" else ["opened"] * 3
            shape = data.draw(st.sampled_from([*kind_shapes, "refused", shape]))
        message = self._answer(rid, shape)
        if self.failed:
            assert self.s.receive(message) == []
            return
        if not 0 < rid <= len(self.issued):
            with pytest.raises(LinkProtocolError):
                self.s.receive(message)
            return
        kind = "call" if isinstance(message, HubResponse) else "open"
        waiting = m is not None and m.outcome is None and not m.caller_done
        if waiting and kind != m.kind:  # type: ignore[union-attr]
            with pytest.raises(LinkProtocolError):
                self.s.receive(message)
            return
        got = self.s.receive(message)
        if m is None or m.answered or kind != m.kind:
            assert got == []  # late or duplicate
            return
        m.answered = True
        if waiting:
            assert len(got) == 1 and got[0].request_id == rid
            self._record(got[0])
        else:
            assert got == []
            if isinstance(message, ChannelOpened) and m.orphaned_open:
                self.expected_closes.append(orphan_close(message.channel_id))
        self._forget_if_over(rid)

    def _answer(self, rid: int, shape: str) -> Answer:
        if shape == "result":
            return HubResponse(rid, {"n": rid})
        if shape == "error":
            return HubResponse(rid, error_code="not_found", error_message="no")
        if shape == "empty":
            return HubResponse(rid)
        if shape == "refused":
            return refused(rid)
        self.next_channel += 1
        return opened(rid, self.next_channel)

    @rule(roll=st.integers(0, 29))
    def link_ends_now_and_then(self, roll: int) -> None:
        if roll == 0:
            self.link_ends()

    def link_ends(self) -> None:
        error = LinkClosed("the link ended")
        got = self.s.fail(error)
        if self.failed:
            assert got == []
            return
        self.failed = True
        waiting = [r for r, m in self.live.items() if m.outcome is None and not m.caller_done]
        assert got == [RequestFailed(r, error) for r in waiting]
        for outcome in got:
            self._record(outcome)
        for rid in list(self.live):
            self._forget_if_over(rid)

    # -- credit

    @rule(cost=st.integers(0, 1200), grant=st.integers(0, 600))
    def credit_moves(self, cost: int, grant: int) -> None:
        if grant:
            self.credit.grant(grant)
            self.credit_model += grant
        if self.credit.allows(cost):
            self.credit.spend(cost)
            self.credit_model -= cost
        else:
            assert cost > self.credit_model
            with pytest.raises(LocalError):
                self.credit.spend(cost)

    # -- invariants

    @invariant()
    def collect_what_goes_out(self) -> None:
        if not hasattr(self, "s"):
            return
        self.sent.extend(self.s.messages_to_send())

    @invariant()
    def orphans_are_closed_exactly_once(self) -> None:
        if not hasattr(self, "s"):
            return
        closes = [m for m in self.sent if isinstance(m, ChannelClose)]
        assert closes == self.expected_closes
        assert self.s.orphans_closed == len(closes)
        assert len({c.channel_id for c in closes}) == len(closes)

    @invariant()
    def requests_go_out_once_in_id_order(self) -> None:
        if not hasattr(self, "s"):
            return
        ids = [m.request_id for m in self.sent if isinstance(m, (HubRequest, OpenChannel))]
        assert ids == sorted(set(ids))
        assert set(ids) <= set(self.issued)

    @invariant()
    def every_request_ends_at_most_once(self) -> None:
        if not hasattr(self, "s"):
            return
        for rid in self.issued:
            assert len(self.outcomes[rid]) <= 1
            assert self.caller_ends[rid] <= 1

    @invariant()
    def the_session_holds_what_the_model_holds(self) -> None:
        if not hasattr(self, "s"):
            return
        assert self.s.held == len(self.live) <= self.s.max_pending
        for rid in self.issued:
            m = self.live.get(rid)
            status = self.s.status(rid)
            if m is None:
                assert status is None
            elif m.caller_done:
                assert status is RequestStatus.ORPHANED
            else:
                assert status is (
                    RequestStatus.PENDING if m.outcome is None else RequestStatus.READY
                )
        pending = [
            m.deadline for m in self.live.values() if m.outcome is None and not m.caller_done
        ]
        earliest = min(pending, default=math.inf)
        assert self.s.next_deadline() == (None if earliest == math.inf else earliest)

    @invariant()
    def credit_is_never_negative(self) -> None:
        if not hasattr(self, "s"):
            return
        assert self.credit.available == self.credit_model >= 0

    def teardown(self) -> None:
        if not hasattr(self, "s"):
            return
        # The link ends and every caller finishes: then each request has ended exactly once.
        self.link_ends()
        for rid, m in list(self.live.items()):
            if not m.caller_done:
                assert self.s.take(rid) == m.outcome
                self.caller_ends[rid] += 1
        for rid in self.issued:
            assert self.caller_ends[rid] == 1
            assert len(self.outcomes[rid]) <= 1
        assert self.s.held == 0


TestLinkSessionMachine = LinkSessionMachine.TestCase
TestLinkSessionMachine.settings = settings(max_examples=400, stateful_step_count=50)
