"""``fedface-aggregator regions ...`` and the fleet options of ``serve`` (regional mode,
differential privacy, per-device rate limits)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from aggregator.cli.common import JsonOpt, StateOpt, one_line_errors, print_table
from aggregator.intake.ratelimit import RateLimiter, RateLimits
from aggregator.state.config import load_config, load_signing_key
from aggregator.state.regions import add_region, region_ids
from aggregator.state.registry import load_public_key_bytes
from aggregator.state.store import Store
from federation.crypto.dp import DpConfig, epsilon

regions_app = typer.Typer(help="Regional aggregators that forward partial sums to this one.",
                          no_args_is_help=True)


@regions_app.command("add")
@one_line_errors
def regions_add(
    region_id: str,
    state: StateOpt,
    public_key: Annotated[Path, typer.Option(help="the regional aggregator's aggregator.pub")],
) -> None:
    """Let a regional aggregator send partial sums (it is registered like a device)."""
    load_config(state)
    store = Store(state)
    try:
        add_region(store, region_id, load_public_key_bytes(public_key))
    finally:
        store.close()
    typer.echo(f"region {region_id} registered; its partial sums count as the updates they "
               "hold")


@regions_app.command("list")
@one_line_errors
def regions_list(state: StateOpt, as_json: JsonOpt = False) -> None:
    load_config(state)
    store = Store(state)
    try:
        ids = sorted(region_ids(store))
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(ids))
        return
    print_table(("REGION",), [(i,) for i in ids],
                "no regions registered: fedface-aggregator regions add REGION_ID --public-key FILE")


def dp_settings(clip: float, noise: float, delta: float, mode: str) -> DpConfig | None:
    """``serve --dp-clip C --dp-noise z``: both or neither."""
    if clip <= 0 and noise <= 0:
        return None
    if clip <= 0 or noise <= 0:
        raise ValueError("differential privacy needs both --dp-clip and --dp-noise (> 0)")
    return DpConfig(clip, noise, delta, mode)


def describe_dp(dp: DpConfig) -> str:
    return (f"differential privacy on ({dp.mode}): clip {dp.clip_norm:g}, noise multiplier "
            f"{dp.noise_multiplier:g}, epsilon {epsilon(dp, 1):.2f} per round at delta "
            f"{dp.delta:g} (RDP accountant; boxes report their total)")


def rate_limiter(messages_per_second: float, mib_per_second: float) -> RateLimiter | None:
    if messages_per_second <= 0 and mib_per_second <= 0:
        return None
    if messages_per_second <= 0 or mib_per_second <= 0:
        raise ValueError("--rate-limit-msgs and --rate-limit-mib are both > 0 or both 0 (off)")
    return RateLimiter(RateLimits(
        messages_per_second=messages_per_second, message_burst=10 * messages_per_second,
        bytes_per_second=mib_per_second * 2**20, byte_burst=8 * mib_per_second * 2**20))


def root_link_tls(own: Any, root_ca: Path | None, root_cert: Path | None,
                  root_key: Path | None) -> Any:
    """TLS files of the region's link to the root's broker: ``--root-*`` files, each
    defaulting to the region's own (``own``, a TlsConfig or None).

    The root's broker knows a region as a device: its ACL grants ``update/<CN>`` to the
    certificate's CN, so the region needs a client certificate with CN = its region id
    from the CA the root's broker trusts. The region's own broker certificate (CN
    ``aggregator``) would be refused there (wrong CA, or ACL: the aggregator may not
    write to ``update/...``)."""
    from federation.transport.mqtt import TlsConfig

    if (root_cert is None) != (root_key is None):
        raise ValueError("--root-cert-file and --root-key-file go together (the region's "
                         "client certificate for the root's broker and its key)")
    if root_ca is None and root_cert is None:
        return own
    base = own or TlsConfig()
    return TlsConfig(root_ca or base.ca_file, root_cert or base.cert_file,
                     root_key or base.key_file)


def attach_forwarder(service: Any, state: Path, forward_to: str, root_key: Path | None,
                     region_id: str, root_aggregator_id: str, protocol: str,
                     tls: Any = None) -> Any:
    """Regional mode: connect to the root's broker (``tls``: see ``root_link_tls``) and
    attach a RegionalForwarder. Returns it (the caller closes it: it says ``offline`` on
    the root's broker and closes the link; a crash leaves the same word as its will)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from aggregator.regional.forwarder import RegionalForwarder
    from aggregator.regional.records import region_status
    from federation import topics
    from federation.transport.base import Will
    from federation.transport.mqtt import MqttTransport

    if root_key is None or not region_id:
        raise ValueError("--forward-to needs --root-key (the root's aggregator.pub) and "
                         "--region-id (the id the root registered this region under)")
    key = Ed25519PublicKey.from_public_bytes(load_public_key_bytes(root_key))
    signing_key = load_signing_key(state)
    will = Will(topics.status(service.fed_id, region_id),
                region_status(service.fed_id, region_id, signing_key, "offline"))
    link = MqttTransport(forward_to, f"region-{region_id}", tls=tls, clean_start=False,
                         protocol=protocol, will=will)
    fwd = RegionalForwarder(link, service.fed_id, region_id, signing_key, key,
                            state, root_aggregator_id=root_aggregator_id,
                            chunk_size=service.settings.chunk_size)
    fwd.start()
    service.forwarder = fwd
    return fwd
