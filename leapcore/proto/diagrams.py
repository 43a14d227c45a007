"""Mermaid state diagrams drawn from leapcore's transition tables.

``docs/protocol.md`` shows each protocol state machine as a diagram generated
from the very table the code uses, between ``<!-- diagram:NAME -->`` and
``<!-- /diagram -->`` markers. ``python -m leapcore.proto.diagrams docs/protocol.md``
rewrites those blocks in place; the test suite fails when they are stale.
"""

from __future__ import annotations

import enum
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DIAGRAMS", "render", "update_file"]

Edge = tuple[Any, str, Any]  # (from state, label, to state)


def _name(state: Any) -> str:
    value = state.value if isinstance(state, enum.Enum) else str(state)
    return re.sub(r"[^A-Za-z0-9_]", "_", str(value))


def render(edges: Iterable[Edge], *, start: Any | None = None) -> str:
    """A ``stateDiagram-v2``; edges between the same two states are merged into one label."""
    merged: dict[tuple[str, str], list[str]] = {}
    for source, label, target in edges:
        labels = merged.setdefault((_name(source), _name(target)), [])
        if label not in labels:
            labels.append(label)
    lines = ["stateDiagram-v2"]
    if start is not None:
        lines.append(f"    [*] --> {_name(start)}")
    for (source, target), labels in merged.items():
        lines.append(f"    {source} --> {target}: {', '.join(labels)}")
    return "\n".join(lines)


def _link(role_value: str) -> Callable[[], str]:
    def draw() -> str:
        from .link_state import LINK_TRANSITIONS, LinkState

        edges = [
            (state, f"{way.value} {kind}", target)
            for (role, state, way, kind), target in LINK_TRANSITIONS.items()
            if role.value == role_value and kind != "error"
        ]
        # An error record, either way, closes the link from every live state: said in prose.
        return render(edges, start=LinkState.START)

    return draw


def _handshake(role_value: str) -> Callable[[], str]:
    def draw() -> str:
        from ..crypto.handshake import TRANSITIONS, HandshakeState

        edges = [
            (state, op.value, target)
            for (role, state, op), target in TRANSITIONS.items()
            if role == role_value
        ]
        return render(edges, start=HandshakeState.START)

    return draw


def _pairs(table_path: str, start: str) -> Callable[[], str]:
    """A table keyed by (state, event) -> state, named as 'module:ATTRIBUTE'."""

    def draw() -> str:
        import importlib

        module, attribute = table_path.split(":")
        mod = importlib.import_module(f"leapcore.{module}")
        table: Mapping[tuple[Any, Any], Any] = getattr(mod, attribute)
        edges = [
            (state, event.value if isinstance(event, enum.Enum) else str(event), target)
            for (state, event), target in table.items()
        ]
        first = next(s for (s, _e) in table if _name(s) == start)
        return render(edges, start=first)

    return draw


#: Diagram name (as used in the markers) -> function drawing it.
DIAGRAMS: dict[str, Callable[[], str]] = {
    "handshake-initiator": _handshake("initiator"),
    "handshake-responder": _handshake("responder"),
    "rekey-initiator": _pairs("crypto.rekey_policy:INITIATOR_TRANSITIONS", "idle"),
    "link-worker": _link("worker"),
    "link-client": _link("client"),
    "link-hub": _link("hub"),
    "channel-rpc": _pairs("proto.channel_streams:RPC_TRANSITIONS", "idle"),
    "channel-server-stream": _pairs("proto.channel_streams:SERVER_STREAM_TRANSITIONS", "idle"),
    "channel-byte-stream": _pairs("proto.channel_streams:BYTE_STREAM_TRANSITIONS", "idle"),
}

_BLOCK = re.compile(
    r"(<!-- diagram:(?P<name>[\w-]+) -->\n)```mermaid\n.*?```\n(<!-- /diagram -->)", re.DOTALL
)


def update_text(text: str) -> str:
    """Regenerate every marked diagram in ``text``; unknown names raise ``KeyError``."""

    def fill(match: re.Match[str]) -> str:
        body = DIAGRAMS[match["name"]]()
        return f"{match[1]}```mermaid\n{body}\n```\n{match[3]}"

    return _BLOCK.sub(fill, text)


def update_file(path: Path) -> bool:
    """Rewrite ``path`` in place; True when anything changed."""
    old = path.read_text()
    new = update_text(old)
    if new != old:
        path.write_text(new)
    return new != old


def main(argv: list[str]) -> int:
    for name in argv or ["docs/protocol.md"]:
        changed = update_file(Path(name))
        print(f"{name}: {'updated' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
