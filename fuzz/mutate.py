"""A small, dependency-free, deterministic mutation engine for the harnesses.

Everything is driven by a caller-supplied ``random.Random``, so a campaign is reproduced
exactly by its seed and count. :func:`campaign` is what ``tests/test_fuzz.py`` and
``fuzz/run_mutations.py`` run: edge cases, the valid seeds themselves, then structured
mutations (bit flips, byte sets, truncations, extensions, splices, insertions, deletions,
random bytes of the right and wrong lengths) and, for the key-material harnesses, JSON-aware
mutations of the key fields.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator, Sequence

__all__ = ["campaign", "edge_cases", "mutate", "mutate_key_json"]

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)

#: (lo, hi) byte range that in-place mutations may touch; None = the whole input.
Region = tuple[int, int] | None


def _span(data: bytes, region: Region) -> tuple[int, int]:
    lo, hi = region if region is not None else (0, len(data))
    return max(0, lo), min(len(data), hi)


def _flip_bits(data: bytes, rng: random.Random, region: Region) -> bytes:
    lo, hi = _span(data, region)
    if lo >= hi:
        return data
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        i = rng.randrange(lo, hi)
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _set_bytes(data: bytes, rng: random.Random, region: Region) -> bytes:
    lo, hi = _span(data, region)
    if lo >= hi:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(lo, hi)
        out[i] = rng.choice(_INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(out)


def _overwrite_run(data: bytes, rng: random.Random, region: Region) -> bytes:
    """Overwrite a run of bytes with zeros, 0xff or random bytes (length unchanged)."""
    lo, hi = _span(data, region)
    if lo >= hi:
        return data
    start = rng.randrange(lo, hi)
    n = rng.randint(1, min(64, hi - start))
    fill = rng.choice((bytes(n), b"\xff" * n, rng.randbytes(n)))
    return data[:start] + fill + data[start + n :]


def _splice_same_length(
    data: bytes, rng: random.Random, region: Region, others: Sequence[bytes]
) -> bytes:
    """Copy a run from another input (or this one) over a run of this one."""
    lo, hi = _span(data, region)
    donor = rng.choice(others) if others else data
    if lo >= hi or not donor:
        return data
    start = rng.randrange(lo, hi)
    n = rng.randint(1, min(64, hi - start, len(donor)))
    src = rng.randrange(0, len(donor) - n + 1)
    return data[:start] + donor[src : src + n] + data[start + n :]


def _truncate(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    if rng.random() < 0.5:
        return data[: rng.randrange(len(data))]
    return data[: len(data) - rng.randint(1, min(4, len(data)))]


def _extend(data: bytes, rng: random.Random) -> bytes:
    n = rng.choice((1, 1, 2, 16, rng.randint(1, 256)))
    return data + (rng.randbytes(n) if rng.random() < 0.7 else bytes(n))


def _insert(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 32)) + data[i:]


def _delete(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, min(32, len(data) - i)) :]


def _splice_cross(data: bytes, rng: random.Random, others: Sequence[bytes]) -> bytes:
    """Head of this input joined to the tail of another (lengths change)."""
    donor = rng.choice(others) if others else data
    return data[: rng.randrange(len(data) + 1)] + donor[rng.randrange(len(donor) + 1) :]


def _random_right_length(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(len(data))


def _random_wrong_length(data: bytes, rng: random.Random) -> bytes:
    n = len(data)
    size = rng.choice(
        (0, 1, max(0, n - 1), n + 1, max(0, n - 16), n + 16, rng.randrange(2 * n + 2))
    )
    if size == n:
        size += 1
    return rng.randbytes(size)


def _random_tail(data: bytes, rng: random.Random, region: Region) -> bytes:
    """Keep a prefix, randomize the rest of the region (length unchanged)."""
    lo, hi = _span(data, region)
    if lo >= hi:
        return data
    cut = rng.randrange(lo, hi)
    return data[:cut] + rng.randbytes(hi - cut) + data[hi:]


def mutate(
    data: bytes,
    rng: random.Random,
    *,
    others: Sequence[bytes] = (),
    region: Region = None,
    keep_length: bool = False,
) -> bytes:
    """One structured mutation of ``data``.

    ``region`` limits where the in-place mutations write (e.g. only the 48-byte prefix of a
    message, or only its signature). With ``keep_length`` only in-place mutations are used.
    """
    in_place: list[Callable[[], bytes]] = [
        lambda: _flip_bits(data, rng, region),
        lambda: _flip_bits(data, rng, region),
        lambda: _set_bytes(data, rng, region),
        lambda: _overwrite_run(data, rng, region),
        lambda: _splice_same_length(data, rng, region, others),
        lambda: _random_tail(data, rng, region),
    ]
    resizing: list[Callable[[], bytes]] = [
        lambda: _truncate(data, rng),
        lambda: _extend(data, rng),
        lambda: _insert(data, rng),
        lambda: _delete(data, rng),
        lambda: _splice_cross(data, rng, others),
        lambda: _random_right_length(data, rng),
        lambda: _random_wrong_length(data, rng),
    ]
    ops = in_place if keep_length else in_place + resizing
    out = rng.choice(ops)()
    # Sometimes stack a second in-place mutation.
    if rng.random() < 0.2:
        data = out
        out = rng.choice(in_place)()
    return out


def edge_cases(lengths: Sequence[int]) -> list[bytes]:
    """Empty and tiny inputs, and all-zero / all-0xff inputs of and around ``lengths``."""
    out = [b"", b"\x00", b"\xff", b"{}", b"[]", b"null"]
    for n in lengths:
        for size in {max(0, n - 1), n, n + 1}:
            out += [bytes(size), b"\xff" * size]
    return out


# ---------------------------------------------------------------------------
# JSON-aware mutations of key material

_ODD_VALUES: tuple[object, ...] = (None, True, 0, 1.5, -1, [], {}, [""], {"a": "b"}, "", " ")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _mutate_value(text: str, rng: random.Random) -> object:
    """A plausible-but-wrong (or occasionally still valid) replacement for a base64 value."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = text.encode("utf-8", "surrogatepass")
    choice = rng.randrange(14)
    if choice == 0:
        return rng.choice(_ODD_VALUES)
    if choice == 1:
        return _b64(raw[:-1])  # one byte short
    if choice == 2:
        return _b64(raw + b"\x00")  # one byte long
    if choice == 3:
        return _b64(rng.randbytes(len(raw)))  # right length, does not match the other half
    if choice == 4:
        return text.rstrip("=")  # padding dropped
    if choice == 5:
        return base64.urlsafe_b64encode(raw).decode()  # the other alphabet
    if choice == 6:
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(" \n\t.-_*!é\u2028\x00") + text[i:]
    if choice == 7:
        return text + "=="
    if choice == 8:
        return text.encode().hex()
    if choice == 9:
        return _b64(raw[:1] + bytes([raw[1] ^ 1]) + raw[2:]) if len(raw) > 1 else text
    if choice == 10:
        return "\ud800" + text  # lone surrogate (json.dumps escapes it)
    if choice == 11:
        return text.lower()
    if choice == 12:
        return _b64(bytes(len(raw)))  # all-zero key of the right length
    return text  # unchanged


def mutate_key_json(data: bytes, rng: random.Random) -> bytes:
    """Mutate a JSON object of base64 key fields at the JSON level, then serialize it."""
    obj: object = json.loads(data)
    assert isinstance(obj, dict)
    fields = dict(obj)
    names = list(fields)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(8)
        if op <= 2 and names:  # change a value
            name = rng.choice(names)
            value = fields[name]
            fields[name] = _mutate_value(value, rng) if isinstance(value, str) else ""
        elif op == 3 and names:  # drop a field
            fields.pop(rng.choice(names), None)
        elif op == 4:  # add an unknown (or case-changed) field
            base = rng.choice(names) if names else "x"
            fields[rng.choice((base.upper(), base + "_", "extra", ""))] = rng.choice(
                ("", _b64(b"\x00" * 32), None)
            )
        elif op == 5 and len(names) >= 2:  # swap two values
            a, b = rng.sample(names, 2)
            fields[a], fields[b] = fields.get(b), fields.get(a)
        elif op == 6:  # move a field from the other kind of record
            fields["private_key"] = fields.get("public_key", _b64(bytes(32)))
        else:  # keep the public part of the keypair (a valid bundle) or nothing
            keep = {"public_key", "mlkem_public_key", "slhdsa_public_key"}
            fields = {k: v for k, v in fields.items() if k in keep or rng.random() < 0.2}
        names = list(fields)
    shape = rng.randrange(10)
    top: object = fields
    if shape == 0:
        top = [fields]
    elif shape == 1:
        top = {"key": fields}
    text = json.dumps(top, indent=rng.choice((None, 2)), ensure_ascii=rng.random() < 0.5)
    return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------
# Campaigns


def campaign(
    seeds: Sequence[bytes],
    rng: random.Random,
    count: int,
    *,
    region: Region = None,
    json_fields: bool = False,
) -> Iterator[bytes]:
    """Edge cases, the seeds, then ``count`` mutations of randomly chosen seeds.

    ``region`` restricts the in-place mutations (length-changing ones still happen);
    ``json_fields`` makes half of the mutations JSON-aware (seeds must be JSON objects).
    """
    yield from edge_cases(sorted({len(s) for s in seeds}))
    yield from seeds
    for _ in range(count):
        seed = rng.choice(seeds)
        if json_fields and rng.random() < 0.5:
            out = mutate_key_json(seed, rng)
            if rng.random() < 0.2:
                out = mutate(out, rng, others=seeds)
            yield out
        else:
            yield mutate(seed, rng, others=seeds, region=region)
