"""The JSON CompreFace clients read, and the query options they send.

Shapes as the CompreFace 1.x REST API returns them and the official ``compreface-sdk``
(0.6.0) and Double Take parse them: a face's ``box`` is ``{probability, x_min, y_min,
x_max, y_max}``; ``subjects`` are ``{subject, similarity}`` best first; errors are
``{message, code}``. One difference, documented in docs/operations.md: ``similarity``
is SFace's cosine similarity (what ``fedface-edge identify`` prints as ``score``, the box
names a face at 0.40 by default), not CompreFace's calibrated probability.

Options every face-finding call takes, as in CompreFace: ``face_plugins`` (comma-
separated) adds per face ``landmarks`` (YuNet's five points) and, for ``calculator``,
``embedding`` (the serving model's unit vector); CompreFace's age, gender, mask and pose
plugins are not on the box and are ignored, as CompreFace ignores a plugin it was not
deployed with. ``status=true`` adds ``execution_time`` per face and ``plugins_versions``
(the detector, and the model that made the vectors: after a hot swap, the federated
round's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge.api.faces import FoundFace, Timing
from edge.vision.detect import Face

# CompreFace's error codes for the cases this API has
CODE_NO_FACE = 28
CODE_BAD_REQUEST = 26
CODE_NOT_FOUND = 24
CODE_API_KEY = 20
CODE_TOO_LARGE = 5
CODE_RATE = 29


class OptionError(ValueError):
    """A query option with a value the API does not accept."""


def box(face: Face) -> dict[str, float | int]:
    x, y, w, h = face.box
    return {"probability": round(float(face.score), 5), "x_min": round(x), "y_min": round(y),
            "x_max": round(x + w), "y_max": round(y + h)}


def similarity(score: float) -> float:
    return round(float(score), 4)  # as `fedface-edge identify --json` rounds its score


@dataclass(frozen=True)
class Extras:
    """What a request asked for beyond boxes and subjects (``face_plugins``, ``status``)."""

    landmarks: bool = False
    embedding: bool = False
    status: bool = False

    @classmethod
    def of(cls, args: dict[str, str]) -> Extras:
        plugins = {p.strip().lower() for p in args.get("face_plugins", "").split(",")}
        return cls(landmarks="landmarks" in plugins, embedding="calculator" in plugins,
                   status=args.get("status", "").strip().lower() == "true")


def face(found: FoundFace, extras: Extras) -> dict[str, Any]:
    """A face's box and the plugin outputs asked for."""
    out: dict[str, Any] = {"box": box(found.face)}
    if extras.landmarks:
        out["landmarks"] = [[round(float(x)), round(float(y))] for x, y in found.face.landmarks]
    if extras.embedding:
        out["embedding"] = [round(float(v), 6) for v in found.embedding]
    return out


def _versions(model_version: str) -> dict[str, str]:
    return {"detector": "yunet", "calculator": model_version}


def recognition(faces: list[FoundFace], timing: Timing, extras: Extras) -> dict[str, Any]:
    return _answer(faces, timing, extras, with_subjects=True)


def detection(faces: list[FoundFace], timing: Timing, extras: Extras) -> dict[str, Any]:
    return _answer(faces, timing, extras, with_subjects=False)


def _answer(faces: list[FoundFace], timing: Timing, extras: Extras,
            with_subjects: bool) -> dict[str, Any]:
    """Recognise and detect answer alike; detection has no subjects and no embedding time."""
    result = []
    for f in faces:
        item = face(f, extras)
        if with_subjects:
            item["subjects"] = [{"subject": name, "similarity": similarity(score)}
                                for name, score in f.subjects]
        if extras.status:
            item["execution_time"] = {"detector": round(timing.detect_ms, 2)}
            if with_subjects:
                item["execution_time"]["calculator"] = round(timing.embed_ms, 2)
        result.append(item)
    answer: dict[str, Any] = {"result": result}
    if extras.status:
        # the model of this frame's vectors, not the engine's state read later: a swap
        # may land in between, and the answer names the model its scores came from
        answer["plugins_versions"] = _versions(faces[0].model_version)
    return answer


def error(message: str, code: int) -> dict[str, Any]:
    return {"message": message, "code": code}


def number(args: dict[str, str], name: str, default: float, low: float,
           high: float | None = None) -> float:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise OptionError(f"{name} must be a number, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        allowed = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
        raise OptionError(f"{name} must be {allowed}, got {raw!r}")
    return value


def find_options(args: dict[str, str]) -> dict[str, Any]:
    """``limit`` (0: every face), ``det_prob_threshold`` (0-1), ``prediction_count``
    (subjects per face, default 1). ``face_plugins`` and ``status``: ``Extras``."""
    return {"limit": int(number(args, "limit", 0, 0)),
            "det_prob_threshold": number(args, "det_prob_threshold", 0.0, 0.0, 1.0),
            "prediction_count": int(number(args, "prediction_count", 1, 0))}
