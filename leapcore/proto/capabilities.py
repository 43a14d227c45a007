"""Worker capabilities and the worker filter of ``workers.list`` (sans-IO).

A *capability* is a service group a worker serves, named by the part of a method's name
before its first ``.``: ``exec.wait`` -> ``exec``, ``pty.spawn`` -> ``pty``, ``files.get``
-> ``files``, ``tcp`` -> ``tcp``; an owner's own ``--services`` methods likewise. ``ping``
(every worker answers it) is not one. A worker advertises the sorted names in its
``connect`` (:class:`~leapcore.proto.link_records.Connect`), at most
:data:`~leapcore.proto.limits.MAX_CAPABILITIES` of them, each 1 ..
:data:`~leapcore.proto.limits.MAX_CAPABILITY` characters of ``[A-Za-z0-9_.-]``
(:func:`capability_problem`; the link codec refuses others).

:class:`WorkerFilter` is what a client asks the hub for: labels that must all match,
capabilities that must all be present, and (optionally) whether the worker is online. It
travels as the optional ``workers.list`` parameters ``labels``, ``capabilities`` and
``online`` (:meth:`WorkerFilter.params`, decoded strictly by
:meth:`WorkerFilter.from_params`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from ..errors import ConfigError, LocalError, RecordError
from ..records import structure_strict
from .limits import CONCURRENCY_MAX, MAX_CAPABILITIES, MAX_CAPABILITY

__all__ = [
    "BUSY",
    "NOT_A_CAPABILITY",
    "WorkerFilter",
    "busy_message",
    "capabilities_of",
    "capability_of",
    "capability_problem",
    "parse_concurrency",
    "parse_label",
]

#: The error code of a call refused because its capability is at the worker's
#: concurrency limit (retry later).
BUSY: Final = "busy"
#: Methods every worker answers, which therefore say nothing about it.
NOT_A_CAPABILITY: Final = frozenset({"ping"})
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")


def capability_of(method: str) -> str:
    """The capability (service group) ``method`` belongs to: the part before its first ``.``."""
    return method.partition(".")[0]


def capability_problem(name: object) -> str | None:
    """None when ``name`` is a valid capability name, else what is wrong with it."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not 1 <= len(name) <= MAX_CAPABILITY or _NAME.fullmatch(name) is None:
        return f"{name[:MAX_CAPABILITY]!r} is not 1..{MAX_CAPABILITY} characters of [A-Za-z0-9_.-]"
    return None


def capabilities_of(methods: Iterable[str]) -> list[str]:
    """The sorted capabilities of the methods served: ``ping`` and names that are no valid
    capability name (a custom method called ``"a b"``) left out, at most
    :data:`~leapcore.proto.limits.MAX_CAPABILITIES` (the first ones, in sorted order)."""
    names = {capability_of(m) for m in methods if m not in NOT_A_CAPABILITY}
    valid = sorted(n for n in names if capability_problem(n) is None and n not in NOT_A_CAPABILITY)
    return valid[:MAX_CAPABILITIES]


def parse_label(text: str) -> tuple[str, str]:
    """``"key=value"`` -> ``("key", "value")`` (the value may be empty and contain ``=``);
    :class:`LocalError` when there is no ``=`` or the key is empty."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise LocalError(f"a label is KEY=VALUE, got {text!r}")
    return key, value


@attrs.frozen
class _Params:
    """``workers.list``'s optional filter parameters, as they travel."""

    labels: dict[str, str] | None = None
    capabilities: list[str] | None = None
    online: bool | None = None


@attrs.frozen
class WorkerFilter:
    """Which workers a listing keeps: every label of ``labels`` equal, every capability of
    ``capabilities`` advertised, and ``online`` as asked (None: online or not)."""

    labels: Mapping[str, str] = attrs.Factory(dict)
    capabilities: frozenset[str] = frozenset()
    online: bool | None = None

    @classmethod
    def of(
        cls,
        *,
        labels: Mapping[str, str] | None = None,
        capability: str | Iterable[str] | None = None,
        online: bool | None = None,
    ) -> WorkerFilter:
        """The filter of the library's ``find_workers`` arguments (``capability``: one name
        or several); :class:`LocalError` for a capability that is no valid name."""
        names = [capability] if isinstance(capability, str) else list(capability or ())
        for name in names:
            problem = capability_problem(name)
            if problem is not None:
                raise LocalError(f"capability {problem}")
        return cls(dict(labels or {}), frozenset(names), online)

    def matches(self, labels: Mapping[str, str], capabilities: Iterable[str], online: bool) -> bool:
        if self.online is not None and online != self.online:
            return False
        if any(labels.get(key) != value for key, value in self.labels.items()):
            return False
        return self.capabilities <= set(capabilities)

    def params(self) -> dict[str, Any]:
        """The ``workers.list`` parameters: only the parts that filter anything."""
        params: dict[str, Any] = {}
        if self.labels:
            params["labels"] = dict(self.labels)
        if self.capabilities:
            params["capabilities"] = sorted(self.capabilities)
        if self.online is not None:
            params["online"] = self.online
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> WorkerFilter:
        """The filter ``workers.list`` was given; :class:`RecordError` for an unknown or
        mistyped parameter or a capability that is no valid name."""
        decoded = structure_strict(dict(params), _Params, what="workers.list parameters")
        for name in decoded.capabilities or ():
            problem = capability_problem(name)
            if problem is not None:
                raise RecordError(f"workers.list capabilities: {problem}")
        return cls(decoded.labels or {}, frozenset(decoded.capabilities or []), decoded.online)


def busy_message(capability: str, now: int, limit: int) -> str:
    """What a call refused :data:`BUSY` says."""
    return (
        f"{capability}: {now} in progress, the worker's limit (concurrency {capability} = "
        f"{limit}); retry later"
    )


def parse_concurrency(limits: Mapping[str, object]) -> dict[str, int]:
    """A worker's per-capability concurrency limits (``{"exec": 8, "pty": 4}``: calls of
    that capability's methods in progress at once), checked: each key a capability name,
    each value an integer 1 .. :data:`~leapcore.proto.limits.CONCURRENCY_MAX`.
    :class:`~leapcore.errors.ConfigError` otherwise."""
    out: dict[str, int] = {}
    for name, value in limits.items():
        problem = capability_problem(name)
        if problem is not None or name in NOT_A_CAPABILITY:
            raise ConfigError(f"concurrency: {problem or f'{name!r} is not limited'}")
        if type(value) is not int or not 1 <= value <= CONCURRENCY_MAX:
            raise ConfigError(
                f"concurrency: {name} must be an integer 1..{CONCURRENCY_MAX}, got {value!r}"
            )
        out[name] = value
    return out
