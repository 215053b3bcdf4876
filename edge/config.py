"""Settings of one edge box, resolved the same way for every command.

Where each value comes from, first match wins (:func:`resolve_settings`):

1. a command-line option (``--data-dir``, ``--model-dir``, ``--threads``);
2. the box's config file: ``--config FILE``, else ``FEDFACE_CONFIG``, else
   ``<data dir>/edge.toml`` when it exists (written by ``fedface-edge provision``);
3. the environment (``FEDFACE_DATA_DIR``, ``FEDFACE_MODEL_DIR``, ``FEDFACE_CANARY_MARGIN``);
4. the defaults below; for the models, ``<data dir>/models`` when the installer put them
   there, else the models registry's cache.

A bad entry, wherever it comes from, is reported as key path + value + reason.

May import: edge.errors, edge.serving, models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.errors import FedFaceError
from edge.serving.canary import CanaryPolicy
from models.federated_parts import DEFAULT_PART, PARTS
from models.registry import YUNET

DATA_DIR_ENV = "FEDFACE_DATA_DIR"
MODEL_DIR_ENV = "FEDFACE_MODEL_DIR"
INSTALLED_MODELS = "models"  # <data dir>/models: where the installer puts the models

# Mirrors edge.gallery.store.DEFAULT_MATCH_THRESHOLD (kept literal so importing the settings
# does not import numpy/sqlite); a test checks that both agree. Under MIN a box names
# strangers (helper-56's -0.2, a stray minus, named Kofi Annan as Tony Blair at 0.22;
# bench.edge.identification: 6% of strangers named at 0.34 already).
DEFAULT_MATCH_THRESHOLD, MIN_MATCH_THRESHOLD = 0.40, 0.20


class ConfigError(FedFaceError):
    """Invalid box settings (a bad option value or settings file entry)."""

    exit_code = 7


def default_data_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("fedface"))


def _from_env(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


class EdgeSettings(BaseModel):
    """Box settings (see each field's description)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        default_factory=lambda: _from_env(DATA_DIR_ENV) or default_data_dir(),
        description="Directory of the box's own data (gallery database, events). Holds "
        "personal data: created 0700. Env: FEDFACE_DATA_DIR.",
    )
    model_dir: Path | None = Field(
        default_factory=lambda: _from_env(MODEL_DIR_ENV),
        description="Directory of the verified model files; None means the models "
        "registry's cache (user cache dir). Env: FEDFACE_MODEL_DIR.",
    )
    match_threshold: float = Field(
        default=DEFAULT_MATCH_THRESHOLD,
        ge=MIN_MATCH_THRESHOLD,
        le=1.0,
        description="SFace cosine similarity at or above which a face is reported as the "
        "closest enrolled person. Higher: stricter (fewer strangers accepted, more known "
        "people reported unknown). Tune with `python -m bench.edge.identification`. It is "
        "the pretrained model's; each federated model gets its own, calibrated to it "
        "(calibrate_threshold).",
    )
    calibrate_threshold: bool = Field(
        default=True,
        description="Serve each federated model at its own threshold: match_threshold "
        "carried from the pretrained model's scores of the box's enrolment crops to the "
        "new model's (edge.serving.calibration), made at each swap and stored with the "
        "model. Training lowers the cosines; without this a better model names fewer of "
        "the box's people at the same threshold. Off: every model at match_threshold.",
    )
    threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="CPU threads for the recogniser (ONNX Runtime intra-op threads). One "
        "per stream is the right choice on 2-4 core boxes that also capture and train.",
    )
    canary_margin: float = Field(
        default_factory=lambda: CanaryPolicy.from_env().margin,
        ge=0.0,
        le=1.0,
        description="A federated model is refused if the box's leave-one-out "
        "identification accuracy on its own people drops by more than this (absolute; "
        "0.02 = 2 points). Env: FEDFACE_CANARY_MARGIN.",
    )

    def canary_policy(self) -> CanaryPolicy:
        return CanaryPolicy(margin=self.canary_margin, threshold=self.match_threshold)

    @field_validator("data_dir", "model_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def gallery_dir(self) -> Path:
        return self.data_dir

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "settings") -> EdgeSettings:
        """Validate ``values``; unset (None) entries fall back to env/defaults."""
        given = {key: value for key, value in values.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, source),
                              hint="fix the value or remove it to use the default") from None


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``source: key.path = value: reason``."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(root)"
        if error["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown setting")
        elif error["type"] == "missing":  # pydantic's input is then the enclosing section
            problems.append(f"{key}: missing (required)")
        else:
            problems.append(f"{key} = {error.get('input')!r}: {error['msg']}")
    return f"invalid {source}: " + "; ".join(problems)


# --- the box's config file (written by `fedface-edge provision`) ------------------------
CONFIG_ENV = "FEDFACE_CONFIG"
CONFIG_NAME = "edge.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoxSection(_Section):
    device_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="This box's device id: its certificate CN, MQTT username and topic "
        "level. Letters, digits, '_', '.', '-'.")
    fed: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                     description="Federation id (from the key bundle).")
    data_dir: Path = Field(description="Gallery, federation state, keys and certificates "
                           "(0700).")
    model_dir: Path | None = Field(default=None, description="Verified model directory; "
                                   "empty: the models registry's cache.")
    threads: int = Field(default=1, ge=1, le=64, description="ONNX Runtime threads.")
    match_threshold: float = Field(default=DEFAULT_MATCH_THRESHOLD, ge=MIN_MATCH_THRESHOLD, le=1.0,
                                   description="SFace cosine similarity needed to name a face.")
    calibrate_threshold: bool | None = Field(
        default=None, description="Each federated model at its own threshold, calibrated "
        "on the box's enrolment crops at each swap (empty: true).")


class CameraSection(_Section):
    source: str = Field(description="Frame source: /dev/fedface-camera, /dev/videoN, "
                        "rtsp://..., a video file or dir:FOLDER.")


class BrokerSection(_Section):
    url: str = Field(pattern=r"^mqtts?://", description="mqtts://host:8883 (TLS) of the "
                     "federation broker; mqtt:// only for a lab broker without TLS.")
    ca_file: Path = Field(description="Federation CA certificate (verifies the broker).")
    cert_file: Path = Field(description="This box's client certificate (CN = device id), "
                            "returned by the operator's `devices add`.")
    key_file: Path = Field(description="This box's TLS private key (0600, never leaves "
                           "the box).")
    protocol: str = Field(default="5", pattern=r"^(5|3\.1\.1)$",
                          description="MQTT protocol version: 5 or 3.1.1.")


class FederationSection(_Section):
    key_id: str = Field(description="Federation CKKS key id (checked against the secret "
                        "context).")
    aggregator_id: str = Field(default="aggregator", description="Aggregator's sender id.")
    secret_context: Path = Field(description="federation-secret.tenseal (0600).")
    device_key: Path = Field(description="This box's Ed25519 message-signing key (0600).")
    aggregator_key: Path = Field(description="aggregator.pub: verifies announcements "
                                 "and results.")
    part: str = Field(default=DEFAULT_PART, description="Federated parameter set "
                      "(the same on every box of the federation; the aggregator announces it).")
    canary_margin: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Refuse a federated model that lowers "
        "the box's own identification accuracy by more than this (empty: 0.02).")

    @field_validator("part")
    @classmethod
    def _known_part(cls, value: str) -> str:
        if value not in PARTS:
            known = ", ".join(sorted(PARTS))
            raise ValueError(f"unknown federated part {value!r} (known: {known})")
        return value


class DoctorSection(_Section):
    min_free_disk_mb: int = Field(default=1024, ge=0, description="`doctor` fails below "
                                  "this much free space in data_dir (MiB).")
    max_clock_skew_s: float = Field(default=120.0, gt=0, description="`doctor` fails when "
                                    "the clock is behind a signed timestamp by more (s).")
    broker_timeout_s: float = Field(default=10.0, gt=0, description="`doctor`: seconds to "
                                    "wait for the TLS connection to the broker.")


class EventsSection(_Section):
    mqtt_url: str = Field(pattern=r"^mqtts?://", description="Broker for visit events and "
                          "Home Assistant discovery (a local one, e.g. Home Assistant's "
                          "Mosquitto; not the federation broker: names stay off it).")
    username: str | None = Field(default=None, description="MQTT username, if the broker "
                                 "needs one.")
    password_file: Path | None = Field(default=None, description="File holding the MQTT "
                                       "password (0600).")
    ca_file: Path | None = Field(default=None, description="CA certificate of an mqtts:// "
                                 "events broker.")
    include_crop: bool = Field(default=False, description="Put each visit's best face crop "
                               "(PNG, base64) in its MQTT events; off: face images never "
                               "leave the box.")
    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[A-Za-z0-9_/-]+$",
                                  description="Home Assistant MQTT discovery prefix.")


class BoxConfig(_Section):
    """The box's config file (TOML). Unknown keys are rejected. Secrets are never in it:
    it names the files that hold them (0600), and the bundle passphrase comes from a file
    or the FEDFACE_BUNDLE_PASSPHRASE environment variable."""

    box: BoxSection
    camera: CameraSection
    broker: BrokerSection
    federation: FederationSection
    doctor: DoctorSection = Field(default_factory=DoctorSection)
    events: EventsSection | None = None

    def settings_values(self) -> dict[str, Any]:
        """The EdgeSettings this file sets (unset entries are left to env/defaults)."""
        values: dict[str, Any] = {
            "data_dir": self.box.data_dir, "model_dir": self.box.model_dir,
            "threads": self.box.threads, "match_threshold": self.box.match_threshold,
            "calibrate_threshold": self.box.calibrate_threshold,
            "canary_margin": self.federation.canary_margin}
        return {key: value for key, value in values.items() if value is not None}

    def settings(self) -> EdgeSettings:
        return EdgeSettings(**self.settings_values())


class LocalBoxSection(_Section):
    """``[box]`` of a box in no federation: its settings only (no device or federation id)."""

    data_dir: Path | None = Field(default=None, description="Gallery and events (0700).")
    model_dir: Path | None = Field(default=None, description="Verified models.")
    threads: int | None = Field(default=None, ge=1, le=64, description="ONNX Runtime threads.")
    match_threshold: float | None = Field(default=None, ge=MIN_MATCH_THRESHOLD, le=1.0,
                                          description="SFace cosine needed to name a face.")


class StandaloneConfig(_Section):
    """The edge.toml of a box in no federation: no ``[broker]``, ``[federation]`` or
    ``box.device_id`` (helper-53's was refused as a provisioned box's missing those, and
    a kiosk on its own could not set its threshold); ``[camera]``, ``[events]`` as ever."""

    box: LocalBoxSection = Field(default_factory=LocalBoxSection)
    camera: CameraSection | None = None
    events: EventsSection | None = None

    def settings_values(self) -> dict[str, Any]:
        return {key: value for key, value in self.box.model_dump().items() if value is not None}


def default_config_path(settings: EdgeSettings | None = None) -> Path:
    """FEDFACE_CONFIG, else ``<data dir>/edge.toml``."""
    env = _from_env(CONFIG_ENV)
    if env is not None:
        return env
    return (settings or EdgeSettings()).data_dir / CONFIG_NAME


def parse_box_config(values: Mapping[str, Any], source: str) -> BoxConfig:
    try:
        return BoxConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source),
                          hint="fix the entry (every key is described in docs/operations.md)"
                          ) from None


def load_box_config(path: Path) -> BoxConfig:
    """A provisioned box's config (ConfigError for anything else, a standalone one too)."""
    return parse_box_config(_read_toml(path), str(path))


def load_config(path: Path) -> BoxConfig | StandaloneConfig:
    """The box's edge.toml: a provisioned box's, or a box's in no federation (one with no
    ``[broker]``, ``[federation]`` or ``box.device_id``)."""
    data = _read_toml(path)
    if "broker" in data or "federation" in data:
        return parse_box_config(data, str(path))
    box_keys = data["box"] if isinstance(data.get("box"), dict) else {}
    if "device_id" in box_keys or "fed" in box_keys:  # five "missing" told no one (helper-56)
        raise ConfigError(f"invalid {path}: box.device_id and box.fed are a provisioned box's, "
                          "and it has no [broker] or [federation]", hint="a box in no "
                          "federation leaves them out; fedface-edge provision writes all")
    try:
        return StandaloneConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, str(path)),
                          hint="a box in no federation takes [box] (data_dir, model_dir, "
                          "threads, match_threshold), [camera] and [events] "
                          "(docs/operations.md, 'The box config')") from None


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no box config at {path}",
                          hint="provision the box first: fedface-edge provision") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid {path}: not TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # found by bench.federation.fuzz: a non-UTF-8 file
        raise ConfigError(f"invalid {path}: not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from None
    return data


def resolve_settings(options: Mapping[str, Any], config_file: Path | None = None
                     ) -> tuple[EdgeSettings, BoxConfig | StandaloneConfig | None, Path]:
    """The box's settings, its config (a StandaloneConfig for a box in no federation,
    None when there is no file) and the config's path.

    ``options`` are the command line's values (None: not given). The config file is
    ``config_file``, else FEDFACE_CONFIG, else ``<data dir>/edge.toml``, the data dir
    being the option's, else the environment's, else the default. A file that does not
    exist (yet: ``provision`` writes it there) leaves the box unprovisioned; commands
    that need it say so (BoxContext.require_config). The config's values beat the
    environment's: a provisioned box run with a stray FEDFACE_DATA_DIR still uses the
    data dir it was provisioned with.
    """
    given = {key: value for key, value in options.items() if value is not None}
    explicit = config_file if config_file is not None else _from_env(CONFIG_ENV)
    config: BoxConfig | StandaloneConfig | None
    if explicit is not None:
        path = explicit
        config = load_config(explicit) if explicit.exists() else None
    else:
        data_dir = given.get("data_dir") or _from_env(DATA_DIR_ENV) or default_data_dir()
        path = Path(data_dir).expanduser() / CONFIG_NAME
        config = load_config(path) if path.is_file() else None
    values: dict[str, Any] = config.settings_values() if config is not None else {}
    values.update(given)
    settings = EdgeSettings.from_mapping(values, source="options" if config is None
                                         else f"options and {path}")
    installed = settings.data_dir / INSTALLED_MODELS
    if settings.model_dir is None and (installed / YUNET.filename).is_file():
        # the installer's models (firmware_scripts: <data dir>/models): a technician's
        # `FEDFACE_DATA_DIR=/var/lib/fedface fedface-edge doctor` looked in its own
        # user cache and failed (helper-58)
        settings = settings.model_copy(update={"model_dir": installed})
    return settings, config, path
