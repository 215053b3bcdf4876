"""One emulated edge box of the demo, run as its own process by ``edge.demo.run``.

``python -m edge.demo.box BOX.json``: enrols the box's people with the real pipeline
(YuNet -> align -> SFace), measures identification accuracy on its held-out photos,
then runs the federation client (real trainer when torch is installed) until SIGTERM.
Progress goes to stdout as one JSON object per line prefixed by ``EVENT_PREFIX`` (the
parent parses them); logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.box import Box, build_box
from edge.config import EdgeSettings
from edge.federated.api import ClientConfig, ClientEvent
from edge.federated.verdicts import RoundVerdicts
from edge.gallery.holdout import EVERY, is_calibration_person
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD
from edge.gallery.store import Gallery
from edge.serving.calibration import MIN_HELD_OUT_PEOPLE, MIN_PEOPLE
from edge.serving.recognizer import Recognizer
from edge.training.api import LocalTrainer
from edge.vision.pipeline import FacePipeline
from federation.crypto.keys import load_secret_context, read_private_key, read_public_key
from federation.memory import BOX_MALLOC, pin_malloc
from federation.signals import stop_on_signals
from federation.transport.base import Will
from federation.transport.mqtt import MqttTransport
from models.federated_parts import DEFAULT_PART, FederatedPart

log = logging.getLogger(__name__)

EVENT_PREFIX = "FEDFACE-EVENT "
# the fewest people (enrolment ids 1, 2, ...) of whom enough are calibration people for a
# federated model to get its own threshold: 10 (ids 5 and 10)
OWN_THRESHOLD_PEOPLE = next(n for n in range(MIN_PEOPLE, 10_000) if sum(
    is_calibration_person(i) for i in range(1, n + 1)) >= MIN_HELD_OUT_PEOPLE)
_emit_lock = threading.Lock()


def emit(kind: str, /, **data: Any) -> None:
    line = json.dumps({"event": kind, "t": time.time(), **data}, sort_keys=True)
    with _emit_lock:
        try:
            sys.stdout.write(EVENT_PREFIX + line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # the parent stopped reading (shutting down)
            pass


@dataclass
class HeldOut:
    names: list[str]
    crops: list[np.ndarray]
    strangers: list[np.ndarray]  # people no box enrolled, through this box's camera


Skip = Callable[[Path, str, str], None]  # (photo, which photo, why) of a photo left out


def enrol(pipeline: FacePipeline, gallery: Gallery, people: list[dict[str, Any]],
          strangers: list[str], skip: Skip = lambda *_: None) -> HeldOut:
    """Enrol the people, embed their held-out photos and the strangers'; every photo
    without a face (or that cannot be read) goes to ``skip`` and is left out."""
    recognizer = Recognizer(pipeline, gallery, threshold=0.0)
    held = HeldOut([], [], [])
    for person in people:
        outcome = recognizer.enroll_images(person["name"], [Path(p) for p in person["enrol"]])
        for photo, reason in outcome.skipped:
            skip(Path(photo), "enrolment photo", reason)
        if not outcome.added:
            log.warning("%s: no usable enrolment photo", person["name"])
            emit("not_enrolled", person=person["name"])
            continue
        for path in person["heldout"]:
            try:
                face = pipeline.embed_image_file(Path(path))
            except Exception as exc:  # a held-out photo without a face is left out
                skip(Path(path), "held-out photo", str(exc))
                continue
            held.names.append(person["name"])
            held.crops.append(face.crop)
    for stranger in strangers:
        try:
            held.strangers.append(pipeline.embed_image_file(Path(stranger)).crop)
        except Exception as exc:  # as a held-out photo
            skip(Path(stranger), "stranger's photo", str(exc))
    return held


def skip_event(cfg: dict[str, Any]) -> Skip:
    """``enrol``'s ``skip`` for a demo box: logged, and an event naming the photo of the
    faces folder it was taken from (the parent prints it: not only in box.log)."""
    originals: dict[str, str] = cfg.get("originals", {})
    camera = cfg.get("camera", "clean")

    def skip(path: Path, what: str, reason: str) -> None:
        log.info("%s %s skipped: %s", what, path, reason)
        original = originals.get(str(path), str(path))
        shot = "it" if original == str(path) else f"the {camera} camera's shot of it ({path})"
        emit("skipped", file=original, what=what, reason=reason.replace(str(path), shot))
    return skip


def accuracy(embed: Any, version: str, gallery: Gallery, held: HeldOut,
             threshold: float = DEFAULT_MATCH_THRESHOLD) -> float | None:
    """Share of held-out photos recognised as the right person at the served model's
    threshold (a right best match under it counts as a miss, as at the kiosk)."""
    if not held.crops:
        return None
    matches = gallery.identify_many(embed(held.crops), version, threshold=threshold)
    right = sum(m.name == n for m, n in zip(matches, held.names, strict=True))
    return right / len(held.names)


def strangers_named(embed: Any, version: str, gallery: Gallery, held: HeldOut,
                    threshold: float = DEFAULT_MATCH_THRESHOLD) -> float | None:
    """Share of the strangers' photos named as someone at the served model's threshold:
    what a lower threshold costs (None without strangers)."""
    if not held.strangers:
        return None
    matches = gallery.identify_many(embed(held.strangers), version, threshold=threshold)
    return sum(m.name is not None for m in matches) / len(matches)


def own_check(verdicts: RoundVerdicts, round_no: int) -> dict[str, Any] | None:
    """The box's own before/after of a round, as ``fedface-edge model status`` and the
    kiosk show it: the canary's leave-one-out identification over the enrolment crops,
    served model -> round's model; when the canary did not compare them, only why, as
    model status says it (None: no verdict)."""
    verdict = next((v for v in reversed(verdicts.all()) if v.round == round_no), None)
    if verdict is None:
        return None
    if verdict.before is None or verdict.after is None:
        return {"reason": verdict.reason}  # e.g. "only 4 probe(s), 10 needed: ..."
    return {"before": verdict.before, "after": verdict.after, "probes": verdict.probes}


def make_trainer(cfg: dict[str, Any], part: FederatedPart, box: Box,
                 base: np.ndarray) -> tuple[LocalTrainer, str]:
    try:
        from edge.training.trainer import TrainConfig, check_torch

        check_torch()
        # the trainer's own defaults, with a time budget so the demo stays short; each
        # round in its own low-priority process, as on a real box (fedface-edge join)
        train_cfg = TrainConfig(time_budget_s=float(cfg.get("train_budget_s", 30.0)))
        trainer = box.trainer(part, train_cfg, isolate=True)
    except ImportError as exc:
        log.warning("torch is not installed (%s): FALLING BACK to NumpyDriftTrainer, "
                    "which does not learn", exc)
    else:
        return trainer, "torch"
    from edge.training.drift import NumpyDriftTrainer

    n = sum(len(v) for v in box.gallery().federated_training_crops().values())
    return NumpyDriftTrainer(part, base, cfg["device_id"], max(1, n)), "numpy-drift (NOT learning)"


def run(cfg: dict[str, Any]) -> int:
    model_dir = Path(cfg["model_dir"]) if cfg.get("model_dir") else None
    # the same assembly and data-dir layout as a real box (edge.box), so the fedface-edge
    # commands work on a demo box's data dir as on any other
    box = build_box(EdgeSettings(data_dir=Path(cfg["data_dir"]), model_dir=model_dir,
                                 threads=1))
    part = box.part(cfg.get("part", DEFAULT_PART))
    pipeline = box.pipeline()
    gallery = box.gallery()
    t0 = time.perf_counter()
    held = enrol(pipeline, gallery, cfg["people"], cfg.get("strangers", []), skip_event(cfg))
    base_version = pipeline.embedder.version
    acc0 = accuracy(pipeline.embedder.embed, base_version, gallery, held)
    named0 = strangers_named(pipeline.embedder.embed, base_version, gallery, held)
    counts = gallery.count_rows()
    calibration = sum(is_calibration_person(p.id) for p in gallery.people() if p.crops)
    emit("enrolled", camera=cfg.get("camera", "clean"), people=counts["people"],
         crops=counts["crops"], heldout=len(held.crops), accuracy=acc0,
         threshold=DEFAULT_MATCH_THRESHOLD, strangers=len(held.strangers),
         strangers_named=named0, calibration_people=calibration,
         # each federated model at its own threshold (edge.serving.calibration), else 0.40
         own_threshold=box.settings.calibrate_threshold and counts["people"] >= MIN_PEOPLE
         and calibration >= MIN_HELD_OUT_PEOPLE,
         threshold_needs=f"{MIN_PEOPLE} people, {MIN_HELD_OUT_PEOPLE} of them calibration "
         f"people (one enrolled person in {EVERY}: {OWN_THRESHOLD_PEOPLE} or more people)",
         seconds=time.perf_counter() - t0)

    sink = box.model_sink(part)
    base = sink.base_vector()
    trainer, trainer_kind = make_trainer(cfg, part, box, base)
    emit("trainer", kind=trainer_kind)

    verdicts = RoundVerdicts(box.federation_dir)

    def on_event(event: ClientEvent) -> None:
        data = {k: v for k, v in event.data.items() if k != "vector"}
        if event.kind == "applied" and sink.embedder is not None:
            state = sink.engine.state  # one read: the model and its own threshold
            data["threshold"] = sink.engine.threshold_for(state)
            data["accuracy"] = accuracy(state.embedder.embed, state.embedder.version,
                                        gallery, held, data["threshold"])
            data["strangers_named"] = strangers_named(state.embedder.embed,
                                                      state.embedder.version, gallery, held,
                                                      data["threshold"])
        if event.kind in ("applied", "result_rejected"):
            data["check"] = own_check(verdicts, event.round)
        fit = getattr(trainer, "last_result", None)  # the round's training, just done
        if event.kind == "submitted" and fit is not None:
            # what --train-budget bounds: the optimisation steps (edge.training.loop.fit),
            # not the round's process start or its first extraction of the trunk features
            data["fit_s"] = fit.seconds
        emit(event.kind, round=event.round, **data)

    def transport(will: Will) -> MqttTransport:
        return MqttTransport(cfg["broker"], cfg["device_id"], will=will,
                             protocol=cfg.get("protocol", "5"), reconnect_max_delay=5)

    client = box.federation_client(
        ClientConfig(cfg["fed"], cfg["device_id"], retry_seconds=float(cfg.get("retry_s", 30))),
        transport, load_secret_context(Path(cfg["secret_context"])),
        read_private_key(Path(cfg["device_key"])), read_public_key(Path(cfg["aggregator_key"])),
        trainer, sink, on_event=on_event, base=base,
    )
    stop = threading.Event()
    with stop_on_signals(stop):  # no handler that sets the Event: it hung on its lock
        client.start()
        emit("started")
        stop.wait()
        client.stop()
    box.close()
    emit("stopped", model=client.version)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m edge.demo.box BOX.json\n")
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pin_malloc(BOX_MALLOC)  # as every box process (federation.memory)
    cfg = json.loads(Path(args[0]).read_text())
    try:
        return run(cfg)
    except Exception as exc:
        log.exception("box %s failed", cfg.get("device_id"))
        emit("failed", error=f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
