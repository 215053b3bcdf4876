"""split_blob + Reassembler: any order, duplicates, truncation, size limits, eviction."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random

import pytest

from federation.chunking import DEFAULT_CHUNK_SIZE, Reassembler, split_blob
from federation.crypto.signing import generate_signing_key
from federation.envelope import Envelope, decode, encode, sign_envelope
from federation.errors import FederationError

KEY = generate_signing_key()
HDR = dict(kind="update", fed="fed-a", sender="box-1", round=2, model="m1")


def chunks(blob: bytes, size: int, **kw: object) -> list[Envelope]:
    return split_blob(blob, KEY, chunk_size=size, **{**HDR, **kw})  # type: ignore[arg-type]


def feed(r: Reassembler, envs: list[Envelope]) -> list[bytes]:
    return [b for b in (r.add(decode(encode(e))) for e in envs) if b is not None]


def test_shuffled_and_duplicated_chunks_reassemble_once() -> None:
    blob = os.urandom(1_000_003)
    envs = chunks(blob, 64 * 1024)
    assert len(envs) == 16 and {e.count for e in envs} == {16}
    wire = envs + random.Random(1).sample(envs, 8)
    random.Random(2).shuffle(wire)
    r = Reassembler()
    assert feed(r, wire) == [blob]
    assert r.duplicates >= 7 and r.inflight_bytes == 0 and r.partial_count == 0
    # Late duplicates of a finished blob do not start a new partial blob.
    assert feed(r, envs[:3]) == [] and r.partial_count == 0


def test_small_and_empty_blobs_are_one_chunk() -> None:
    r = Reassembler()
    for blob in (b"", b"x", os.urandom(1000)):
        envs = chunks(blob, 4096)
        assert len(envs) == 1
        assert feed(r, envs) == [blob]


def test_truncated_chunk_fails_integrity() -> None:
    envs = chunks(os.urandom(300_000), 100_000)
    short = dataclasses.replace(envs[1], payload=envs[1].payload[:-10])
    r = Reassembler()
    r.add(envs[0])
    with pytest.raises(FederationError) as exc:
        r.add(short)
    assert exc.value.reason == "integrity"


def test_chunk_resigned_with_wrong_blob_hash_is_caught_at_the_end() -> None:
    blob = os.urandom(200_000)
    envs = chunks(blob, 100_000)
    # A sender that lies consistently about the blob hash: every chunk checks out,
    # the reassembled blob does not.
    liar = [sign_envelope(dataclasses.replace(e, sig="", blob_sha256="0" * 64), KEY) for e in envs]
    with pytest.raises(FederationError) as exc:
        feed(Reassembler(), liar)
    assert exc.value.reason == "integrity"


def test_inconsistent_chunk_headers_are_refused() -> None:
    envs = chunks(os.urandom(200_000), 100_000)
    other = sign_envelope(dataclasses.replace(envs[1], sig="", round=3), KEY)
    r = Reassembler()
    r.add(envs[0])
    with pytest.raises(FederationError) as exc:
        r.add(other)
    assert exc.value.reason == "integrity"
    assert r.partial_count == 0 and r.inflight_bytes == 0


def test_oversized_blob_is_refused_at_the_first_chunk() -> None:
    envs = chunks(os.urandom(50_000), 10_000)
    r = Reassembler(max_blob_bytes=40_000, max_inflight_bytes=100_000)
    with pytest.raises(FederationError) as exc:
        r.add(envs[0])
    assert exc.value.reason == "oversized"
    assert r.inflight_bytes == 0


def test_flood_of_never_completed_blobs_stays_bounded() -> None:
    r = Reassembler(max_blob_bytes=1_000_000, max_inflight_bytes=2_000_000, max_partials=50)
    for i in range(400):
        blob = hashlib.sha256(str(i).encode()).digest() * 31_250  # 1 MB, distinct
        first = chunks(blob, 100_000, msg=f"{i:032x}")[0]
        assert r.add(first) is None
        assert r.inflight_bytes <= 2_000_000 and r.partial_count <= 50
    assert r.evicted >= 380
    # A real blob still gets through after the flood.
    blob = os.urandom(250_000)
    assert feed(r, chunks(blob, 100_000)) == [blob]


def test_partial_blobs_expire() -> None:
    now = [0.0]
    r = Reassembler(ttl_seconds=60, clock=lambda: now[0])
    envs = chunks(os.urandom(30_000), 10_000)
    r.add(envs[0])
    now[0] = 61.0
    r.add(chunks(b"other", 10)[0])  # any later chunk triggers expiry
    assert r.evicted == 1
    assert feed(r, envs[1:]) == []  # the first chunk is gone: incomplete
    assert r.partial_count == 1  # chunks 1-2 wait for a chunk 0 that never comes


def test_tampered_chunk_payload_is_refused() -> None:
    envs = chunks(os.urandom(20_000), 10_000)
    bad = dataclasses.replace(envs[0], payload=bytes(10_000))
    with pytest.raises(FederationError) as exc:
        Reassembler().add(bad)
    assert exc.value.reason == "integrity"


def test_every_default_chunk_message_fits_below_the_aggregators_mmap_threshold() -> None:
    """federation.memory: the aggregator's chunk buffers must come from the heap (reused),
    so a full-size chunk's MQTT payload, header included, stays below its threshold; a
    whole 1M-value update (MBs) is far above it and is still returned to the OS."""
    from federation.memory import AGGREGATOR_MALLOC, BOX_MALLOC

    blob = os.urandom(3 * DEFAULT_CHUNK_SIZE)
    envs = chunks(blob, DEFAULT_CHUNK_SIZE, model="m" * 128)  # longest model name
    largest = max(len(encode(e)) for e in envs)
    assert DEFAULT_CHUNK_SIZE < largest < AGGREGATOR_MALLOC.mmap_threshold < 25 * 1024 * 1024
    # a box's 640x480 frame (921,600 bytes of BGR) is reused from the heap too
    assert 640 * 480 * 3 < BOX_MALLOC.mmap_threshold < BOX_MALLOC.trim_threshold
