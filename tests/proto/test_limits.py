"""One place for every number: :mod:`leapcore.proto.limits` holds design.md's table once.

* every number of design.md's "Numbers everyone must honour" table is a constant of
  ``limits`` with the documented value (the table is parsed when ``../shared/design.md``
  is there, so a changed row fails here);
* no other ``leapcore`` module assigns a module-level constant of the same name as one of
  ``limits`` (walked with ``ast``, so a module written tomorrow is checked too);
* the modules that use the numbers take them from ``limits``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import leapcore.proto.limits as limits
from leapcore.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "leapcore"
DESIGN = ROOT.parent / "shared" / "design.md"
MiB = 1024 * 1024

#: design.md's table: row -> (words of the row's value, constant, value).
DESIGN_TABLE: dict[str, list[tuple[str, str, float]]] = {
    "worker heartbeat": [
        ("check every 2 s", "HEARTBEAT_CHECK_INTERVAL", 2.0),
        ("nothing was sent for 5 s", "HEARTBEAT_IDLE_AFTER", 5.0),
    ],
    "hub liveness": [("silent for 10 s", "LIVENESS_TIMEOUT", 10.0)],
    "reconnect backoff": [
        ("1 s initial", "BACKOFF_INITIAL", 1.0),
        ("×2", "BACKOFF_MULTIPLIER", 2.0),
        ("capped at 180 s", "BACKOFF_MAX", 180.0),
        ("±20 %", "BACKOFF_JITTER", 0.2),
        ("lasted ≥ 30 s", "BACKOFF_RESET_AFTER", 30.0),
    ],
    "hub go-away": [("(10 s)", "GO_AWAY_DELAY", 10)],
    "registration key": [
        ("48 random", "ID_LENGTH", 48),
        ("valid 5 min", "REG_KEY_LIFETIME_MS", 5 * 60_000),
        ("< 2 min remain", "REG_KEY_EXTEND_WINDOW_MS", 2 * 60_000),
    ],
    "transport plaintext": [
        ("≤ 65519 bytes per frame", "MAX_PLAINTEXT", 65519),
        ("default 16 MiB", "DEFAULT_MAX_MESSAGE_SIZE", 16 * MiB),
        ("range 65519 …", "MIN_MAX_MESSAGE_SIZE", 65519),
        ("… 64 MiB", "MAX_MAX_MESSAGE_SIZE", 64 * MiB),
    ],
    "relay": [
        ("negotiated size + 64 KiB", "REASSEMBLY_SLACK", 64 * 1024),
        ("≤ 4 incomplete chunked messages", "DEFAULT_MAX_INCOMPLETE", 4),
    ],
    "rekey": [
        ("1 h max age", "REKEY_MAX_AGE", 3600.0),
        ("50 min minimum interval", "REKEY_MIN_INTERVAL", 50 * 60.0),
        ("70 min hard ceiling", "REKEY_HARD_CEILING", 70 * 60.0),
        ("10 s grace", "GRACE_WINDOW", 10.0),
    ],
}
#: The other shared numbers limits holds (spec/handshake.md, docs/protocol.md,
#: spec/behavior.md §2.1, the signal watcher, the worker's and the store's defaults).
OTHER_NUMBERS: dict[str, float] = {
    "MAX_CIPHERTEXT": 65535,
    "CHANNEL_CREDIT": MiB,
    "CREDIT_BATCH": MiB // 4,
    "GREETING_TIMEOUT": 10.0,
    "REKEY_REJECT_BACKOFF": 60.0,
    "REKEY_TIMEOUT": 10.0,
    "REKEY_IDLE_CHECK": 60.0,
    "STOP_GRACE": 10.0,
    "DEFAULT_MAX_WORKERS_PER_USER": 64,
    "MAX_CHANNELS": 256,
}
#: The same name for another number: the dialler's own handshake timeout (30 s), not the
#: listener's (10 s).
OTHER_MEANING: frozenset[tuple[str, str]] = frozenset({("HANDSHAKE_TIMEOUT", "leapcore.net.pipe")})

TABLE_NUMBERS = [(name, value) for row in DESIGN_TABLE.values() for _, name, value in row]


@pytest.mark.parametrize(("name", "value"), [*TABLE_NUMBERS, *OTHER_NUMBERS.items()])
def test_each_number_is_in_limits_with_its_documented_value(name: str, value: float) -> None:
    assert name in limits.__all__
    assert getattr(limits, name) == value
    assert type(getattr(limits, name)) is type(value), f"{name} should be a {type(value)}"


def _design_rows() -> dict[str, str]:
    if not DESIGN.exists():
        pytest.skip(f"{DESIGN} is not beside this checkout")
    text = DESIGN.read_text()
    table = text.split("## Numbers everyone must honour", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("behaviour", "---"):
            rows[cells[0]] = cells[1]
    return rows


#: Rows of design.md's table that hold no limit (an exit status is not one).
ROWS_WITHOUT_LIMITS = frozenset({"rejected token on reconnect", "channel open"})


def test_design_md_table_is_the_one_listed_here() -> None:
    """Every row of design.md's table is listed above, with the words of each number."""
    rows = _design_rows()
    assert set(rows) == set(DESIGN_TABLE) | ROWS_WITHOUT_LIMITS
    for row, numbers in DESIGN_TABLE.items():
        for words, name, _value in numbers:
            assert words in rows[row], f"design.md's {row!r} row no longer says {words!r} ({name})"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _assigned_at_module_level(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    body: list[ast.stmt] = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.value is not None:
                names.add(node.target.id)
        elif isinstance(node, ast.If | ast.Try):
            body.extend(node.body)
            body.extend(node.orelse)
    return names


LIMIT_NAMES = frozenset(name for name in limits.__all__ if name.isupper())


def assignments_elsewhere() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module == limits.__name__:
            continue
        for name in _assigned_at_module_level(ast.parse(path.read_text())) & LIMIT_NAMES:
            found.add((name, module))
    return found


def test_no_other_module_assigns_a_number_of_limits() -> None:
    assert assignments_elsewhere() - OTHER_MEANING == set()


@pytest.mark.parametrize(("name", "module"), sorted(OTHER_MEANING))
def test_the_exceptions_are_still_needed_and_agree(name: str, module: str) -> None:
    assert (name, module) in assignments_elsewhere(), (
        f"{module} no longer assigns {name}: remove it from this test's list"
    )


def test_the_assignment_walk_finds_constants() -> None:
    """The walk is not vacuous: it sees annotated, plain and conditional assignments."""
    tree = ast.parse(
        "from typing import Final\nA: Final = 1\nB = 2\nif True:\n    C = 3\n"
        "def f():\n    D = 4\nclass K:\n    E = 5\n"
    )
    assert _assigned_at_module_level(tree) == {"A", "B", "C"}


def test_limits_imports_only_values() -> None:
    """Readable from every layer (net/ too): nothing of leapcore but the errors."""
    tree = ast.parse(Path(limits.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert imported == {"__future__", "collections.abc", "typing", "attrs", "..errors"}


def test_the_plaintext_cap_is_the_ciphertext_cap_less_the_tag() -> None:
    from leapcore.crypto.primitives import AEAD_TAG_SIZE

    assert limits.MAX_PLAINTEXT == limits.MAX_CIPHERTEXT - AEAD_TAG_SIZE
    assert limits.CREDIT_BATCH + limits.MAX_CIPHERTEXT <= limits.CHANNEL_CREDIT


@pytest.mark.parametrize("value", [65518, 64 * MiB + 1, 0, -1, 2.0e6, "16777216", True, None])
def test_one_check_of_the_message_size_range_with_one_message(value: object) -> None:
    rule = "must be an integer in 65519..67108864"
    assert limits.max_message_size_problem(value) == rule
    with pytest.raises(ConfigError) as caught:
        limits.validate_max_message_size(value)
    assert str(caught.value) == f"max_message_size {rule}, got {value!r}"


@pytest.mark.parametrize("value", [65519, 16 * MiB, 64 * MiB])
def test_the_message_size_bounds_are_inclusive(value: int) -> None:
    assert limits.max_message_size_problem(value) is None
    assert limits.validate_max_message_size(value) == value


def test_the_cores_and_the_configuration_read_their_numbers_from_limits() -> None:
    from leapcore.crypto.rekey_policy import RekeyTimings
    from leapcore.proto.backoff import Backoff, ReconnectPolicy
    from leapcore.proto.chunking import MAX_CHUNK, Reassembler
    from leapcore.proto.heartbeat import GreetingWatchdog, HeartbeatSchedule, Liveness
    from leapcore.store.config import HUB_KEYS, WORKER_KEYS

    assert HeartbeatSchedule.CHECK_INTERVAL == limits.HEARTBEAT_CHECK_INTERVAL
    assert HeartbeatSchedule.IDLE_AFTER == limits.HEARTBEAT_IDLE_AFTER
    assert Liveness(0.0).timeout == limits.LIVENESS_TIMEOUT
    assert GreetingWatchdog.TIMEOUT == limits.GREETING_TIMEOUT
    backoff = Backoff()
    assert (backoff.initial, backoff.maximum, backoff.multiplier, backoff.jitter) == (
        limits.BACKOFF_INITIAL,
        limits.BACKOFF_MAX,
        limits.BACKOFF_MULTIPLIER,
        limits.BACKOFF_JITTER,
    )
    assert ReconnectPolicy.RESET_AFTER == limits.BACKOFF_RESET_AFTER
    timings = RekeyTimings()
    assert (timings.max_age, timings.min_interval, timings.hard_ceiling) == (
        limits.REKEY_MAX_AGE,
        limits.REKEY_MIN_INTERVAL,
        limits.REKEY_HARD_CEILING,
    )
    assert (timings.reject_backoff, timings.timeout, timings.idle_check) == (
        limits.REKEY_REJECT_BACKOFF,
        limits.REKEY_TIMEOUT,
        limits.REKEY_IDLE_CHECK,
    )
    assert MAX_CHUNK == limits.MAX_PLAINTEXT
    reassembler = Reassembler()
    assert (reassembler.max_message_size, reassembler.max_incomplete) == (
        limits.DEFAULT_MAX_MESSAGE_SIZE,
        limits.DEFAULT_MAX_INCOMPLETE,
    )
    assert HUB_KEYS["max_message_size"][1] == WORKER_KEYS["max_message_size"][1]
    assert HUB_KEYS["max_message_size"][1] == limits.DEFAULT_MAX_MESSAGE_SIZE
    assert HUB_KEYS["max_workers_per_user"][1] == limits.DEFAULT_MAX_WORKERS_PER_USER
    assert WORKER_KEYS["max_incomplete_chunked"][1] == limits.DEFAULT_MAX_INCOMPLETE
    assert WORKER_KEYS["max_channels"][1] == limits.MAX_CHANNELS
