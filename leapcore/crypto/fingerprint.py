"""Worker key fingerprints: four words for people to compare out of band.

``BLAKE2b(x25519_pub || mlkem_pub || slhdsa_pub, digest_size=32)``; bytes 0-3
of the digest each index leapcore's own list of 256 distinct four-letter
words (``leapcore/data/wordlist.txt``), joined with ``-``. A fingerprint is
for people; pins compare the full keys.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

__all__ = ["fingerprint", "fingerprint_digest", "fingerprint_indices", "wordlist"]


@cache
def wordlist() -> tuple[str, ...]:
    """The 256 fingerprint words, in index order."""
    text = resources.files("leapcore").joinpath("data/wordlist.txt").read_text("ascii")
    words = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(words) != 256 or len(set(words)) != 256:
        raise RuntimeError("leapcore's fingerprint word list is damaged")
    return words


def fingerprint_digest(x25519: bytes, mlkem: bytes, slhdsa: bytes) -> bytes:
    return hashlib.blake2b(x25519 + mlkem + slhdsa, digest_size=32).digest()


def fingerprint_indices(digest: bytes) -> tuple[int, int, int, int]:
    return digest[0], digest[1], digest[2], digest[3]


def fingerprint(x25519: bytes, mlkem: bytes, slhdsa: bytes) -> str:
    """Four words joined by ``-``, e.g. ``deep-idea-obey-tack`` (always 19 characters)."""
    words = wordlist()
    digest = fingerprint_digest(x25519, mlkem, slhdsa)
    return "-".join(words[i] for i in fingerprint_indices(digest))
