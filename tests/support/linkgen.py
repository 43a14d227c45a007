"""Hypothesis strategies for link messages (shared by the link tests and the fuzz suite)."""

from __future__ import annotations

import typing
from typing import Any

import attrs
from hypothesis import strategies as st

from leapcore.proto.link_codec import CONTROL_TYPES, ChannelData, LinkMessage
from leapcore.proto.link_fields import PRINTABLE_FIELDS

U64 = st.integers(0, 2**64 - 1)
TEXT = st.text(max_size=24)
#: Names, ids, versions and labels must be printable (link_fields' limits).
PRINTABLE = st.text(max_size=24).filter(str.isprintable)
#: A capability name (1..64 characters of [A-Za-z0-9_.-]).
CAPABILITY = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def _for_type(tp: Any, name: str = "") -> st.SearchStrategy[Any]:
    if tp is int:
        return U64
    if tp is str:
        return PRINTABLE if name in PRINTABLE_FIELDS else TEXT
    if tp is bytes:
        return st.binary(max_size=64)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is dict and args == (str, str):
        return st.dictionaries(PRINTABLE.filter(bool), PRINTABLE, max_size=3)
    if origin is dict:
        return st.dictionaries(TEXT, JSON, max_size=3)
    if origin is list and args == (str,) and name == "capabilities":
        return st.lists(CAPABILITY, max_size=4)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return st.none() | _for_type(inner, name)
    raise NotImplementedError(tp)


def control_messages(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _for_type(hints[f.name], f.name) for f in attrs.fields(cls)})


DATA = st.builds(
    ChannelData,
    channel_id=U64,
    correlation_id=U64,
    flags=st.integers(0, 255),
    ciphertext=st.binary(max_size=300),
)
MESSAGES: st.SearchStrategy[LinkMessage] = st.one_of(
    DATA, *[control_messages(cls) for cls in CONTROL_TYPES.values()]
)
