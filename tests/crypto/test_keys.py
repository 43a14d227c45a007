"""Worker keys: JSON form (spec §7), key files, validation, and keeping secrets out of reprs."""

from __future__ import annotations

import base64
import json
import os
import re
import stat

import pytest
from support.helpers import expect

from leapcore.crypto.keys import KEY_FIELDS, PUBLIC_KEY_FIELDS, PublicKeyBundle, WorkerKeyPair
from leapcore.crypto.primitives import slhdsa_sign, slhdsa_verify
from leapcore.errors import KeyFileError, RecordError, StorageError
from leapcore.store.atomicfile import write_atomic
from leapcore.store.keyfile import load_keypair, save_keypair

FIELDS = [
    "public_key",
    "private_key",
    "mlkem_public_key",
    "mlkem_private_key",
    "slhdsa_public_key",
    "slhdsa_private_key",
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def keypair(load_vector) -> WorkerKeyPair:
    return load_vector("pq_seed1").keypair


@pytest.fixture
def other(load_vector) -> WorkerKeyPair:
    return load_vector("pq_seed2").keypair


# ---------------------------------------------------------------------------
# Generation and the JSON form.


def test_generate_and_json_roundtrip(generated_keypair):
    kp = generated_keypair
    data = kp.to_json()
    assert list(data) == FIELDS
    assert all(isinstance(v, str) for v in data.values())
    assert WorkerKeyPair.from_json(data) == kp
    assert WorkerKeyPair.from_json(json.loads(json.dumps(data))) == kp
    sizes = {"x25519_private": 32, "x25519_public": 32, "mlkem_seed": 64, "mlkem_public": 1568}
    sizes |= {"slhdsa_private": 128, "slhdsa_public": 64}
    for attr, size in sizes.items():
        assert len(getattr(kp, attr)) == size
    assert WorkerKeyPair.generate() != kp  # fresh randomness each time


def test_generated_keys_work(generated_keypair):
    """The generated SLH-DSA key signs and verifies (one ~125 ms signature)."""
    sig = slhdsa_sign(generated_keypair.slhdsa_private, b"message")
    slhdsa_verify(generated_keypair.slhdsa_public, b"message", sig)


def test_generate_with_injected_randomness(load_vector):
    vector = load_vector("pq_seed1")
    expected = vector.keypair
    draws = [expected.x25519_private, expected.mlkem_seed]
    kp = WorkerKeyPair.generate(
        random=lambda n: draws.pop(0),
        slhdsa_keygen=lambda: (expected.slhdsa_public, expected.slhdsa_private),
    )
    assert kp == expected and draws == []


def test_vector_json_fields_match_spec(keypair, load_vector):
    data = keypair.to_json()
    wk = load_vector("pq_seed1").data["worker_key"]
    assert base64.b64decode(data["public_key"]).hex() == wk["x25519"]["public"]
    assert base64.b64decode(data["private_key"]).hex() == wk["x25519"]["private"]
    assert base64.b64decode(data["mlkem_public_key"]).hex() == wk["mlkem1024"]["public"]
    assert base64.b64decode(data["mlkem_private_key"]).hex() == wk["mlkem1024"]["seed"]
    assert base64.b64decode(data["slhdsa_public_key"]).hex() == wk["slhdsa_shake_256f"]["public"]
    assert base64.b64decode(data["slhdsa_private_key"]).hex() == wk["slhdsa_shake_256f"]["private"]
    assert set(KEY_FIELDS) == set(FIELDS)


def test_public_bundle_json_roundtrip(keypair):
    bundle = keypair.public
    data = bundle.to_json()
    assert (
        list(data)
        == ["public_key", "mlkem_public_key", "slhdsa_public_key"]
        == list(PUBLIC_KEY_FIELDS)
    )
    assert PublicKeyBundle.from_json(data) == bundle
    assert data == {k: v for k, v in keypair.to_json().items() if k in PUBLIC_KEY_FIELDS}


# ---------------------------------------------------------------------------
# Strict decoding.


def _bad_json_cases(good: dict[str, str], other: dict[str, str]):
    yield "missing", {k: v for k, v in good.items() if k != "private_key"}, r"missing private_key"
    yield "unknown", {**good, "comment": "hi"}, r"unknown comment"
    yield "not a string", {**good, "public_key": 5}, r"'public_key': expected str, got int"
    yield "null", {**good, "mlkem_public_key": None}, r"'mlkem_public_key': expected str"
    yield "list", {**good, "slhdsa_public_key": [1]}, r"'slhdsa_public_key': expected str"
    yield "bad base64", {**good, "public_key": "!!!"}, r"'public_key' is not valid standard base64"
    yield "urlsafe base64", {**good, "public_key": "-_" + good["public_key"][2:]}, r"base64"
    yield "no padding", {**good, "public_key": good["public_key"].rstrip("=")}, r"base64"
    yield "non-ascii", {**good, "public_key": "é" * 44}, r"'public_key' is not valid"
    yield "short", {**good, "public_key": b64(bytes(31))}, r"public_key must be 32 bytes, got 31"
    yield "long seed", {**good, "mlkem_private_key": b64(bytes(65))}, r"must be 64 bytes, got 65"
    yield (
        "x25519 mismatch",
        {**good, "public_key": other["public_key"]},
        r"X25519 public key does not match its private key",
    )
    yield (
        "mlkem mismatch",
        {**good, "mlkem_public_key": other["mlkem_public_key"]},
        r"ML-KEM-1024 public key does not match its private seed",
    )
    yield (
        "slhdsa mismatch",
        {**good, "slhdsa_public_key": other["slhdsa_public_key"]},
        r"SLH-DSA public key does not match its private key",
    )


def _cases(keypair, other):
    return list(_bad_json_cases(keypair.to_json(), other.to_json()))


@pytest.mark.parametrize("index", range(14))
def test_from_json_rejects(index, keypair, other):
    name, data, problem = _cases(keypair, other)[index]
    exc = expect(KeyFileError, problem, WorkerKeyPair.from_json, data)
    assert str(exc).startswith("invalid worker key material: "), name
    # The error class is the caller's choice (e.g. a network record).
    expect(RecordError, problem, WorkerKeyPair.from_json, data, error=RecordError)


def test_from_json_rejects_non_string_keys(keypair):
    data = {**keypair.to_json(), 7: "x"}
    expect(KeyFileError, r"key 7: expected str, got int", WorkerKeyPair.from_json, data)


@pytest.mark.parametrize("index", range(14))
def test_load_keypair_errors_name_path_and_problem(index, keypair, other, tmp_path):
    name, data, problem = _cases(keypair, other)[index]
    path = tmp_path / "worker.json"
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)
    before = (path.read_bytes(), path.stat().st_mtime_ns, stat.S_IMODE(path.stat().st_mode))
    exc = expect(KeyFileError, problem, load_keypair, path)
    assert str(exc).startswith(f"{path}: invalid worker key material: "), name
    after = (path.read_bytes(), path.stat().st_mtime_ns, stat.S_IMODE(path.stat().st_mode))
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker.json"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", r"not valid JSON"),
        (b"{", r"not valid JSON"),
        (b"\xff\xfe{}", r"not valid JSON"),
        (b"[]", r"key file must hold a JSON object$"),
        (b'"text"', r"key file must hold a JSON object$"),
        (b"null", r"key file must hold a JSON object$"),
        (b"{}", r"missing mlkem_private_key, mlkem_public_key, private_key, public_key"),
    ],
    ids=["empty", "truncated", "not utf-8", "array", "string", "null", "empty object"],
)
def test_load_keypair_bad_files(tmp_path, content, problem):
    path = tmp_path / "worker.json"
    path.write_bytes(content)
    exc = expect(KeyFileError, problem, load_keypair, path)
    assert str(exc).startswith(f"{path}: ")
    assert path.read_bytes() == content


def test_load_keypair_missing_file(tmp_path):
    path = tmp_path / "nope" / "worker.json"
    expect(KeyFileError, rf"^{re.escape(str(path))}: no such key file$", load_keypair, path)
    assert not path.parent.exists()  # loading never creates anything


def test_load_keypair_directory(tmp_path):
    expect(
        KeyFileError,
        rf"^{re.escape(str(tmp_path))}: cannot read key file: ",
        load_keypair,
        tmp_path,
    )


# ---------------------------------------------------------------------------
# Saving.


def test_save_and_load(keypair, tmp_path):
    path = tmp_path / "new" / "deeper" / "worker.json"
    save_keypair(path, keypair)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["worker.json"]  # no temp files
    assert load_keypair(path) == keypair
    assert load_keypair(str(path)) == keypair
    text = path.read_text()
    assert json.loads(text) == keypair.to_json()
    assert text.endswith("}\n") and text.startswith('{\n  "public_key": ')


def test_save_replaces_atomically(keypair, other, tmp_path):
    path = tmp_path / "worker.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    save_keypair(path, other)
    save_keypair(path, keypair)
    assert load_keypair(path) == keypair
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker.json"]


def test_existing_directory_mode_is_kept(keypair, tmp_path):
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, 0o755)
    save_keypair(directory / "worker.json", keypair)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755


def test_failed_write_leaves_no_temp_file(tmp_path, keypair):
    kp = keypair
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "inside").write_text("keep")
    # Cannot replace a non-empty directory: a StorageError naming the path.
    expect(StorageError, rf"^{re.escape(str(target))}: cannot write: ", write_atomic, target, b"x")
    expect(StorageError, rf"^{re.escape(str(target))}: cannot write: ", save_keypair, target, kp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
    assert (target / "inside").read_text() == "keep"


# ---------------------------------------------------------------------------
# Secrets stay out of reprs.


def test_repr_shows_no_private_bytes(keypair):
    text = repr(keypair) + str(keypair) + f"{keypair!r}"
    assert text.startswith(f"WorkerKeyPair(fingerprint={keypair.public.fingerprint!r})")
    for secret in (keypair.x25519_private, keypair.mlkem_seed, keypair.slhdsa_private[:64]):
        for form in (secret.hex(), repr(secret)[2:-1], b64(secret)[:20]):
            assert form not in text
    assert "private" not in text.lower()


# ---------------------------------------------------------------------------
# Validators.


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("x25519", bytes(31), r"^x25519 must be 32 bytes, got 31$"),
        ("x25519", bytes(33), r"^x25519 must be 32 bytes, got 33$"),
        ("mlkem", bytes(1567), r"^mlkem must be 1568 bytes, got 1567$"),
        ("slhdsa", bytes(128), r"^slhdsa must be 64 bytes, got 128$"),
        ("x25519", "a" * 32, r"^x25519 must be 32 bytes, got str$"),
        ("mlkem", bytearray(1568), r"^mlkem must be 1568 bytes, got bytearray$"),
        ("slhdsa", None, r"^slhdsa must be 64 bytes, got NoneType$"),
    ],
)
def test_public_bundle_validators(keypair, field, value, message):
    fields = {"x25519": keypair.x25519_public, "mlkem": keypair.mlkem_public}
    fields["slhdsa"] = keypair.slhdsa_public
    fields[field] = value
    expect(KeyFileError, message, PublicKeyBundle, **fields)


def test_public_bundle_from_json_rejects(keypair):
    data = keypair.public.to_json()
    expect(
        KeyFileError,
        r"^invalid public key bundle: missing public_key$",
        PublicKeyBundle.from_json,
        {k: v for k, v in data.items() if k != "public_key"},
    )
    expect(
        KeyFileError,
        r"^invalid public key bundle: unknown private_key$",
        PublicKeyBundle.from_json,
        {**data, "private_key": data["public_key"]},
    )
    expect(
        RecordError,
        r"slhdsa_public_key must be 64 bytes, got 32",
        PublicKeyBundle.from_json,
        {**data, "slhdsa_public_key": data["public_key"]},
        error=RecordError,
    )


def test_keypair_validators(keypair, other):
    fields = {a: getattr(keypair, a) for a, _ in KEY_FIELDS.values()}
    expect(
        KeyFileError,
        r"^mlkem_seed must be 64 bytes, got 32$",
        WorkerKeyPair,
        **{**fields, "mlkem_seed": bytes(32)},
    )
    expect(
        KeyFileError,
        r"^X25519 public key does not match",
        WorkerKeyPair,
        **{**fields, "x25519_public": other.x25519_public},
    )
    expect(
        KeyFileError,
        r"^ML-KEM-1024 public key does not match",
        WorkerKeyPair,
        **{**fields, "mlkem_seed": other.mlkem_seed},
    )
    expect(
        KeyFileError,
        r"^SLH-DSA public key does not match",
        WorkerKeyPair,
        **{**fields, "slhdsa_private": other.slhdsa_private},
    )
