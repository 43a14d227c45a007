"""The worker's policy: what its owner may make it do (sans-IO: parsing and matching only;
the file is read by :mod:`leapcore.store.policyfile`, the rules applied by the services).

A policy is a TOML document (``policy.toml`` in the worker's data directory, or
``--policy FILE``); every table and key is optional, and an unknown one is an error::

    [exec]
    allow = ["pytest", "/usr/bin/git"]  # argv[0] names or absolute paths (absent: any)
    deny = ["ssh"]                      # names or absolute paths; always wins over allow
    max_cpu_seconds = 60                # RLIMIT_CPU of every process started; 0 = inherit
    max_memory_mb = 512                 # RLIMIT_AS
    max_open_files = 256                # RLIMIT_NOFILE
    run_as_user = "builder"             # start processes as this user (the worker: root)

    [files]
    roots = ["~/work", "/tmp/scratch"]  # what files.* may touch (absent: anything)

    [tunnel]
    allow = ["10.0.0.0/8:5432"]         # destination rules, as the tunnel_allow setting
    deny = ["10.0.0.1"]

    [services]
    disabled = ["pty", "tcp"]           # methods (or whole groups: "pty" = pty.*) refused

No file means no rule: everything the worker's user may do is allowed to its owner, as
sshd allows by default. An explicitly empty list means what it says: ``exec.allow = []``
allows no program and ``files.roots = []`` no path.

**Programs.** The worker finds the program ``argv[0]`` names as exec would (a name
through the ``PATH`` the process gets) and checks it before starting anything
(:class:`Program`, :meth:`ExecRules.check`):

* a deny name matches the name asked for and the base name of the program found, before
  and after symlinks are resolved (``deny = ["ssh"]`` refuses ``/usr/bin/ssh`` and a link
  to it); a deny path matches the program found, before or after symlinks;
* an allow name matches only a program found in one of the worker's own ``PATH``
  directories (``allow = ["pytest"]`` never allows ``~/evil/pytest``); an allow path
  matches the program found, before or after symlinks;
* the process is started from the very file that was checked.

The check sees the program the worker starts: a shell or an interpreter that is allowed
runs whatever it is told to, so an allow list that means something names neither.

A refusal's message is ``<rule>: <what>`` (:class:`~.tunnel_policy.Refusal`), answered
with the error code ``denied_by_policy``; the caller sees ``denied_by_policy: <rule>: <what>``, e.g.
``denied_by_policy: exec.deny ssh: ssh``.
"""

from __future__ import annotations

import os.path
import posixpath
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from ..errors import ConfigError
from .limits import POLICY_MAX_FILE_BYTES, POLICY_MAX_RULE_LENGTH, POLICY_MAX_RULES
from .tunnel_policy import DENIED_BY_POLICY, Refusal, TunnelPolicy

__all__ = [
    "ALLOW_EVERYTHING",
    "DENIED_BY_POLICY",
    "ExecRules",
    "FilesRules",
    "Program",
    "Refusal",
    "ServiceRules",
    "WorkerPolicy",
    "parse_policy",
    "program_in",
]

_PROGRAM_NAME: Final = re.compile(r"[^/\x00-\x1f]+")
_SERVICE_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: The largest value each resource limit takes (its unit: seconds, MiB, descriptors).
_LIMIT_MAX: Final = {
    "max_cpu_seconds": 10**9,
    "max_memory_mb": 2**40,
    "max_open_files": 2**30,
}


def _refuse(rule: str, what: str) -> Refusal:
    return Refusal(rule, f"{rule}: {what}")


@attrs.frozen
class Program:
    """The program a process would run: ``asked`` (argv[0]), ``found`` (the file exec would
    run, absolute; None when there is none), ``real`` (``found`` with symlinks resolved)
    and ``trusted`` (``found`` lies in one of the worker's own ``PATH`` directories)."""

    asked: str
    found: str | None = None
    real: str | None = None
    trusted: bool = False

    def names(self) -> set[str]:
        return {posixpath.basename(p) for p in (self.asked, self.found, self.real) if p}

    def paths(self) -> set[str]:
        return {p for p in (self.found, self.real) if p}


@attrs.frozen
class ExecRules:
    """``[exec]``: which programs may run, and the limits every process gets."""

    allow: tuple[str, ...] | None = None
    deny: tuple[str, ...] = ()
    max_cpu_seconds: int = 0
    max_memory_mb: int = 0
    max_open_files: int = 0
    run_as_user: str | None = None

    @property
    def restricts(self) -> bool:
        """Whether programs are checked at all (an allow or a deny list)."""
        return self.allow is not None or bool(self.deny)

    def check(self, program: Program) -> Refusal | None:
        """Whether ``program`` may run (None) or why not."""
        names, paths = program.names(), program.paths()
        for rule in self.deny:
            if rule in (paths if rule.startswith("/") else names):
                return _refuse(f"exec.deny {rule}", program.asked)
        if self.allow is None:
            return None
        for rule in self.allow:
            if rule.startswith("/"):
                if rule in paths:
                    return None
            elif program.trusted and program.found and posixpath.basename(program.found) == rule:
                return None
        return _refuse("exec.allow (no rule matches)", program.asked)


@attrs.frozen
class FilesRules:
    """``[files]``: the directories ``files.*`` may touch (None: any)."""

    roots: tuple[str, ...] | None = None

    def check(self, path: str) -> Refusal | None:
        """Whether ``path`` (absolute, symlinks resolved) lies under a root."""
        if self.roots is None:
            return None
        for root in self.roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return None
        return _refuse("files.roots (outside every root)", path)


@attrs.frozen
class ServiceRules:
    """``[services]``: methods refused outright (an entry names a method or a group)."""

    disabled: tuple[str, ...] = ()

    def check(self, method: str) -> Refusal | None:
        for entry in self.disabled:
            if method == entry or method.startswith(entry + "."):
                return _refuse(f"services.disabled {entry}", method)
        return None


@attrs.frozen
class WorkerPolicy:
    """A worker's whole policy (:func:`parse_policy`); ``tunnel`` is None when the file
    says nothing about tunnels (the worker's ``tunnel_allow`` / ``tunnel_deny`` settings
    hold then); ``source`` names where it came from (None: no file)."""

    exec: ExecRules = ExecRules()
    files: FilesRules = FilesRules()
    tunnel: TunnelPolicy | None = None
    services: ServiceRules = ServiceRules()
    source: str | None = None

    def summary(self) -> dict[str, Any]:
        """What the policy says, as plain data (``leapcore-worker policy check --json``)."""
        tunnel = self.tunnel
        return {
            "source": self.source,
            "exec": {
                "allow": None if self.exec.allow is None else list(self.exec.allow),
                "deny": list(self.exec.deny),
                "max_cpu_seconds": self.exec.max_cpu_seconds,
                "max_memory_mb": self.exec.max_memory_mb,
                "max_open_files": self.exec.max_open_files,
                "run_as_user": self.exec.run_as_user,
            },
            "files": {"roots": None if self.files.roots is None else list(self.files.roots)},
            "tunnel": None
            if tunnel is None
            else {
                "allow": [rule.text for rule in tunnel.allow],
                "deny": [rule.text for rule in tunnel.deny],
            },
            "services": {"disabled": list(self.services.disabled)},
        }


#: No policy file: everything allowed.
ALLOW_EVERYTHING: Final = WorkerPolicy()


# -- parsing ----------------------------------------------------------------------------------


def _strings(setting: str, value: Any, check: Callable[[str], str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{setting} must be a list of strings, got {_kind(value)}")
    if len(value) > POLICY_MAX_RULES:
        raise ConfigError(f"{setting} has {len(value)} entries; at most {POLICY_MAX_RULES}")
    out: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{setting}[{index}] must be a string, got {_kind(item)}")
        if not item or len(item) > POLICY_MAX_RULE_LENGTH:
            raise ConfigError(f"{setting}[{index}] must be 1..{POLICY_MAX_RULE_LENGTH} characters")
        try:
            out.append(check(item))
        except ValueError as exc:
            raise ConfigError(f"{setting}[{index}] {item!r}: {exc}") from None
    return tuple(out)


def _program_rule(text: str) -> str:
    if text.startswith("/"):
        if "\x00" in text:
            raise ValueError("a path cannot hold NUL")
        return posixpath.normpath(text)
    if not _PROGRAM_NAME.fullmatch(text) or text in (".", ".."):
        raise ValueError("must be a program name (no '/') or an absolute path")
    return text


def _service_rule(text: str) -> str:
    if not _SERVICE_NAME.fullmatch(text) or text.endswith("."):
        raise ValueError("must be a method or group name such as 'pty' or 'exec.signal'")
    if text == "ping":
        raise ValueError("ping is answered by every channel and cannot be disabled")
    return text


def _root_rule(home: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if "\x00" in text:
            raise ValueError("a path cannot hold NUL")
        if text == "~" or text.startswith("~/"):
            text = home + text[1:]
        if not text.startswith("/"):
            raise ValueError("must be an absolute path or start with ~/")
        return posixpath.normpath(text)

    return check


def _limit(setting: str, value: Any) -> int:
    top = _LIMIT_MAX[setting.rpartition(".")[2]]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{setting} must be an integer, got {_kind(value)}")
    if not 0 <= value <= top:
        raise ConfigError(f"{setting} must be 0 (inherit) .. {top}, got {value}")
    return value


def _user(setting: str, value: Any) -> str:
    if not isinstance(value, str) or not _PROGRAM_NAME.fullmatch(value) or ":" in value:
        raise ConfigError(f"{setting} must be a user name, got {value!r}")
    return value


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


_TABLES: Final = {
    "exec": ("allow", "deny", "max_cpu_seconds", "max_memory_mb", "max_open_files", "run_as_user"),
    "files": ("roots",),
    "tunnel": ("allow", "deny"),
    "services": ("disabled",),
}


def _tables(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, table in document.items():
        if name not in _TABLES:
            raise ConfigError(f"unknown table [{name}] (known: {', '.join(_TABLES)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{name} must be a table ([{name}]), got {_kind(table)}")
        for key in table:
            if key not in _TABLES[name]:
                raise ConfigError(
                    f"unknown setting {name}.{key} (known in [{name}]: {', '.join(_TABLES[name])})"
                )
        out[name] = table
    return out


def parse_policy(data: bytes, *, source: str, home: str) -> WorkerPolicy:
    """The policy ``data`` (a TOML document) says; ``source`` names it in errors and in
    the result, ``home`` is what ``~`` in ``files.roots`` means. Every problem is a
    :class:`~leapcore.errors.ConfigError` ``<source>: <what is wrong>``."""
    try:
        return _parse(data, source=source, home=home)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse(data: bytes, *, source: str, home: str) -> WorkerPolicy:
    if len(data) > POLICY_MAX_FILE_BYTES:
        raise ConfigError(f"{len(data)} bytes; a policy file holds at most {POLICY_MAX_FILE_BYTES}")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    tables = _tables(document)
    section = tables.get("exec", {})
    exec_rules = ExecRules(
        allow=None
        if "allow" not in section
        else _strings("exec.allow", section["allow"], _program_rule),
        deny=_strings("exec.deny", section.get("deny", []), _program_rule),
        max_cpu_seconds=_limit("exec.max_cpu_seconds", section.get("max_cpu_seconds", 0)),
        max_memory_mb=_limit("exec.max_memory_mb", section.get("max_memory_mb", 0)),
        max_open_files=_limit("exec.max_open_files", section.get("max_open_files", 0)),
        run_as_user=None
        if "run_as_user" not in section
        else _user("exec.run_as_user", section["run_as_user"]),
    )
    section = tables.get("files", {})
    roots = section.get("roots")
    files_rules = FilesRules(
        None if roots is None else _strings("files.roots", roots, _root_rule(home))
    )
    tunnel = None
    if "tunnel" in tables:
        section = tables["tunnel"]
        allow = _strings("tunnel.allow", section.get("allow", []), str)
        deny = _strings("tunnel.deny", section.get("deny", []), str)
        tunnel = TunnelPolicy.parse(allow, deny, names=("tunnel.allow", "tunnel.deny"))
    section = tables.get("services", {})
    services = ServiceRules(
        _strings("services.disabled", section.get("disabled", []), _service_rule)
    )
    return WorkerPolicy(exec_rules, files_rules, tunnel, services, source)


def program_in(dirs: Iterable[str], found: str) -> bool:
    """Whether ``found`` (an absolute path) lies directly in one of ``dirs``."""
    parent = os.path.normpath(os.path.dirname(found))
    return any(os.path.normpath(d) == parent for d in dirs if os.path.isabs(d))
