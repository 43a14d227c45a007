"""Strict decoding of untrusted records (JSON objects from the network or files).

One converter, used everywhere leapcore structures untrusted data into attrs
classes: unknown keys, missing keys and mistyped values all raise
:class:`~leapcore.errors.RecordError` (or a subclass the caller names) with a
message that says which field — never a ``KeyError`` or ``TypeError``.
cattrs on its own would coerce ``5`` into ``"5"``; the hooks here refuse.
"""

from __future__ import annotations

import base64
import binascii
import re
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from .errors import LeapcoreError, RecordError

__all__ = ["b64decode_strict", "b64encode", "structure_strict", "unstructure"]

T = TypeVar("T")


def _exact(kind: type) -> Any:
    def hook(value: object, _type: object) -> object:
        # bool is an int subclass; a JSON true is never a number here.
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return hook


def _float_hook(value: object, _type: object) -> float:
    if type(value) not in (int, float):
        raise TypeError(f"expected number, got {type(value).__name__}")
    return float(value)  # type: ignore[arg-type]


_converter = cattrs.Converter(forbid_extra_keys=True)
for _kind in (str, int, bool):
    _converter.register_structure_hook(_kind, _exact(_kind))
_converter.register_structure_hook(float, _float_hook)

# Containers: cattrs would turn "ab" into ["a", "b"] or call .items() on a list. Check the
# JSON type first, then let the converter's own hook structure the elements.
_CONTAINERS: dict[Any, type] = {list: list, dict: dict}


def _container_hook_factory(cl: Any) -> Any:
    kind = _CONTAINERS[typing.get_origin(cl)]
    # The cols factories build a hook without registering it (gen_structure_mapping would
    # register its result for ``cl`` and so bypass this check from then on).
    inner: Callable[[Any, Any], Any] = (
        mapping_structure_factory(cl, _converter)
        if kind is dict
        else list_structure_factory(cl, _converter)
    )

    def hook(value: object, _type: object) -> object:
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return inner(value, _type)

    return hook


_converter.register_structure_hook_factory(
    lambda cl: typing.get_origin(cl) in _CONTAINERS, _container_hook_factory
)


def _record_hook_factory(cl: Any) -> Any:
    """attrs classes: a nested record must be a JSON object before cattrs looks inside."""
    inner = make_dict_structure_fn(cl, _converter, _cattrs_forbid_extra_keys=True)

    def hook(value: object, _type: object) -> object:
        if type(value) is not dict:
            raise TypeError(f"expected object, got {type(value).__name__}")
        return inner(value, _type)

    return hook


_converter.register_structure_hook_factory(attrs.has, _record_hook_factory)
_WHERE = re.compile(r"@ attribute (\w+)|@ key (.+)|@ index (\d+)")


def b64encode(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str, *, field: str) -> bytes:
    """Decode standard padded base64, refusing any other alphabet or stray characters."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise RecordError(f"field {field!r} is not valid standard base64") from None


def _where(note: str) -> str:
    """ "Structuring class R @ attribute x" -> "field 'x'"; likewise keys and indexes."""
    m = _WHERE.search(note)
    if m is None:
        return note.removeprefix("Structuring ").strip()
    attribute, key, index = m.groups()
    if attribute is not None:
        return f"field {attribute!r}"
    return f"key {key}" if key is not None else f"item {index}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        return "unknown field(s) " + ", ".join(sorted(repr(k) for k in exc.extra_fields))
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        # Notes read "Structuring class R @ attribute x" or, inside a list or dict,
        # "Structuring mapping value @ key 'x'" / "Structuring list[int] @ index 1".
        parts = []
        for sub in exc.exceptions:
            note = getattr(sub, "__notes__", None) or []
            where = _where(note[0]) if note else ""
            if isinstance(sub, KeyError):
                parts.append(f"missing {where or 'field'}")
            else:
                parts.append(f"{where}: {_describe(sub)}" if where else _describe(sub))
        return "; ".join(parts) or str(exc)
    return str(exc)


def structure_strict(
    data: object, cls: type[T], *, what: str, error: type[LeapcoreError] = RecordError
) -> T:
    """Structure ``data`` into ``cls`` or raise ``error`` naming ``what`` and the bad field."""
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object, got {type(data).__name__}")
    try:
        return _converter.structure(data, cls)
    except LeapcoreError:
        raise
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as exc:
        raise error(f"invalid {what}: {_describe(exc)}") from None


def unstructure(obj: object) -> Any:
    return _converter.unstructure(obj)
