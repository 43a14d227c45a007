"""The worker policy's parser and rules (sans-IO): what each table accepts, every problem a
ConfigError naming the file and the setting, and how programs, paths and methods match."""

from __future__ import annotations

import contextlib
import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leapcore.errors import ConfigError
from leapcore.proto.limits import POLICY_MAX_FILE_BYTES, POLICY_MAX_RULES
from leapcore.proto.worker_policy import (
    ALLOW_EVERYTHING,
    ExecRules,
    FilesRules,
    Program,
    ServiceRules,
    parse_policy,
    program_in,
)

FULL = b"""
[exec]
allow = ["pytest", "/usr/bin/git"]
deny = ["ssh", "/usr/local/bin/danger"]
max_cpu_seconds = 60
max_memory_mb = 512
max_open_files = 256
run_as_user = "builder"

[files]
roots = ["~/work", "/tmp/scratch/"]

[tunnel]
allow = ["10.0.0.0/8:5432"]
deny = ["10.0.0.1"]

[services]
disabled = ["pty", "exec.signal"]
"""


def test_a_full_policy() -> None:
    policy = parse_policy(FULL, source="policy.toml", home="/home/ann")
    assert policy.source == "policy.toml"
    assert policy.exec == ExecRules(
        allow=("pytest", "/usr/bin/git"),
        deny=("ssh", "/usr/local/bin/danger"),
        max_cpu_seconds=60,
        max_memory_mb=512,
        max_open_files=256,
        run_as_user="builder",
    )
    assert policy.files.roots == ("/home/ann/work", "/tmp/scratch")
    assert policy.tunnel is not None
    assert [r.text for r in policy.tunnel.allow] == ["10.0.0.0/8:5432"]
    assert policy.services.disabled == ("pty", "exec.signal")
    summary = policy.summary()
    assert summary["tunnel"] == {"allow": ["10.0.0.0/8:5432"], "deny": ["10.0.0.1"]}
    assert summary["exec"]["allow"] == ["pytest", "/usr/bin/git"]


def test_an_empty_file_allows_everything() -> None:
    policy = parse_policy(b"", source="p", home="/h")
    assert (policy.exec, policy.files, policy.tunnel, policy.services) == (
        ALLOW_EVERYTHING.exec,
        ALLOW_EVERYTHING.files,
        None,
        ALLOW_EVERYTHING.services,
    )
    assert not policy.exec.restricts
    assert policy.exec.check(Program("anything")) is None
    assert policy.files.check("/etc/shadow") is None
    assert policy.services.check("pty.spawn") is None


def test_explicitly_empty_lists_mean_nothing() -> None:
    policy = parse_policy(b"[exec]\nallow = []\n[files]\nroots = []\n", source="p", home="/h")
    assert policy.exec.restricts
    found = Program("true", "/usr/bin/true", "/usr/bin/true", trusted=True)
    refusal = policy.exec.check(found)
    assert refusal is not None and refusal.message == "exec.allow (no rule matches): true"
    refusal = policy.files.check("/tmp/x")
    assert refusal is not None
    assert refusal.message == "files.roots (outside every root): /tmp/x"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"[exec]\nalow = []", "unknown setting exec.alow (known in [exec]: allow, deny,"),
        (b"[shell]\nallow = []", "unknown table [shell] (known: exec, files, tunnel, services)"),
        (b"exec = 3", "exec must be a table ([exec]), got an integer"),
        (b'[exec]\nallow = "pytest"', "exec.allow must be a list of strings, got a string"),
        (b"[exec]\nallow = [1]", "exec.allow[0] must be a string, got an integer"),
        (b'[exec]\nallow = [""]', "exec.allow[0] must be 1..4096 characters"),
        (b'[exec]\ndeny = ["bin/ssh"]', "exec.deny[0] 'bin/ssh': must be a program name (no '/')"),
        (b'[exec]\ndeny = [".."]', "exec.deny[0] '..': must be a program name"),
        (b"[exec]\nmax_cpu_seconds = -1", "exec.max_cpu_seconds must be 0 (inherit) .. "),
        (b"[exec]\nmax_memory_mb = 1.5", "exec.max_memory_mb must be an integer, got a number"),
        (b"[exec]\nmax_open_files = true", "exec.max_open_files must be an integer, got a bool"),
        (b"[exec]\nrun_as_user = 0", "exec.run_as_user must be a user name, got 0"),
        (b'[exec]\nrun_as_user = "a:b"', "exec.run_as_user must be a user name"),
        (b'[files]\nroots = ["work"]', "files.roots[0] 'work': must be an absolute path or"),
        (b'[tunnel]\nallow = ["10.0.0.0/99"]', "tunnel.allow: "),
        (b'[services]\ndisabled = ["ping"]', "ping is answered by every channel"),
        (b'[services]\ndisabled = ["pty."]', "must be a method or group name"),
        (b"[exec\n", "not valid TOML: "),
        (b"\xff\xfe", "not UTF-8 text (byte 0)"),
    ],
)
def test_every_problem_names_the_file_and_the_setting(text: bytes, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, source="/etc/w/policy.toml", home="/h")
    assert str(caught.value).startswith("/etc/w/policy.toml: ")
    assert problem in str(caught.value)


def test_sizes_are_bounded() -> None:
    with pytest.raises(ConfigError, match="a policy file holds at most"):
        parse_policy(b"#" * (POLICY_MAX_FILE_BYTES + 1), source="p", home="/h")
    many = ", ".join(['"a"'] * (POLICY_MAX_RULES + 1))
    with pytest.raises(ConfigError, match=f"at most {POLICY_MAX_RULES}"):
        parse_policy(f"[exec]\ndeny = [{many}]".encode(), source="p", home="/h")


# -- programs -------------------------------------------------------------------------------


def program(
    asked: str, found: str | None, real: str | None = None, trusted: bool = True
) -> Program:
    return Program(asked, found, real or found, trusted)


def test_a_deny_name_matches_what_was_asked_found_and_linked_to() -> None:
    rules = ExecRules(deny=("ssh",))
    for case in (
        program("ssh", "/usr/bin/ssh"),
        program("/usr/bin/ssh", "/usr/bin/ssh"),
        program("./x", "/tmp/x", "/usr/bin/ssh", trusted=False),
        program("ssh", None),  # not even found: still refused, by name
    ):
        refusal = rules.check(case)
        assert refusal is not None
        assert refusal.message == f"exec.deny ssh: {case.asked}"
    assert rules.check(program("scp", "/usr/bin/scp")) is None


def test_a_deny_path_matches_the_file_before_or_after_links() -> None:
    rules = ExecRules(deny=("/usr/bin/python3.11",))
    assert rules.check(program("python3", "/usr/bin/python3", "/usr/bin/python3.11")) is not None
    assert rules.check(program("python3.11", "/usr/bin/python3.11")) is not None
    assert rules.check(program("python3", "/opt/py/python3")) is None


def test_an_allow_name_only_matches_in_the_workers_own_path() -> None:
    rules = ExecRules(allow=("pytest",))
    assert rules.check(program("pytest", "/usr/bin/pytest")) is None
    assert rules.check(program("/usr/bin/pytest", "/usr/bin/pytest")) is None
    planted = program("pytest", "/home/ann/evil/pytest", trusted=False)
    refusal = rules.check(planted)
    assert refusal is not None and refusal.rule == "exec.allow (no rule matches)"
    assert rules.check(program("pytest", None)) is not None  # nothing found: nothing allowed


def test_an_allow_path_matches_the_file_before_or_after_links() -> None:
    rules = ExecRules(allow=("/usr/bin/git",))
    assert rules.check(program("git", "/usr/bin/git", trusted=False)) is None
    assert rules.check(program("g", "/tmp/g", "/usr/bin/git", trusted=False)) is None
    assert rules.check(program("git", "/usr/local/bin/git")) is not None


def test_deny_wins_over_allow() -> None:
    rules = ExecRules(allow=("/usr/bin/env", "env"), deny=("env",))
    refusal = rules.check(program("env", "/usr/bin/env"))
    assert refusal is not None and refusal.rule == "exec.deny env"


def test_program_in() -> None:
    assert program_in(["/usr/bin", "/bin/"], "/usr/bin/env")
    assert program_in(["/bin/"], "/bin/sh")
    assert not program_in(["/usr/bin"], "/usr/bin/sub/env")
    assert not program_in(["", "."], "/home/ann/env")  # relative PATH entries never count


# -- files and services ---------------------------------------------------------------------


def test_roots_match_whole_path_components() -> None:
    rules = FilesRules(("/srv/data", "/"))
    assert rules.check("/anything") is None
    rules = FilesRules(("/srv/data",))
    assert rules.check("/srv/data") is None
    assert rules.check("/srv/data/x/y") is None
    assert rules.check("/srv/database") is not None
    assert rules.check("/srv") is not None


def test_services_disabled_by_method_or_group() -> None:
    rules = ServiceRules(("pty", "exec.signal"))
    for method in ("pty", "pty.spawn", "pty.attach", "exec.signal"):
        refusal = rules.check(method)
        assert refusal is not None and refusal.message.endswith(f": {method}")
    for method in ("exec", "exec.wait", "ptyx", "files.read"):
        assert rules.check(method) is None


# -- properties -------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_config_error(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_policy(data, source="p", home="/h")


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(
    ["allow", "deny", "roots", "disabled", "max_cpu_seconds", "run_as_user", "x"]
)
_tables = st.dictionaries(
    st.sampled_from(["exec", "files", "tunnel", "services", "other"]),
    st.dictionaries(_keys, _values, max_size=3),
    max_size=4,
)


def _toml(document: dict[str, dict[str, object]]) -> bytes | None:
    lines: list[str] = []
    for table, entries in document.items():
        lines.append(f"[{table}]")
        for key, value in entries.items():
            if value is None:
                return None
            text = _literal(value)
            if text is None:
                return None
            lines.append(f"{key} = {text}")
    return "\n".join(lines).encode()


def _literal(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if not isinstance(value, float) or value == value else None
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        parts = [_literal(v) for v in value]
        return None if None in parts else "[" + ", ".join(p for p in parts if p) + "]"
    return None


@given(_tables)
def test_structured_documents_parse_or_raise_config_error(
    document: dict[str, dict[str, object]],
) -> None:
    data = _toml(document)
    if data is None:
        return
    try:
        tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return
    try:
        policy = parse_policy(data, source="p", home="/h")
    except ConfigError:
        return
    policy.summary()  # whatever parsed can be shown
