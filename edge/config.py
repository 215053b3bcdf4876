"""Settings of one edge box.

Where each value comes from, first match wins: an explicit value (CLI option), the
environment (``FEDFACE_DATA_DIR``, ``FEDFACE_MODEL_DIR``), then the default below.
A settings file (added later) goes through :meth:`EdgeSettings.from_mapping`, which reports
a bad entry as key path + value + reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.errors import FedFaceError

DATA_DIR_ENV = "FEDFACE_DATA_DIR"
MODEL_DIR_ENV = "FEDFACE_MODEL_DIR"

# Mirrors edge.gallery.DEFAULT_MATCH_THRESHOLD (kept literal so importing the settings
# does not import numpy/sqlite); a test checks that both agree.
DEFAULT_MATCH_THRESHOLD = 0.40


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
        ge=-1.0,
        le=1.0,
        description="SFace cosine similarity at or above which a face is reported as the "
        "closest enrolled person. Higher: stricter (fewer strangers accepted, more known "
        "people reported unknown). Tune with `python -m bench.identification`.",
    )
    threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="CPU threads for the recogniser (ONNX Runtime intra-op threads). One "
        "per stream is the right choice on 2-4 core boxes that also capture and train.",
    )

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
        else:
            problems.append(f"{key} = {error.get('input')!r}: {error['msg']}")
    return f"invalid {source}: " + "; ".join(problems)
