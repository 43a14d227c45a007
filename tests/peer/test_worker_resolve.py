"""Which worker a reference names (``leapcore.peer.resolve``): exact id > exact name > a
unique start of an id of at least 4 characters; ambiguity lists the candidates."""

from __future__ import annotations

from typing import Any

import pytest

from leapcore.errors import AmbiguousReference, ConfigError, NotFound
from leapcore.peer.resolve import MIN_PREFIX, resolve_worker

A = {"id": "abcdEFGH1234", "name": "box"}
B = {"id": "abcdXYZ98765", "name": "laptop"}
C = {"id": "Qrst00000000", "name": "abcdEFGH"}  # a name spelled like the start of A's id
D = {"id": "box", "name": "other"}  # an id spelled like A's name
WORKERS: list[dict[str, Any]] = [A, B, C, D]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("abcdEFGH1234", A),  # exact id
        ("laptop", B),  # exact name
        ("box", D),  # an exact id wins over a name
        ("abcdEFGH", C),  # an exact name wins over a prefix
        ("abcdX", B),  # a unique prefix
        ("Qrst", C),  # exactly MIN_PREFIX characters
    ],
)
def test_the_order_of_the_rules(ref: str, expected: dict[str, Any]) -> None:
    assert resolve_worker(ref, WORKERS) is expected


def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    with pytest.raises(AmbiguousReference) as caught:
        resolve_worker("abcd", WORKERS)
    error = caught.value
    assert error.code == "ambiguous_reference"
    assert error.candidates == (("abcdEFGH1234", "box"), ("abcdXYZ98765", "laptop"))
    assert "2 worker ids start with 'abcd'" in error.message
    assert "\n  abcdEFGH1234  box\n  abcdXYZ98765  laptop\n" in error.message
    assert isinstance(error, ConfigError)  # a usage error: exit 2 in the CLIs


def test_a_name_carried_twice_is_ambiguous() -> None:
    twins = [{"id": "one111", "name": "twin"}, {"id": "two222", "name": "twin"}]
    with pytest.raises(AmbiguousReference) as caught:
        resolve_worker("twin", twins)
    assert caught.value.candidates == (("one111", "twin"), ("two222", "twin"))
    assert "2 workers are called 'twin'" in caught.value.message


def test_no_match_is_not_found() -> None:
    with pytest.raises(NotFound, match="no worker id starts with it"):
        resolve_worker("zzzzz", WORKERS)
    with pytest.raises(NotFound, match="no worker has the id or name"):
        resolve_worker("zzzzz", [])


def test_a_short_prefix_is_never_a_prefix() -> None:
    short = "abc"
    assert len(short) < MIN_PREFIX and all(w["id"].startswith(short) for w in (A, B))
    with pytest.raises(NotFound, match=f"at least {MIN_PREFIX} characters"):
        resolve_worker(short, WORKERS)
    # ... but a short exact id or name still names its worker.
    assert resolve_worker("box", [A]) is A


def test_ids_are_case_sensitive() -> None:
    with pytest.raises(NotFound):
        resolve_worker("ABCDEFGH1234", WORKERS)
    assert resolve_worker("abcdE", WORKERS) is A
    with pytest.raises(NotFound):
        resolve_worker("ABCDe", WORKERS)


def test_an_empty_reference_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="empty worker reference"):
        resolve_worker("", WORKERS)


def test_nameless_entries_and_escaped_names() -> None:
    pins = [{"id": "pin1aaaa"}, {"id": "pin1bbbb"}]  # pinned ids: no names
    assert resolve_worker("pin1a", pins, what="pinned worker") is pins[0]
    with pytest.raises(AmbiguousReference) as caught:
        resolve_worker("pin1", pins, what="pinned worker")
    assert caught.value.candidates == (("pin1aaaa", ""), ("pin1bbbb", ""))
    assert "2 pinned worker ids start with 'pin1'" in caught.value.message
    assert "\n  pin1aaaa  -\n" in caught.value.message
    # A worker chooses its name: control characters never reach a terminal.
    evil = [{"id": "evil1111", "name": "\x1b[2Jx"}, {"id": "evil2222", "name": "y"}]
    with pytest.raises(AmbiguousReference) as caught:
        resolve_worker("evil", evil)
    assert "\x1b" not in caught.value.message and "\\x1b[2Jx" in caught.value.message
