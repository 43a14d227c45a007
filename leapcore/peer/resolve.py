"""Which worker a person means: a worker named by its id, its name or the start of its id.

Pure (no I/O): the caller lists the candidates (``workers.list`` for
:meth:`~leapcore.peer.hubsession.HubSession.resolve_worker`, the pinned ids for the pin
commands) and :func:`resolve_worker` applies the rule, in this order:

1. an exact id;
2. an exact name (names are unique among an owner's workers; should two carry the same
   name all the same, that is ambiguous);
3. the start of exactly one id, at least :data:`MIN_PREFIX` characters long (like git's
   abbreviated commits; ids are case-sensitive).

Several workers matching at the first rule that matches at all raise
:class:`~leapcore.errors.AmbiguousReference`, listing them; none at all raises
:class:`~leapcore.errors.NotFound`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from ..errors import AmbiguousReference, ConfigError, NotFound

__all__ = ["MIN_PREFIX", "resolve_worker"]

#: The shortest start of an id that :func:`resolve_worker` takes as a prefix.
MIN_PREFIX: Final = 4

W = TypeVar("W", bound=Mapping[str, Any])


def resolve_worker(ref: str, workers: Iterable[W], *, what: str = "worker") -> W:
    """The one worker of ``workers`` (mappings with ``"id"`` and ``"name"``) that ``ref``
    means, by the module's rule. ``what`` names the kind of thing in messages."""
    if not ref:
        raise ConfigError(f"an empty {what} reference: give an id, a name or an id prefix")
    candidates = list(workers)
    by_id = [w for w in candidates if w["id"] == ref]
    if by_id:
        return by_id[0]
    by_name = [w for w in candidates if w.get("name") and w["name"] == ref]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        raise _ambiguous(f"{len(by_name)} {what}s are called {ref!r}", by_name, what)
    if len(ref) >= MIN_PREFIX:
        by_prefix = [w for w in candidates if str(w["id"]).startswith(ref)]
        if len(by_prefix) == 1:
            return by_prefix[0]
        if by_prefix:
            raise _ambiguous(f"{len(by_prefix)} {what} ids start with {ref!r}", by_prefix, what)
        raise NotFound(f"no {what} has the id or name {ref!r}, and no {what} id starts with it")
    raise NotFound(
        f"no {what} has the id or name {ref!r} (an id prefix needs at least {MIN_PREFIX} "
        "characters)"
    )


def _ambiguous(summary: str, matches: Sequence[Mapping[str, Any]], what: str) -> AmbiguousReference:
    pairs = tuple((str(w["id"]), str(w.get("name") or "")) for w in matches)
    lines = "".join(f"\n  {_printable(wid)}  {_printable(name) or '-'}" for wid, name in pairs)
    return AmbiguousReference(
        f"ambiguous {what} reference: {summary}:{lines}\ngive the whole id, or more of it",
        pairs,
    )


def _printable(text: str) -> str:
    """``text`` with non-printable characters escaped (names come from workers and must not
    drive a terminal)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
