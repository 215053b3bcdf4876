"""Updates from unregistered senders (aggregator.intake.unknown): one shared budget, sampled
logs, a counter and one summary row per period, no ack, no signature check."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from aggregator.intake.unknown import UnknownLimits, UnknownSenders
from aggregator.service import AggregatorService
from aggregator.state.registry import DeviceRegistry
from aggregator.state.store import Store
from federation import topics
from federation.chunking import split_blob
from federation.crypto import signing
from federation.crypto.ckks import FederationContext
from federation.crypto.signing import generate_signing_key, public_key_hex
from federation.envelope import encode
from federation.transport.base import InMemoryBus, InMemoryTransport

FED = "fedunknown"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _chunk_start(device: str, size: int = 2000) -> bytes:
    env = split_blob(b"\x01" * size, generate_signing_key(), kind="update", fed=FED,
                     sender=device, round=1, model="base", chunk_size=500)[0]
    return encode(env)


def test_the_budget_is_shared_by_every_unknown_id_and_refills_with_time() -> None:
    clock = Clock()
    limits = UnknownLimits(messages_per_second=2, message_burst=10, samples=3,
                           report_seconds=10)
    unknown = UnknownSenders(limits, clock)
    payload = _chunk_start("ghost-0")
    for i in range(1000):  # a thousand ids, each "fresh": one bucket for all of them
        unknown.observe(f"ghost-{i}", payload)
    first = unknown.drain()
    assert first is not None and first.messages == 1000
    assert first.nbytes == 1000 * len(payload)
    assert len(first.samples) == 3  # the first ones, one line each
    assert "ghost-0" in first.samples[0] and "not answered" in first.samples[0]
    assert first.summary is None  # the period is not over yet
    clock.now += 10  # 20 tokens back (capped at the burst of 10); a new period
    for i in range(50):
        unknown.observe(f"late-{i}", payload)
    second = unknown.drain()
    assert second is not None and second.summary is not None
    summary = second.summary
    assert summary.messages == 1000  # the first period's, reported once it is over
    assert summary.over_budget == 990 and summary.ids == 1000
    assert summary.examples == ("ghost-0", "ghost-1", "ghost-10", "ghost-100", "ghost-101")
    assert second.messages == 50 and len(second.samples) == 3  # the new period's samples
    clock.now += 10
    third = unknown.drain()
    assert third is not None and third.summary is not None
    assert third.summary.messages == 50 and third.summary.over_budget == 40
    assert unknown.drain() is None  # quiet: nothing to report
    assert unknown.total == 1050


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        UnknownLimits(messages_per_second=0)


def test_an_unknown_sender_is_never_verified_answered_or_stored_per_message(
    tmp_path: Path, secret_ctx: FederationContext, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(tmp_path)
    bus = InMemoryBus()
    try:
        honest_key = generate_signing_key()
        DeviceRegistry(store).add("box0", bytes.fromhex(public_key_hex(honest_key)))
        service = AggregatorService(InMemoryTransport(bus, "agg"), store, secret_ctx.public(),
                                    generate_signing_key(), FED)
        service.refresh_keys()
        acks: list[str] = []
        InMemoryTransport(bus, "spy").subscribe(f"{topics.prefix(FED)}/ack/+",
                                                lambda topic, _: acks.append(topic))
        verified: list[bytes] = []
        real_verify = signing.verify
        monkeypatch.setattr("aggregator.intake.delivery.verify",
                            lambda *a: verified.append(b"") or real_verify(*a))
        rows_before = len(store.recent_rejections(100))
        payload = _chunk_start("ghost")
        with caplog.at_level(logging.WARNING):
            for i in range(500):
                service._on_update(topics.update(FED, f"ghost-{i}"), payload)
            # a topic that does not even parse (an id over 64 characters) is one too
            service._on_update(f"{topics.prefix(FED)}/update/{'x' * 80}", payload)
            assert service._queue.empty()  # nothing per message for the worker
            service.pump()
        assert verified == [] and acks == []
        assert store.counters()["rejected.unknown_device"] == 501
        assert len(store.recent_rejections(100)) == rows_before  # no summary before 10 s
        lines = [r for r in caplog.records if "unregistered" in r.getMessage()]
        assert len(lines) == service.intake.unknown.limits.samples
        # the registered box still gets in and is answered
        env = split_blob(b"x" * 100, honest_key, kind="update", fed=FED, sender="box0",
                         round=1, model="base", chunk_size=500)[0]
        service._on_update(topics.update(FED, "box0"), encode(env))
        service.pump()
        assert verified == [b""] and acks == [topics.ack(FED, "box0")]
        service.close()
    finally:
        store.close()
