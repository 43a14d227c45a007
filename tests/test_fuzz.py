"""Bounded fuzzing of every harness in fuzz/harnesses.py (see fuzz/README.md).

Each harness must accept its input or raise the documented leapcore error. Here they run on
(a) a deterministic campaign of structured mutations of valid inputs and (b) hypothesis-drawn
bytes; and each is shown to be able to fail. Longer runs: ``fuzz/run_mutations.py`` and
``fuzz/run_atheris.py``. ``LEAPCORE_FUZZ_COUNT`` sets the mutations per harness (default 5000).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fuzz package

from fuzz import driver, harnesses
from fuzz.harnesses import HARNESSES, HarnessFailure
from leapcore.crypto.handshake import message1_length, message2_length
from leapcore.crypto.keys import KEY_FIELDS, PublicKeyBundle, WorkerKeyPair
from leapcore.crypto.mode import EncryptionMode
from leapcore.errors import (
    BadSignature,
    ChannelProtocolError,
    DecryptError,
    HandshakeError,
    KeyFileError,
    RecordError,
)
from leapcore.proto import channel_codec
from leapcore.proto.channel_codec import MAX_BYTES_DATA

NAMES = sorted(HARNESSES)
COUNT = int(os.environ.get("LEAPCORE_FUZZ_COUNT", "5000"))
CLASSIC, PQ = EncryptionMode.CLASSIC, EncryptionMode.POST_QUANTUM

fuzz_settings = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------
# The fixtures behave


@pytest.mark.parametrize("name", NAMES)
def test_valid_seeds_are_accepted_and_junk_is_rejected(name: str) -> None:
    for seed in harnesses.seeds(name):
        assert harnesses.accepts(name, seed), name
    for junk in (b"", b"\x00", b"\xff" * 48, b"[]"):
        if junk in _VALID_JUNK.get(name, ()):
            continue
        assert not harnesses.accepts(name, junk), (name, junk)


#: Inputs of the junk list that are valid for a harness: an empty policy file is no rule.
_VALID_JUNK = {"worker_policy": {b""}}


def test_campaigns_are_deterministic() -> None:
    def digest(seed: int) -> str:
        h = hashlib.sha256()
        for data in driver.campaign_inputs("message1_pq", seed=seed, count=200):
            h.update(len(data).to_bytes(4, "big") + data)
        return h.hexdigest()

    assert digest(7) == digest(7) != digest(8)


# ---------------------------------------------------------------------------
# (a) structured mutations


#: Harnesses that run a whole trio server per input (~1.5 ms): a few hundred inputs here.
_NET_COUNT = {"h2_server": min(COUNT, 500), "ws_server": min(COUNT, 500)}


@pytest.mark.parametrize("name", NAMES)
def test_mutation_campaign(name: str) -> None:
    count = _NET_COUNT.get(name, COUNT)
    inputs = driver.campaign_inputs(name, seed=0, count=count)
    label = f"run_campaign({name!r}, seed=0, count={count})"
    stats = driver.run_inputs(name, inputs, label=label)
    print(stats)
    assert stats.accepted >= 1 and stats.rejected >= count // 2, stats


def test_message2_pq_signature_mutations_reach_the_verify() -> None:
    stats = driver.run_signature_campaign(seed=0, count=6)
    assert (stats.inputs, stats.rejected) == (6, 6), stats
    # And the rejection really comes from the SLH-DSA verify, not from tag2.
    for data in driver.signature_inputs(seed=0, count=2):
        initiator = harnesses.make_initiator(PQ)
        with pytest.raises(BadSignature):
            initiator.read_message2(data)


# ---------------------------------------------------------------------------
# (b) hypothesis


@pytest.mark.parametrize("name", NAMES)
@fuzz_settings
@given(data=st.binary(max_size=2048))
def test_hypothesis_binary(name: str, data: bytes) -> None:
    HARNESSES[name](data)


_EXACT = {
    "message1_classic": (message1_length(CLASSIC), b""),
    "message1_pq": (message1_length(PQ), b""),
    "message2_classic": (message2_length(CLASSIC), b""),
    # Only E || tag2 is drawn; the vector's signature follows.
    "message2_pq": (48, harnesses.seeds("message2_pq")[0][48:]),
    "transport_decrypt": (16 + 5, b""),
}


@pytest.mark.parametrize("name", sorted(_EXACT))
@fuzz_settings
@given(data=st.data())
def test_hypothesis_exact_length(name: str, data: st.DataObject) -> None:
    size, tail = _EXACT[name]
    HARNESSES[name](data.draw(st.binary(min_size=size, max_size=size)) + tail)


_b64 = st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode())
_key_objects = st.dictionaries(
    st.sampled_from(sorted(KEY_FIELDS)) | st.text(max_size=4),
    _b64 | st.text(max_size=8) | st.integers() | st.none() | st.lists(st.text(max_size=2)),
    max_size=8,
)


@pytest.mark.parametrize("name", ["key_json", "keyfile"])
@fuzz_settings
@given(obj=_key_objects)
def test_hypothesis_key_objects(name: str, obj: dict[str, object]) -> None:
    HARNESSES[name](json.dumps(obj).encode())


_records = st.lists(
    st.tuples(
        st.sampled_from([0, 0, 0, 1, 1, 2, 3, 0x40, 0x41, 0x42, 0x43, 0x80]),  # flags
        st.integers(0, 12),  # correlation id
        st.binary(max_size=48) | st.sampled_from(harnesses.seeds("channel_message")[:12]),
    ),
    max_size=12,
)


@fuzz_settings
@given(records=_records)
def test_hypothesis_endpoint_records(records: list[tuple[int, int, bytes]]) -> None:
    # Whole records: frames of plausible messages (and of junk) under small ids, local
    # actions, CLOSE and raw frames, in any order.
    data = b"".join(bytes([f, c]) + len(b).to_bytes(2, "big") + b for f, c, b in records)
    harnesses.check_channel_endpoint(data)


@fuzz_settings
@given(records=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3), st.integers(0, 70000))))
def test_hypothesis_reassembly_records(records: list[tuple[int, int, int]]) -> None:
    data = b"".join(bytes([c, f]) + min(n, 65535).to_bytes(2, "big") for c, f, n in records)
    harnesses.check_reassembly(data)


_socks5_pieces = st.sampled_from(
    [b"\x05", b"\x01\x00", b"\x05\x01\x00", b"\x01\x7f\x00\x00\x01", b"\x03\x04abc", b"\x00\x50"]
)


@fuzz_settings
@given(chunks=st.lists(st.binary(min_size=1, max_size=12) | _socks5_pieces, max_size=10))
def test_hypothesis_socks5_chunks(chunks: list[bytes]) -> None:
    # Plausible SOCKS5 pieces and junk, each its own receive_data chunk.
    harnesses.check_socks5(b"".join(bytes([len(c)]) + c for c in chunks))


# ---------------------------------------------------------------------------
# Every harness can fail


class _Fake:
    """Stands in for a class or function: calling returns the fake, every method is a no-op
    except ``method``, which raises ``exc`` (``"__call__"``: calling raises)."""

    def __init__(self, method: str, exc: Exception) -> None:
        self._method, self._exc = method, exc

    def __call__(self, *args: object, **kwargs: object) -> _Fake:
        if self._method == "__call__":
            raise self._exc
        return self

    def __getattr__(self, name: str) -> object:
        def method(*args: object, **kwargs: object) -> None:
            if name == self._method:
                raise self._exc

        return method


#: harness -> (module attribute to replace, method that raises, a leapcore error of the
#: wrong family for that input)
_FAKES = {
    "message1_classic": ("Responder", "read_message1", DecryptError("wrong family")),
    "message1_pq": ("Responder", "read_message1", DecryptError("wrong family")),
    "message2_classic": ("make_initiator", "read_message2", DecryptError("wrong family")),
    "message2_pq": ("make_initiator", "read_message2", DecryptError("wrong family")),
    "transport_decrypt": ("TransportSession", "decrypt", HandshakeError("wrong family")),
    "key_json": ("WorkerKeyPair", "from_json", RecordError("not a KeyFileError")),
    "keyfile": ("load_keypair", "__call__", RecordError("not a KeyFileError")),
    "link_stream": ("LinkDecoder", "feed", RecordError("not a LinkProtocolError")),
    "link_hub": ("LinkConnection", "receive", RecordError("not a LinkProtocolError")),
    "relay": ("ChannelRelay", "check", RecordError("not a RelayViolation")),
    "pin_file": ("PinStore", "load", RecordError("not a PinStoreError")),
    "channel_message": ("channel_decode", "__call__", RecordError("not a ChannelProtocolError")),
    "reassembly": ("Reassembler", "feed", RecordError("not a documented result")),
    "channel_endpoint": ("ChannelEndpoint", "receive_frame", RecordError("nothing may raise")),
    "h2_server": ("LinkServer", "handle", RecordError("nothing may raise")),
    "ws_server": ("LinkServer", "handle", RecordError("nothing may raise")),
    "socks5": ("Socks5Server", "next_event", RecordError("not a Socks5Error")),
    "worker_policy": ("parse_policy", "__call__", RecordError("not a ConfigError")),
}


def test_every_harness_has_a_fake() -> None:
    assert sorted(_FAKES) == NAMES


@pytest.mark.parametrize("wrong", ["builtin", "leapcore"])
@pytest.mark.parametrize("name", NAMES)
def test_harness_rejects_an_undocumented_exception(
    name: str, wrong: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    attribute, method, leapcore_error = _FAKES[name]
    exc = ValueError("boom") if wrong == "builtin" else leapcore_error
    monkeypatch.setattr(harnesses, attribute, _Fake(method, exc))
    with pytest.raises(HarnessFailure, match="undocumented") as info:
        HARNESSES[name](harnesses.seeds(name)[0])
    assert info.value.__cause__ is exc


def test_harness_rejects_a_broken_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    # A HandshakeError that leaves the handshake outside state FAILED is a failure too.
    monkeypatch.setattr(harnesses, "Responder", _Fake("read_message1", HandshakeError("x")))
    with pytest.raises(HarnessFailure, match="not FAILED"):
        harnesses.check_message1_pq(b"")


# ---------------------------------------------------------------------------
# Defects these harnesses found, fixed: keep them fixed.


@pytest.mark.parametrize("text", [b"1" * 5000, b'{"a": ' + b"9" * 5000 + b"}", b"[" * 100_000])
def test_keyfile_json_limits_raise_key_file_error(text: bytes) -> None:
    harnesses.check_keyfile(text)


@pytest.mark.parametrize("cls", [WorkerKeyPair, PublicKeyBundle])
@pytest.mark.parametrize("obj", [[1], "x", 5, None, [["public_key", "AAAA"]]])
def test_from_json_rejects_non_objects(cls: type, obj: object) -> None:
    with pytest.raises(KeyFileError, match="JSON object"):
        cls.from_json(obj)


# ---------------------------------------------------------------------------
# A defect the channel_message harness found, fixed: BYTES_DATA over one frame was accepted.


@pytest.mark.parametrize("size", [MAX_BYTES_DATA + 1, 2 * MAX_BYTES_DATA])
def test_decode_refuses_bytes_data_over_one_frame(size: int) -> None:
    data = b"\x0a" + bytes(size)
    with pytest.raises(ChannelProtocolError):
        channel_codec.decode(data)
    harnesses.check_channel_message(data)
