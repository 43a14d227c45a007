"""Encryption mode names (spec §3): the accepted spellings and a clear refusal of the rest."""

from __future__ import annotations

import pytest

from leapcore.crypto.mode import EncryptionMode, parse_encryption_mode
from leapcore.errors import ConfigError, InvalidEncryptionMode, LeapcoreError

CLASSIC = EncryptionMode.CLASSIC
PQ = EncryptionMode.POST_QUANTUM


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("classic", CLASSIC),
        ("CLASSIC", CLASSIC),
        ("Classic", CLASSIC),
        ("  classic\n", CLASSIC),
        ("post-quantum", PQ),
        ("Post-Quantum", PQ),
        ("post_quantum", PQ),
        ("POST_QUANTUM", PQ),
        ("pq", PQ),
        ("PQ", PQ),
        ("\tpQ ", PQ),
    ],
)
def test_accepted_names(text, mode):
    assert parse_encryption_mode(text) is mode


def test_enum_passes_through_and_prints_its_name():
    assert parse_encryption_mode(PQ) is PQ
    assert parse_encryption_mode(CLASSIC) is CLASSIC
    assert str(PQ) == "post-quantum" and str(CLASSIC) == "classic"
    assert parse_encryption_mode(str(PQ)) is PQ


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "quantum",
        "PQ2",
        "post quantum",
        "postquantum",
        "p-q",
        "classic-pq",
        "none",
        "default",
        "pq\x00",
        "ｐｑ",
    ],
)
def test_unknown_names(text):
    with pytest.raises(LeapcoreError) as info:
        parse_encryption_mode(text)
    exc = info.value
    assert type(exc) is InvalidEncryptionMode and isinstance(exc, ConfigError)
    assert exc.code == "invalid_encryption_mode"
    assert str(exc) == (
        f"unknown encryption mode {text!r}: use 'classic' or 'post-quantum' "
        "(also accepted: 'post_quantum', 'pq')"
    )


@pytest.mark.parametrize("value", [None, 0, 1, True, b"pq", ["pq"], 1.5])
def test_non_strings(value):
    with pytest.raises(LeapcoreError) as info:
        parse_encryption_mode(value)
    assert type(info.value) is InvalidEncryptionMode
    assert str(info.value) == f"encryption mode must be a string, got {type(value).__name__}"
