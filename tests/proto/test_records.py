"""records.structure_strict: untrusted JSON into attrs classes, refusing anything loose."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from leapcore.errors import KeyFileError, LeapcoreError, RecordError
from leapcore.records import b64decode_strict, b64encode, structure_strict, unstructure


@attrs.frozen
class Inner:
    port: int


@attrs.frozen
class Record:
    name: str
    count: int
    flag: bool
    ratio: float
    inner: Inner
    tags: dict[str, str]
    note: str | None = None


GOOD = {
    "name": "w1",
    "count": 3,
    "flag": True,
    "ratio": 0.5,
    "inner": {"port": 443},
    "tags": {"k": "v"},
}


def rejects(data, pattern: str, *, error=RecordError) -> str:
    with pytest.raises(LeapcoreError) as info:
        structure_strict(data, Record, what="test record", error=error)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert pattern in message, message
    return message


def test_good_record_and_roundtrip():
    record = structure_strict(GOOD, Record, what="test record")
    assert record == Record("w1", 3, True, 0.5, Inner(443), {"k": "v"})
    assert unstructure(record) == {**GOOD, "note": None}
    assert structure_strict(unstructure(record), Record, what="test record") == record
    # An int is a fine float; optional fields may be given or omitted.
    assert structure_strict({**GOOD, "ratio": 2}, Record, what="x").ratio == 2.0
    assert structure_strict({**GOOD, "note": "n"}, Record, what="x").note == "n"


def test_unknown_field():
    assert rejects({**GOOD, "extra": 1}, "unknown field(s) 'extra'").startswith(
        "invalid test record: "
    )
    rejects({**GOOD, "inner": {"port": 1, "host": "h"}}, "field 'inner': unknown field(s) 'host'")


@pytest.mark.parametrize("field", ["name", "count", "flag", "ratio", "inner", "tags"])
def test_missing_field(field):
    rejects({k: v for k, v in GOOD.items() if k != field}, f"missing field {field!r}")


def test_missing_nested_field():
    rejects({**GOOD, "inner": {}}, "field 'inner': missing field 'port'")


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("name", 5, "field 'name': expected str, got int"),
        ("name", None, "field 'name': expected str, got NoneType"),
        ("name", b"w1", "field 'name': expected str, got bytes"),
        ("count", True, "field 'count': expected int, got bool"),
        ("count", "3", "field 'count': expected int, got str"),
        ("count", 3.0, "field 'count': expected int, got float"),
        ("flag", 1, "field 'flag': expected bool, got int"),
        ("flag", "true", "field 'flag': expected bool, got str"),
        ("ratio", True, "field 'ratio': expected number, got bool"),
        ("ratio", "0.5", "field 'ratio': expected number, got str"),
        ("inner", 443, "field 'inner'"),
        ("inner", {"port": "443"}, "field 'inner': field 'port': expected int, got str"),
        ("tags", {"k": 1}, "field 'tags': key 'k': expected str, got int"),
        ("tags", {1: "v"}, "field 'tags': key 1: expected str, got int"),
        ("tags", ["k", "v"], "field 'tags': expected dict, got list"),
        ("note", 7, "field 'note': expected str, got int"),
    ],
)
def test_mistyped_field(field, value, problem):
    message = rejects({**GOOD, field: value}, problem)
    assert f"field {field!r}" in message


@pytest.mark.parametrize("data", [[], "x", None, 5, [("name", "w1")]])
def test_not_an_object(data):
    message = rejects(data, "test record must be a JSON object")
    assert message == f"test record must be a JSON object, got {type(data).__name__}"


def test_caller_chooses_the_error_class():
    rejects({**GOOD, "count": "3"}, "field 'count': expected int", error=KeyFileError)
    rejects([], "must be a JSON object", error=KeyFileError)


def test_base64_strict():
    assert b64encode(b"\x00\xff") == "AP8="
    assert b64decode_strict("AP8=", field="f") == b"\x00\xff"
    assert b64decode_strict("", field="f") == b""
    for bad in ["AP8", "AP8=\n", " AP8=", "A-8=", "A_8=", "AP8==", "é", "AP8=AP8="]:
        with pytest.raises(LeapcoreError) as info:
            b64decode_strict(bad, field="key")
        assert type(info.value) is RecordError
        assert str(info.value) == "field 'key' is not valid standard base64"


@attrs.frozen
class Listy:
    items: list[str]


def test_a_string_is_not_a_list():
    with pytest.raises(RecordError, match="field 'items': expected list, got str"):
        structure_strict({"items": "ab"}, Listy, what="test record")
    with pytest.raises(RecordError, match="field 'items': item 1: expected str, got int"):
        structure_strict({"items": ["a", 2]}, Listy, what="test record")
    assert structure_strict({"items": ["a", "b"]}, Listy, what="x").items == ["a", "b"]


@attrs.frozen
class Loose:
    data: dict[str, Any] | None = None


@attrs.frozen
class Strict:
    data: dict[str, Any]


def test_container_check_does_not_depend_on_what_was_decoded_before():
    """Regression: decoding an optional dict once used to register a raw mapping hook that
    bypassed the container check for every later record with the same field type."""
    structure_strict({"data": {"a": 1}}, Loose, what="x")
    with pytest.raises(RecordError, match="field 'data': expected dict, got list"):
        structure_strict({"data": []}, Strict, what="x")
    with pytest.raises(RecordError, match="expected dict, got list"):
        structure_strict({"data": []}, Loose, what="x")
