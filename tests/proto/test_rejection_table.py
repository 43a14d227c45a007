"""When a worker may retire its identity: the pure table of :mod:`leapcore.proto.backoff`.

Only ``worker_deleted`` from the hub the worker registered with (or from any hub, for a
worker that recorded no hub id) retires it; every other rejection leaves its files alone.
"""

from __future__ import annotations

import itertools

import pytest

from leapcore.proto.backoff import (
    REJECTIONS,
    HubRelation,
    Outcome,
    ReconnectAction,
    ReconnectPolicy,
    classify_link_error,
    hub_relation,
)

SAVED = "0123456789abcdef"
OTHER = "fedcba9876543210"

#: (code, the error's hub id, the saved hub id, greeted) -> outcome: the whole table, spelt out.
TABLE = [
    # worker_deleted: believed from the hub it registered with, or when none was recorded.
    ("worker_deleted", SAVED, SAVED, False, Outcome.WORKER_DELETED),
    ("worker_deleted", SAVED, SAVED, True, Outcome.WORKER_DELETED),
    ("worker_deleted", OTHER, None, False, Outcome.WORKER_DELETED),
    ("worker_deleted", "", None, False, Outcome.WORKER_DELETED),
    ("worker_deleted", OTHER, "", False, Outcome.WORKER_DELETED),
    # ...never from another hub, nor from one that does not name itself.
    ("worker_deleted", OTHER, SAVED, False, Outcome.HUB_MISMATCH),
    ("worker_deleted", OTHER, SAVED, True, Outcome.HUB_MISMATCH),
    ("worker_deleted", "", SAVED, False, Outcome.HUB_MISMATCH),
    # unauthenticated: a hub that does not know the token (a different or a reset one).
    ("unauthenticated", OTHER, SAVED, False, Outcome.HUB_MISMATCH),
    ("unauthenticated", SAVED, SAVED, False, Outcome.HUB_MISMATCH),
    ("unauthenticated", "", None, False, Outcome.HUB_MISMATCH),
    ("unauthenticated", OTHER, None, False, Outcome.HUB_MISMATCH),
    # ...after the greeting it is retried: the next connect is answered for what it is then.
    ("unauthenticated", SAVED, SAVED, True, Outcome.TRANSIENT),
    ("unauthenticated", OTHER, None, True, Outcome.TRANSIENT),
    # A name another of the owner's workers has.
    ("already_exists", SAVED, SAVED, False, Outcome.NAME_TAKEN),
    ("already_exists", "", None, False, Outcome.NAME_TAKEN),
    # Everything else is retried.
    ("unavailable", SAVED, SAVED, False, Outcome.TRANSIENT),
    ("quota_exceeded", OTHER, SAVED, False, Outcome.TRANSIENT),
    ("invalid_argument", "", None, True, Outcome.TRANSIENT),
    ("permission_denied", SAVED, SAVED, False, Outcome.TRANSIENT),
    ("internal", SAVED, SAVED, True, Outcome.TRANSIENT),
    ("no_such_code", SAVED, SAVED, False, Outcome.TRANSIENT),
]


@pytest.mark.parametrize(("code", "error_hub", "saved", "greeted", "outcome"), TABLE)
def test_the_table(
    code: str, error_hub: str, saved: str | None, greeted: bool, outcome: Outcome
) -> None:
    assert classify_link_error(code, error_hub, saved, greeted=greeted) is outcome


def test_hub_relation() -> None:
    assert hub_relation(SAVED, SAVED) is HubRelation.SAME
    assert hub_relation(OTHER, SAVED) is HubRelation.OTHER
    assert hub_relation("", SAVED) is HubRelation.OTHER
    for error_hub in (SAVED, OTHER, ""):
        assert hub_relation(error_hub, None) is HubRelation.UNRECORDED
        assert hub_relation(error_hub, "") is HubRelation.UNRECORDED


def test_only_worker_deleted_from_the_registered_hub_retires() -> None:
    """Exhaustively over codes, hub ids and greeting: WORKER_DELETED needs the code
    ``worker_deleted`` and a hub id equal to the saved one (or none saved)."""
    codes = ["worker_deleted", "unauthenticated", "already_exists", "unavailable", "internal"]
    ids = [SAVED, OTHER, ""]
    for code, error_hub, saved, greeted in itertools.product(
        codes, ids, [SAVED, OTHER, "", None], [False, True]
    ):
        outcome = classify_link_error(code, error_hub, saved, greeted=greeted)
        retires = outcome is Outcome.WORKER_DELETED
        assert retires == (code == "worker_deleted" and (not saved or error_hub == saved)), (
            code,
            error_hub,
            saved,
            greeted,
        )


def test_every_row_of_rejections_is_a_permanent_outcome() -> None:
    """The table covers every relation for each code it names, and each outcome it gives
    ends the reconnect loop (never a retry), whatever go-away delay is pending."""
    codes = {code for code, _ in REJECTIONS}
    assert codes == {"worker_deleted", "unauthenticated", "already_exists", "token_expired"}
    assert set(REJECTIONS) == set(itertools.product(codes, HubRelation))
    actions = {
        Outcome.WORKER_DELETED: ReconnectAction.WIPE_AND_EXIT,
        Outcome.HUB_MISMATCH: ReconnectAction.HUB_MISMATCH,
        Outcome.NAME_TAKEN: ReconnectAction.FAIL,
        Outcome.TOKEN_EXPIRED: ReconnectAction.TOKEN_EXPIRED,
    }
    for outcome in set(REJECTIONS.values()):
        policy = ReconnectPolicy()
        policy.hub_requested_delay(10)
        assert policy.after_attempt(0, 1, outcome).action is actions[outcome]
