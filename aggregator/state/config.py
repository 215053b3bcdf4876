"""The aggregator's state directory: config, public CKKS context, signing key.

Layout (created by ``fedface-aggregator init``)::

    config.json                 federation id, aggregator id, round defaults
    federation-public.tenseal   the public-only CKKS context (0644)
    aggregator.key              Ed25519 signing key (0600): signs announce/ack/result
    aggregator.pub              its public key (PEM): give it to every box
    sealed/<device>.ffsc        the key epoch sealed to each box (``keys install``), relayed
    state.db, blobs/, spool/    see store.py / spool.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aggregator.state.store import Store, StoreError
from federation import topics
from federation.crypto.ckks import FederationContext
from federation.crypto.keys import (
    PUBLIC_CONTEXT_NAME,
    load_public_context,
    read_private_key,
    write_private_key,
    write_public_key,
)
from federation.crypto.packing import DEFAULT_COUNT_SCALE
from federation.files import PRIVATE_DIR, make_dirs, write_atomic

CONFIG_NAME = "config.json"
# the current key epoch's bundles, one sealed to each box (aggregator.rounds.epochs)
SEALED_DIR = "sealed"
SEALED_SUFFIX = ".ffsc"
KEY_NAME = "aggregator.key"
PUB_NAME = "aggregator.pub"


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PkiConfig(_Section):
    """Where the operator's CA and the broker's files are (for devices add/revoke)."""

    ca_dir: Path = Field(description="Federation CA directory (ca.key, ca.crt, crl.pem, "
                         "issued.json): signs device certificates and the CRL.")
    broker_dir: Path | None = Field(default=None, description="Broker directory the CRL is "
                                    "copied to on revoke (/etc/mosquitto/fedface).")
    broker_pid_file: Path | None = Field(default=None, description="Broker pid file: revoke "
                                         "sends SIGHUP to it so Mosquitto rereads the CRL.")
    broker_reload_command: list[str] = Field(
        default_factory=list, description="Command that reloads the broker after a revoke, "
        'e.g. ["systemctl", "reload", "mosquitto"] (used when broker_pid_file is unset).')


class BrokerClientConfig(_Section):
    """How operator commands (``status``) reach the broker as the aggregator."""

    url: str = Field(pattern=r"^mqtts?://", description="mqtts://host:8883 of the broker.")
    ca_file: Path | None = Field(default=None, description="CA certificate of the broker.")
    cert_file: Path | None = Field(default=None, description="Aggregator client certificate "
                                   "(CN aggregator).")
    key_file: Path | None = Field(default=None, description="Its private key (0600).")


class AggregatorConfig(_Section):
    """``config.json`` of the state directory. Unknown keys are rejected; secrets are never
    in it (it names key files)."""

    fed: str = Field(pattern=ID_PATTERN, description="Federation id (an MQTT topic level).")
    key_id: str = Field(description="Key id of the federation's CKKS public context.")
    aggregator_id: str = Field(default="aggregator", pattern=ID_PATTERN,
                               description="Sender id of the aggregator's messages.")
    initial_model: str = Field(default="base", description="Model version round 1 builds on.")
    count_scale: float = Field(default=DEFAULT_COUNT_SCALE, gt=0,
                               description="c = 1/count_scale, federation-wide constant.")
    part_key: str = Field(default="", description="Federated parameter set key.")
    vector_length: int | None = Field(default=None, gt=0, description="Values per update; "
                                      "null: taken from the first update.")
    pki: PkiConfig | None = Field(default=None, description="Operator PKI (set by init "
                                  "--ca-dir).")
    broker: BrokerClientConfig | None = Field(default=None, description="Broker access for "
                                              "operator commands.")
    budget: dict[str, Any] | None = Field(default=None, description="The declared size and "
                                          "the CKKS budget init recorded for it "
                                          "(federation.crypto.budget); null: none declared.")


class ConfigError(StoreError):
    """config.json is invalid: message lists key path + value + reason."""


def describe_validation_error(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(root)"
        if error["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        else:
            problems.append(f"{key} = {error.get('input')!r}: {error['msg']}")
    return f"invalid {source}: " + "; ".join(problems)


def init_state(
    state_dir: Path,
    fed: str,
    public_context: Path,
    *,
    aggregator_id: str = "aggregator",
    initial_model: str = "base",
    count_scale: float = DEFAULT_COUNT_SCALE,
    part_key: str = "",
    vector_length: int | None = None,
    pki: PkiConfig | None = None,
    broker: BrokerClientConfig | None = None,
    budget: dict[str, Any] | None = None,
) -> AggregatorConfig:
    """Create a state directory. Refuses a secret context and an existing state."""
    topics.prefix(fed)  # validates the federation id
    topics.ack(fed, aggregator_id)  # validates the aggregator id as a topic level
    if count_scale <= 0:
        raise ValueError("count scale must be > 0")
    ctx = load_public_context(public_context)  # raises secret_key_refused for a secret one
    state_dir = Path(state_dir)
    if (state_dir / CONFIG_NAME).exists():
        raise StoreError(f"{state_dir} is already initialised (found {CONFIG_NAME})")
    # 0700: it holds the aggregator's signing key (whatever the umask: issue 15)
    make_dirs(state_dir, PRIVATE_DIR)
    write_atomic(state_dir / PUBLIC_CONTEXT_NAME, Path(public_context).read_bytes(),
                 mode=0o644)
    key = Ed25519PrivateKey.generate()
    write_private_key(state_dir / KEY_NAME, key)
    write_public_key(state_dir / PUB_NAME, key.public_key())
    cfg = AggregatorConfig(
        fed=fed, key_id=ctx.key_id, aggregator_id=aggregator_id, initial_model=initial_model,
        count_scale=count_scale, part_key=part_key, vector_length=vector_length, pki=pki,
        broker=broker, budget=budget,
    )
    save_config(state_dir, cfg)
    Store(state_dir).close()
    return cfg


def load_config(state_dir: Path) -> AggregatorConfig:
    path = Path(state_dir) / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(
            f"{state_dir} is not an aggregator state directory: run `fedface-aggregator init`"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # found by bench.federation.fuzz: a non-UTF-8 file
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
                          ) from None
    return parse_config(data, str(path))


def parse_config(data: Any, source: str) -> AggregatorConfig:
    try:
        return AggregatorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def save_config(state_dir: Path, cfg: AggregatorConfig) -> None:
    text = cfg.model_dump_json(indent=2, exclude_none=True)
    write_atomic(Path(state_dir) / CONFIG_NAME, text.encode(), mode=0o644)  # no secret in it


def load_context(state_dir: Path, cfg: AggregatorConfig) -> FederationContext:
    ctx = load_public_context(Path(state_dir) / PUBLIC_CONTEXT_NAME)
    if ctx.key_id != cfg.key_id:
        raise StoreError(
            f"the public context in {state_dir} is of key {ctx.key_id}, config says {cfg.key_id}"
        )
    return ctx


def load_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    return read_private_key(Path(state_dir) / KEY_NAME)


def sealed_dir(state_dir: Path) -> Path:
    return Path(state_dir) / SEALED_DIR
