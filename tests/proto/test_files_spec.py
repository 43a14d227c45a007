"""The ``files`` payloads: round trips, strict refusals, and the names a tree copy accepts."""

from __future__ import annotations

import json

import pytest

from leapcore.errors import FileTransferFailed, InvalidMessage
from leapcore.proto.files_spec import (
    Entry,
    PathRequest,
    decode_entries,
    decode_mkdir,
    decode_path,
    decode_stat,
    decode_write,
    encode_entries,
    encode_mkdir,
    encode_path,
    encode_stat,
    encode_write,
    split_relative,
)
from leapcore.proto.limits import FILES_LIST_BATCH, FILES_MAX_PATH


def test_round_trips() -> None:
    assert decode_path(encode_path("/etc/hosts")) == "/etc/hosts"
    write = PathRequest("a/b.txt", "/srv", 0o640, 12, 1700000000.5)
    assert decode_write(encode_write(write)) == write
    plain = PathRequest("relative/name")
    assert decode_write(encode_write(plain)) == plain
    mkdir = PathRequest("x/y", "/srv", 0o755)
    assert decode_mkdir(encode_mkdir(mkdir)) == mkdir
    entry = Entry("file", 5, 0o644, 12.25)
    assert decode_stat(encode_stat(entry)) == entry
    entries = [Entry("dir", 0, 0o755, 1.0, "d"), Entry("symlink", 0, 0o777, 2.0, "d/l")]
    assert decode_entries(encode_entries(entries)) == entries


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"path": ""}',
        b'{"path": 5}',
        b'{"path": "a\\u0000b"}',
        b'{"path": "a", "extra": 1}',
        b'{"path": "a", "mode": "0644"}',
        b'{"path": "a", "mode": true}',
        b'{"path": "a", "mode": 70000}',
        b'{"path": "a", "size": -1}',
        b'{"path": "a", "mtime": "now"}',
        b'{"path": "a", "root": ""}',
        json.dumps({"path": "x" * (FILES_MAX_PATH + 1)}).encode(),
    ],
)
def test_malformed_writes_are_invalid(payload: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode_write(payload)


def test_fields_belong_to_their_method() -> None:
    with pytest.raises(InvalidMessage, match="unknown"):
        decode_path(b'{"path": "a", "mode": 1}')
    with pytest.raises(InvalidMessage, match="unknown"):
        decode_mkdir(b'{"path": "a", "size": 1}')
    with pytest.raises(InvalidMessage):
        encode_path("a\0b")
    with pytest.raises(InvalidMessage, match="takes no"):
        encode_mkdir(PathRequest("a", size=3))


@pytest.mark.parametrize("name", ["..", "../x", "a/../../b", "/etc/passwd", "a//b", "./a", "a/"])
def test_names_under_a_root_cannot_escape(name: str) -> None:
    with pytest.raises(FileTransferFailed) as caught:
        split_relative(name)
    assert caught.value.reason == "path_escapes"
    payload = json.dumps({"path": name, "root": "/srv"}).encode()
    with pytest.raises(FileTransferFailed):
        decode_write(payload)
    # Without a root the same path is a plain path (absolute or from the home directory).
    assert decode_write(json.dumps({"path": name}).encode()).path == name


def test_nul_in_a_relative_name_escapes() -> None:
    with pytest.raises(FileTransferFailed):
        split_relative("a\0b")
    assert split_relative("a/b c/..d") == ("a", "b c", "..d")


@pytest.mark.parametrize(
    "item",
    [
        {"entries": [{"path": "a", "type": "fifo", "size": 0, "mode": 0, "mtime": 0}]},
        {"entries": [{"path": "a", "type": "file", "size": 0, "mode": 0}]},
        {"entries": [{"type": "file", "size": 0, "mode": 0, "mtime": 0}]},
        {"entries": "x"},
        {"entries": [], "more": True},
    ],
)
def test_malformed_list_items_are_invalid(item: object) -> None:
    with pytest.raises(InvalidMessage):
        decode_entries(json.dumps(item).encode())


def test_list_items_are_bounded() -> None:
    many = [Entry("file", 0, 0o644, 0.0, f"f{i}") for i in range(FILES_LIST_BATCH + 1)]
    with pytest.raises(InvalidMessage):
        encode_entries(many)
    raw = {"entries": [{"path": e.path, "type": "file", "size": 0, "mode": 0, "mtime": 0}
                       for e in many]}  # fmt: skip
    with pytest.raises(InvalidMessage):
        decode_entries(json.dumps(raw).encode())
