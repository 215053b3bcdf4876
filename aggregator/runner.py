"""Build a running service from a state directory and a broker URL (``serve``).

May import: aggregator.state, aggregator.rounds, aggregator.intake, aggregator.service,
federation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aggregator.intake.ratelimit import RateLimiter
from aggregator.intake.shards import IntakeShards, ShardSpec, retire_stale_sessions, session_ids
from aggregator.rounds.coordinator import RoundSettings
from aggregator.rounds.sumpool import ProcessSumFactory
from aggregator.service import AggregatorService
from aggregator.state.config import KEY_NAME, AggregatorConfig, load_context, load_signing_key
from aggregator.state.store import Store
from federation.errors import NOT_CONNECTED, TransportError
from federation.memory import AGGREGATOR_MALLOC, pin_malloc
from federation.transport.mqtt import MqttTransport, TlsConfig

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 20.0
def build_service(
    state: Path,
    cfg: AggregatorConfig,
    settings: RoundSettings,
    broker: str,
    client_id: str,
    max_rounds: int | None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    protocol: str = "5",
    sum_workers: int | None = None,
    intake_processes: int = 1,
    rate_limiter: RateLimiter | None = None,
) -> tuple[AggregatorService, MqttTransport]:
    """The service on a connected MQTT transport (persistent session). Updates the
    broker queued while the aggregator was down may arrive before ``service.start()``
    subscribes: the transport buffers them and hands them over on subscribe.

    ``sum_workers``: processes that hold the round's CKKS sum (aggregator.rounds.sumpool);
    None: one per core (at most 4); 0: sum in this process. ``intake_processes``: K >= 2
    hands the per-chunk work to K shard processes (aggregator.intake.shards).
    ``rate_limiter``: per-device limits at the intake (None: off)."""
    ctx = load_context(state, cfg)  # refuses a secret context (secret_key_refused)
    # ciphertexts back to the OS when freed, chunk buffers reused (federation.memory)
    pin_malloc(AGGREGATOR_MALLOC)
    signing_key = load_signing_key(state)
    store = Store(state)
    # Started first: the workers import TenSEAL while this process connects.
    sums = None if sum_workers == 0 else ProcessSumFactory(ctx, cfg.vector_length, sum_workers)
    tls = TlsConfig(ca_file, cert_file, key_file) if (ca_file or cert_file or key_file) else None
    transport = MqttTransport(broker, client_id, tls=tls, clean_start=False, protocol=protocol)
    try:
        service = AggregatorService(
            transport, store, ctx, signing_key, cfg.fed,
            aggregator_id=cfg.aggregator_id, settings=settings,
            initial_model=cfg.initial_model, vector_length=cfg.vector_length,
            max_rounds=max_rounds, accumulators=sums, rate_limiter=rate_limiter,
        )
        if not transport.wait_connected(CONNECT_TIMEOUT):
            raise TransportError(
                NOT_CONNECTED, f"cannot reach the MQTT broker at {broker} "
                f"(after {CONNECT_TIMEOUT:.0f} s); check --broker and that it is running"
            )

        def end_session(shard_id: str) -> None:  # a clean start deletes the session
            link = MqttTransport(broker, shard_id, tls=tls, clean_start=True, protocol=protocol)
            try:
                if not link.wait_connected(CONNECT_TIMEOUT):
                    log.warning("could not end the broker session of %s", shard_id)
            finally:
                link.close()

        retire_stale_sessions(state, session_ids(client_id, intake_processes), end_session)
        if intake_processes > 1:
            service.intake_shards = IntakeShards(ShardSpec(
                0, intake_processes, state, cfg.fed, broker, client_id, tls, protocol,
                max_blob_bytes=service.spool.max_blob_bytes,
                max_spool_bytes=service.spool.max_spool_bytes,
                signing_key_file=state / KEY_NAME, aggregator_id=cfg.aggregator_id,
                log_level=logging.getLogger().getEffectiveLevel()))
    except BaseException:
        transport.close()
        store.close()
        if sums is not None:
            sums.close()
        raise
    return service, transport
