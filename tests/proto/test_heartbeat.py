"""Heartbeat schedule, liveness, greeting watchdog and latency, with fake time."""

from __future__ import annotations

from leapcore.proto.heartbeat import GreetingWatchdog, HeartbeatSchedule, LatencyMeter, Liveness


def _run(schedule: HeartbeatSchedule, until: float, sends: set[float]) -> list[float]:
    """Drive the schedule like a driver would: sleep to each deadline, poll, maybe send."""
    beats = []
    sends_left = sorted(sends)
    now = 0.0
    while True:
        now = schedule.next_deadline()
        if now > until:
            return beats
        while sends_left and sends_left[0] <= now:
            schedule.on_sent(sends_left.pop(0))
        if schedule.poll(now):
            beats.append(now)
            schedule.on_sent(now)


def test_idle_link_beats_about_every_six_seconds() -> None:
    s = HeartbeatSchedule(connected_at=0.0)
    assert _run(s, 30.0, set()) == [6.0, 12.0, 18.0, 24.0, 30.0]


def test_checks_fall_every_two_seconds() -> None:
    s = HeartbeatSchedule(connected_at=100.0)
    assert s.next_deadline() == 102.0
    assert not s.poll(101.9)
    assert not s.poll(102.0)
    assert s.next_deadline() == 104.0


def test_traffic_suppresses_heartbeats() -> None:
    s = HeartbeatSchedule(connected_at=0.0)
    traffic = {t * 0.5 for t in range(1, 61)}  # a frame every 0.5 s for 30 s
    assert _run(s, 30.0, traffic) == []


def test_heartbeat_resumes_five_seconds_after_the_last_send() -> None:
    s = HeartbeatSchedule(connected_at=0.0)
    # Last outbound frame at 7.5 s: next due at the first check >= 12.5, i.e. 14.
    assert _run(s, 15.0, {1.0, 4.0, 7.5}) == [14.0]


def test_late_wakeup_skips_missed_checks() -> None:
    s = HeartbeatSchedule(connected_at=0.0)
    assert s.poll(13.3)
    assert s.next_deadline() == 14.0


def test_liveness_expires_after_ten_silent_seconds() -> None:
    live = Liveness(now=0.0)
    live.on_received(4.0)
    assert live.deadline() == 14.0
    assert not live.expired(13.99)
    assert live.expired(14.0)
    live.on_received(3.0)  # an older timestamp never moves the deadline back
    assert live.deadline() == 14.0


def test_greeting_watchdog() -> None:
    w = GreetingWatchdog(connected_at=50.0)
    assert w.deadline() == 60.0 and not w.expired(59.9) and w.expired(60.0)
    w.on_greeting()
    assert w.deadline() is None and not w.expired(100.0)


def test_latency_meter_matches_echoes() -> None:
    m = LatencyMeter(window=2)
    a = m.probe(1.0)
    b = m.probe(2.0)
    assert m.on_echo(b, 2.25) == 0.25
    assert m.on_echo(b, 3.0) is None  # echoed twice
    c = m.probe(3.0)
    d = m.probe(4.0)  # window of 2: probe a is forgotten
    assert m.on_echo(a, 5.0) is None
    assert m.on_echo(c, 3.5) == 0.5 and m.on_echo(d, 4.125) == 0.125
    assert (m.last, m.samples) == (0.125, 3)
