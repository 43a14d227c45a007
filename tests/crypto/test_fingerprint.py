"""Fingerprints (spec §6): the shipped word list and the four-word rendering."""

from __future__ import annotations

import hashlib
import re
from importlib import resources

from hypothesis import given, settings
from hypothesis import strategies as st

from leapcore.crypto.fingerprint import (
    fingerprint,
    fingerprint_digest,
    fingerprint_indices,
    wordlist,
)
from leapcore.crypto.keys import PublicKeyBundle

WORD = re.compile(r"^[a-z]{4}$")


def _raw_wordlist() -> str:
    return resources.files("leapcore").joinpath("data/wordlist.txt").read_text("ascii")


def test_wordlist_file_shape():
    text = _raw_wordlist()
    lines = text.splitlines()
    assert len(lines) == 256
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert all(WORD.match(line) for line in lines), [w for w in lines if not WORD.match(w)]
    assert len(set(lines)) == 256
    assert wordlist() == tuple(lines)


def test_digest_is_blake2b_256_not_truncated_512():
    x, m, s = bytes(32), bytes(1568), bytes(64)
    digest = fingerprint_digest(x, m, s)
    assert digest == hashlib.blake2b(x + m + s, digest_size=32).digest()
    assert digest != hashlib.blake2b(x + m + s).digest()[:32]
    assert len(digest) == 32


def test_fingerprint_distinguishes_each_key():
    x, m, s = bytes(32), bytes(1568), bytes(64)
    base = fingerprint(x, m, s)
    assert fingerprint(b"\x01" + x[1:], m, s) != base
    assert fingerprint(x, b"\x01" + m[1:], s) != base
    assert fingerprint(x, m, b"\x01" + s[1:]) != base
    # Concatenation, not per-key hashing: moving a byte across the boundary changes it.
    assert fingerprint_digest(x, m, s) == fingerprint_digest(x + m[:1], m[1:], s)


@settings(max_examples=100, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=1568, max_size=1568),
    st.binary(min_size=64, max_size=64),
)
def test_fingerprint_is_always_four_words_of_19_chars(x, m, s):
    fp = PublicKeyBundle(x, m, s).fingerprint
    assert len(fp) == 19
    parts = fp.split("-")
    assert len(parts) == 4 and all(WORD.match(p) for p in parts)
    digest = fingerprint_digest(x, m, s)
    assert parts == [wordlist()[b] for b in digest[:4]]


def test_vector_fingerprints(vector):
    """Digest and indices from the LeapMux vectors; the words are leapcore's own list."""
    bundle = vector.bundle
    digest = bytes.fromhex(vector.data["fingerprint_digest"])
    assert bundle.fingerprint_digest == digest
    assert list(fingerprint_indices(digest)) == vector.data["fingerprint_word_indices"]
    assert bundle.fingerprint == "-".join(
        wordlist()[i] for i in vector.data["fingerprint_word_indices"]
    )
