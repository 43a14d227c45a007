"""Unauthenticated transport abuse against a real hub process: HTTP/2 state violations and
floods, and a WebSocket ping flood. Every case ends with :meth:`Stage.assert_survived`: the hub
is alive, the bystander's channel round-trips, the hub's RSS and descriptors come back.

Each flood is bounded by a byte count and by :data:`FLOOD_SECONDS`; the peaks of memory it may
cost the hub are bounded by :data:`FLOOD_RSS_KIB` (a peer that does not read must not make the
hub queue answers without limit).
"""

from __future__ import annotations

import time
from typing import Final

from hostile_arena import ATTACKER, ATTACKERS, LIMITS, Stage
from hostile_attacks import (
    closed_by_peer,
    h2_continuation_flood,
    h2_get,
    h2_ping_flood,
    h2_preface_only,
    h2_request_then_reset,
    h2_settings_flood,
    h2_window_zero_get,
    held,
    ws_ping_flood,
)

#: Seconds each flood runs at most.
FLOOD_SECONDS: Final = 5.0
#: How much the hub's RSS may grow while one flood runs (KiB).
FLOOD_RSS_KIB: Final = 6 * 1024
#: Connections of the preface-only flood.
PREFACE_CONNECTIONS: Final = 300


def test_h2_window_zero_then_get(stage: Stage) -> None:
    """An initial window of 0, then ``GET /healthz``: the body cannot be sent (today the h2
    ``FlowControlError`` ends the hub process)."""
    with stage.attack():
        for _ in range(3):
            h2_window_zero_get(stage.arena.address, ATTACKER)
    stage.assert_survived()
    assert h2_get(stage.arena.address, ATTACKER) == 200


def test_h2_request_and_reset_in_one_write(stage: Stage) -> None:
    """A request and its ``RST_STREAM`` in one write: the hub answers a closed stream (today
    the h2 ``StreamClosedError`` ends the hub process)."""
    with stage.attack():
        for _ in range(3):
            h2_request_then_reset(stage.arena.address, ATTACKER)
    stage.assert_survived()
    assert h2_get(stage.arena.address, ATTACKER) == 200


def test_h2_preface_only_flood(stage: Stage) -> None:
    """Hundreds of connections that send the preface and nothing more: each must be closed by
    the hub once the handshake budget (``handshake_timeout``) is spent, and the bystander
    keeps working while they are held."""
    timeout = float(LIMITS["handshake_timeout"])
    with stage.attack() as watch:
        socks = h2_preface_only(stage.arena.address, list(ATTACKERS[:4]), PREFACE_CONNECTIONS)
        with held(socks):
            during = stage.bystander.ping()
            assert during.get("ok"), f"bystander failed during the flood: {during}"
            # Every connection ends within the budget (plus scheduling slack), counted from
            # now: the first ones were opened earlier still.
            deadline = time.monotonic() + timeout + 3.0
            still_open = [s for s in socks if not closed_by_peer(s, deadline - time.monotonic())]
            assert not still_open, (
                f"{len(still_open)} of {len(socks)} preface-only connections were still open "
                f"{timeout + 3.0:g}s after the flood (handshake_timeout {timeout:g}s): "
                f"{watch.report()}"
            )
    stage.assert_survived()


def test_h2_ping_flood_from_a_non_reader(stage: Stage) -> None:
    """PING frames from a peer that never reads: the ACKs must not pile up in the hub."""
    with stage.attack():
        sent = h2_ping_flood(stage.arena.address, ATTACKER, seconds=FLOOD_SECONDS)
    assert sent > 0
    stage.assert_survived(peak_rss_kib=FLOOD_RSS_KIB)


def test_h2_settings_flood_from_a_non_reader(stage: Stage) -> None:
    """SETTINGS frames (each owing an ACK) from a peer that never reads."""
    with stage.attack():
        sent = h2_settings_flood(stage.arena.address, ATTACKER, seconds=FLOOD_SECONDS)
    assert sent > 0
    stage.assert_survived(peak_rss_kib=FLOOD_RSS_KIB)


def test_h2_continuation_flood(stage: Stage) -> None:
    """A header block that never ends (HEADERS, then CONTINUATION frames without
    END_HEADERS): the hub must not buffer it without limit."""
    with stage.attack():
        sent = h2_continuation_flood(stage.arena.address, ATTACKER, seconds=FLOOD_SECONDS)
    assert sent > 0
    stage.assert_survived(peak_rss_kib=FLOOD_RSS_KIB)


def test_websocket_ping_flood_from_a_non_reader(stage: Stage) -> None:
    """WebSocket PINGs from a peer that never reads: the PONGs must not queue without limit
    while the hub's writer is blocked."""
    with stage.attack():
        sent = ws_ping_flood(stage.arena.address, ATTACKER, seconds=FLOOD_SECONDS)
    assert sent > 0
    stage.assert_survived(peak_rss_kib=FLOOD_RSS_KIB)
