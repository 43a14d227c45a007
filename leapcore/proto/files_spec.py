"""File copy's wire payloads (sans-IO: no files, no clock): the worker's ``files`` methods
(docs/protocol.md, 4.14; the service is :mod:`leapcore.worker.files`, the client
:mod:`leapcore.peer.files`).

Every payload is a UTF-8 JSON object, decoded strictly: an unknown, missing or mistyped
field, a path with a NUL byte, an empty path or one over
:data:`~leapcore.proto.limits.FILES_MAX_PATH` bytes is
:class:`~leapcore.errors.InvalidMessage` (the worker answers ``invalid_argument``). A
``"path"`` is absolute, or relative to the worker's home directory; with ``"root"`` (writes
and ``files.mkdir`` of a tree copy) it is instead a name *under* ``root``: its components
(split on ``/``) must each be non-empty and neither ``.`` nor ``..``, and it must not be
absolute -- otherwise :class:`~leapcore.errors.FileTransferFailed` ``path_escapes``
(:func:`split_relative`, which the client also applies to the names a worker lists).

* ``files.stat`` (RPC) ``{"path"}`` -> :func:`encode_stat` ``{"type", "size", "mode",
  "mtime"}`` (``type``: ``file``, ``dir``, ``symlink`` or ``other``; symlinks followed).
* ``files.list`` (server stream) ``{"path"}`` -> items ``{"entries": [{"path": NAME,
  "type", "size", "mode", "mtime"}, ...]}``, at most
  :data:`~leapcore.proto.limits.FILES_LIST_BATCH` entries each: every entry below the
  directory, parents before their contents, symlinks listed (``symlink``), never followed.
* ``files.read`` (byte stream) ``{"path"}``: the worker sends the file's bytes, then EOF.
* ``files.write`` (byte stream) ``{"path", "root"?, "mode"?, "size"?, "mtime"?}``: the
  opener sends the bytes, then EOF; the worker answers EOF once the file is in place.
* ``files.mkdir`` (RPC) ``{"path", "root"?, "mode"?}`` -> ``{}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import attrs

from ..errors import FileTransferFailed, InvalidMessage
from .exec_spec import json_object
from .limits import FILES_LIST_BATCH, FILES_MAX_PATH

__all__ = [
    "FILE_REASONS",
    "FILE_TYPES",
    "LIST_METHOD",
    "MKDIR_METHOD",
    "PATH_ESCAPES",
    "READ_METHOD",
    "STAT_METHOD",
    "WRITE_METHOD",
    "Entry",
    "FileType",
    "PathRequest",
    "decode_entries",
    "decode_mkdir",
    "decode_path",
    "decode_stat",
    "decode_write",
    "encode_entries",
    "encode_mkdir",
    "encode_path",
    "encode_stat",
    "encode_write",
    "split_relative",
]

STAT_METHOD: Final = "files.stat"
LIST_METHOD: Final = "files.list"
READ_METHOD: Final = "files.read"
WRITE_METHOD: Final = "files.write"
MKDIR_METHOD: Final = "files.mkdir"

#: The reason code of a name that would leave its root (or a symlink on the way).
PATH_ESCAPES: Final = "path_escapes"
#: Every code a ``files`` method answers with (besides the channel's own, such as
#: ``permission_denied`` for a caller who is not the owner), and what it means.
FILE_REASONS: Final[dict[str, str]] = {
    "not_found": "no such file or directory",
    "permission_denied": "permission denied",
    "is_a_directory": "is a directory",
    "not_a_directory": "not a directory",
    PATH_ESCAPES: "the name leaves its root, or a symlink is on the way",
    "invalid_argument": "malformed request",
    "no_space": "no space left on the device",
    "io_error": "input/output error",
    "denied_by_policy": "the worker's policy (files.roots) does not allow it",
}
FILE_TYPES: Final = ("file", "dir", "symlink", "other")

FileType = Literal["file", "dir", "symlink", "other"]


@attrs.frozen
class PathRequest:
    """A ``files`` request: ``path`` (under ``root`` if that is given), and for writes and
    mkdir the permission bits ``mode``, the ``size`` promised and the ``mtime`` to set."""

    path: str
    root: str | None = None
    mode: int | None = None
    size: int | None = None
    mtime: float | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        """``path``'s components under ``root`` (checked: :func:`split_relative`)."""
        return split_relative(self.path)


@attrs.frozen
class Entry:
    """One file system entry: a ``files.stat`` answer (``path`` ``""``) or a listed name."""

    type: FileType
    size: int
    mode: int
    mtime: float
    path: str = ""


def _check_path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"{what} must be a non-empty string")
    if "\0" in value:
        raise InvalidMessage(f"{what} contains a NUL byte")
    if len(value.encode("utf-8", "surrogateescape")) > FILES_MAX_PATH:
        raise InvalidMessage(f"{what} is longer than {FILES_MAX_PATH} bytes")
    return value


def split_relative(name: str) -> tuple[str, ...]:
    """The components of ``name``, a path that must stay under its root: not absolute, no
    empty, ``.`` or ``..`` component, no NUL (else :class:`FileTransferFailed`
    ``path_escapes``)."""
    if not isinstance(name, str) or not name:
        raise FileTransferFailed(PATH_ESCAPES, "an empty name")
    shown = repr(name[:200])
    if "\0" in name:
        raise FileTransferFailed(PATH_ESCAPES, f"{shown} contains a NUL byte")
    if name.startswith("/"):
        raise FileTransferFailed(PATH_ESCAPES, f"{shown} is absolute")
    parts = tuple(name.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise FileTransferFailed(PATH_ESCAPES, f"{shown} has a {part or 'empty'!r} component")
    return parts


def _check_int(value: Any, what: str, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMessage(f"{what} must be an integer")
    if value < low or (high is not None and value > high):
        raise InvalidMessage(f"{what} must be in {low}..{high if high is not None else ''}")
    return value


def _check_time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidMessage(f"{what} must be a finite number (Unix seconds)")
    return float(value)


def _fields(data: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InvalidMessage(f"{what}: unknown field(s): {', '.join(unknown)}")
    if "path" not in data:
        raise InvalidMessage(f"{what}: path is required")


def _decode(payload: bytes, what: str, allowed: tuple[str, ...]) -> PathRequest:
    data = json_object(payload, what)
    _fields(data, allowed, what)
    path = _check_path(data["path"], "path")
    root = None if data.get("root") is None else _check_path(data["root"], "root")
    mode = None if data.get("mode") is None else _check_int(data["mode"], "mode", 0, 0o7777)
    size = None if data.get("size") is None else _check_int(data["size"], "size", 0, None)
    mtime = None if data.get("mtime") is None else _check_time(data["mtime"], "mtime")
    request = PathRequest(path, root, mode, size, mtime)
    if root is not None:
        split_relative(path)
    return request


def _encode(request: PathRequest, allowed: tuple[str, ...], what: str) -> bytes:
    data = {k: v for k, v in attrs.asdict(request).items() if v is not None and k in allowed}
    extra = {k for k, v in attrs.asdict(request).items() if v is not None} - set(allowed)
    if extra:
        raise InvalidMessage(f"{what} takes no {', '.join(sorted(extra))}")
    payload = json.dumps(data, separators=(",", ":")).encode()
    _decode(payload, what, allowed)  # the checks the worker makes
    return payload


_PATH_ONLY: Final = ("path",)
_WRITE: Final = ("path", "root", "mode", "size", "mtime")
_MKDIR: Final = ("path", "root", "mode")


def encode_path(path: str) -> bytes:
    """The ``{"path"}`` payload of ``files.stat``, ``files.list`` and ``files.read``."""
    return _encode(PathRequest(path), _PATH_ONLY, "files")


def decode_path(payload: bytes) -> str:
    return _decode(payload, "files", _PATH_ONLY).path


def encode_write(request: PathRequest) -> bytes:
    return _encode(request, _WRITE, WRITE_METHOD)


def decode_write(payload: bytes) -> PathRequest:
    return _decode(payload, WRITE_METHOD, _WRITE)


def encode_mkdir(request: PathRequest) -> bytes:
    return _encode(request, _MKDIR, MKDIR_METHOD)


def decode_mkdir(payload: bytes) -> PathRequest:
    return _decode(payload, MKDIR_METHOD, _MKDIR)


def _entry_dict(entry: Entry, with_path: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": entry.type,
        "size": entry.size,
        "mode": entry.mode,
        "mtime": entry.mtime,
    }
    if with_path:
        data["path"] = entry.path
    return data


def _entry(data: Any, with_path: bool) -> Entry:
    keys = {"type", "size", "mode", "mtime"} | ({"path"} if with_path else set())
    if not isinstance(data, Mapping) or set(data) != keys:
        raise InvalidMessage(f"an entry is an object of exactly {', '.join(sorted(keys))}")
    kind = data["type"]
    if kind not in FILE_TYPES:
        raise InvalidMessage(f"type must be one of {', '.join(FILE_TYPES)}")
    size = _check_int(data["size"], "size", 0, None)
    mode = _check_int(data["mode"], "mode", 0, 0o7777)
    mtime = _check_time(data["mtime"], "mtime")
    path = _check_path(data["path"], "path") if with_path else ""
    return Entry(kind, size, mode, mtime, path)


def encode_stat(entry: Entry) -> bytes:
    return json.dumps(_entry_dict(entry, False), separators=(",", ":")).encode()


def decode_stat(payload: bytes) -> Entry:
    return _entry(json_object(payload, STAT_METHOD + " answer"), False)


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """One ``files.list`` item (at most :data:`FILES_LIST_BATCH` entries)."""
    items = [_entry_dict(entry, True) for entry in entries]
    if len(items) > FILES_LIST_BATCH:
        raise InvalidMessage(f"a files.list item holds at most {FILES_LIST_BATCH} entries")
    return json.dumps({"entries": items}, separators=(",", ":")).encode()


def decode_entries(payload: bytes) -> list[Entry]:
    """The entries of one ``files.list`` item (their names are checked by the caller with
    :func:`split_relative`)."""
    data = json_object(payload, LIST_METHOD + " item")
    if set(data) != {"entries"} or not isinstance(data["entries"], list):
        raise InvalidMessage('a files.list item is {"entries": [...]}')
    if len(data["entries"]) > FILES_LIST_BATCH:
        raise InvalidMessage(f"a files.list item holds at most {FILES_LIST_BATCH} entries")
    return [_entry(item, True) for item in data["entries"]]
