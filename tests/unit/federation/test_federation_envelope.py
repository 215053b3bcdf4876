"""Envelope encode/decode/sign/verify: round trip and every malformed class."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.crypto.signing import KeyRing, generate_signing_key, public_key_hex
from federation.envelope import MAGIC, Envelope, decode, encode, sign_envelope, verify_envelope
from federation.errors import FederationError

KEY = generate_signing_key()
OTHER = generate_signing_key()
RING = KeyRing({"box-1": public_key_hex(KEY)})


def make(payload: bytes = b"hello chunk", **overrides: object) -> Envelope:
    fields: dict[str, object] = dict(
        kind="update", fed="fed-a", sender="box-1", round=7, model="conv14@v1:r6",
        msg="0123456789abcdef0123456789abcdef", blob_sha256=hashlib.sha256(payload).hexdigest(),
        blob_size=len(payload), index=0, count=1,
        chunk_sha256=hashlib.sha256(payload).hexdigest(), ts=1700000000.25, payload=payload,
    )
    fields.update(overrides)
    return sign_envelope(Envelope(**fields), KEY)  # type: ignore[arg-type]


def reason(data: bytes) -> str:
    with pytest.raises(FederationError) as exc:
        verify_envelope(decode(data), RING, fed="fed-a")
    return exc.value.reason


def test_round_trip_keeps_every_field_and_verifies() -> None:
    env = make(b"\x00\xffbinary payload")
    wire = encode(env)
    assert wire[:4] == MAGIC
    back = decode(wire)
    assert back == env
    verify_envelope(back, RING, fed="fed-a")


def test_header_is_canonical_json() -> None:
    wire = encode(make())
    (hlen,) = struct.unpack(">I", wire[4:8])
    header = wire[8 : 8 + hlen]
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":")).encode()


def _rebuild(env: Envelope, header: dict[str, object]) -> bytes:
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(raw)) + raw + env.payload


@pytest.mark.parametrize(
    "mutate",
    [
        lambda w: w[:6],  # truncated prefix
        lambda w: w[:20],  # truncated header
        lambda w: b"XXXX" + w[4:],  # wrong magic
        lambda w: b"",
        lambda w: b"\x00" * 64,  # garbage
        lambda w: MAGIC + struct.pack(">I", 5) + b"{bad}",  # bad JSON
        lambda w: MAGIC + struct.pack(">I", 2) + b"[]",  # JSON, not an object
        lambda w: MAGIC + struct.pack(">I", 10**6) + w[8:],  # header length too big
        lambda w: MAGIC + struct.pack(">I", 3) + b"\xff\xfe{",  # not UTF-8
    ],
)
def test_malformed_bytes(mutate) -> None:
    assert reason(mutate(encode(make()))) == "malformed"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("round", "7"), ("round", -1), ("round", True), ("round", 1.5),
        ("blob_size", -3), ("index", 1), ("count", 0), ("ts", "now"), ("ts", None),
        ("kind", "exfiltrate"), ("fed", "a/b"), ("fed", ""), ("sender", "box+1"),
        ("sender", "x" * 65), ("msg", "not-hex"), ("blob_sha256", "AB" * 32),
        ("chunk_sha256", "00"), ("sig", "zz"), ("v", 2), ("model", 5), ("model", "m" * 200),
    ],
)
def test_wrong_types_and_ranges(field: str, value: object) -> None:
    env = make()
    header = env.header()
    header[field] = value
    assert reason(_rebuild(env, header)) == "malformed"


def test_unknown_and_missing_fields() -> None:
    env = make()
    extra = {**env.header(), "admin": True}
    assert reason(_rebuild(env, extra)) == "malformed"
    missing = env.header()
    del missing["round"]
    assert reason(_rebuild(env, missing)) == "malformed"


def test_nan_is_refused() -> None:
    env = make()
    raw = json.dumps(env.header(), sort_keys=True).replace("1700000000.25", "NaN").encode()
    assert reason(MAGIC + struct.pack(">I", len(raw)) + raw) == "malformed"


def test_tampered_payload_fails_integrity() -> None:
    wire = bytearray(encode(make(b"0123456789")))
    wire[-1] ^= 0x01
    assert reason(bytes(wire)) == "integrity"


def test_tampered_header_fails_signature() -> None:
    env = make()
    header = env.header()
    header["round"] = 8  # replay into another round
    assert reason(_rebuild(env, header)) == "bad_signature"


def test_signature_by_another_key() -> None:
    forged = sign_envelope(dataclasses.replace(make(), sig=""), OTHER)
    assert reason(encode(forged)) == "bad_signature"


def test_unsigned_envelope_is_rejected() -> None:
    assert reason(encode(dataclasses.replace(make(), sig=""))) == "bad_signature"


def test_unknown_sender() -> None:
    assert reason(encode(make(sender="box-9"))) == "unknown_device"


def test_wrong_federation() -> None:
    assert reason(encode(make(fed="fed-b"))) == "wrong_federation"


def test_sign_refuses_payload_hash_mismatch() -> None:
    env = make()
    with pytest.raises(ValueError):
        sign_envelope(dataclasses.replace(env, payload=b"other"), KEY)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decode_random_bytes_only_raises_federation_error(data: bytes) -> None:
    try:
        decode(data)
    except FederationError as exc:
        assert exc.reason == "malformed"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=400))
def test_decode_mutated_envelopes(noise: bytes, cut: int) -> None:
    wire = encode(make())
    mutated = wire[:cut] + noise + wire[cut + len(noise):]
    try:
        verify_envelope(decode(mutated), RING)
    except FederationError as exc:
        assert exc.reason in {"malformed", "bad_signature", "integrity", "unknown_device"}
