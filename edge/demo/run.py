"""``fedface-edge demo``: a whole federation on one machine, in one command.

Creates the federation keys (secret context for the boxes, public-only context for the
aggregator), initialises an aggregator (``fedface-aggregator init``/``devices add``) and
runs it as a subprocess (``fedface-aggregator serve``: edge never imports aggregator),
starts N emulated boxes as subprocesses (``python -m edge.demo.box``), each with its own
data directory, its own disjoint people taken from the faces folder and its own camera
look (``--cameras``), prints each round's progress and ends with each box's held-out
identification before and after (``edge.demo.table``). The broker is an embedded amqtt
broker unless ``--broker`` is given.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.demo.box import OWN_THRESHOLD_PEOPLE
from edge.demo.camera import box_cameras, shoot
from edge.demo.faces import DemoError, DemoOptions, pick
from edge.demo.progress import BoxProc, Progress, read_events
from edge.demo.table import before_after_table, mean_gain
from edge.gallery.match import DEFAULT_MATCH_THRESHOLD
from edge.lifetime import tethered
from federation.crypto.keys import create_federation_keys, write_private_key, write_public_key
from federation.crypto.signing import generate_signing_key
from federation.files import PRIVATE_DIR, make_dirs, open_new
from federation.transport.mqtt import parse_broker_url
from models.federated_parts import DEFAULT_PART, get_part

log = logging.getLogger(__name__)

FED_ID = "demo"


def check_broker(url: str, timeout: float = 3.0) -> None:
    try:
        parsed = parse_broker_url(url)
    except Exception as exc:
        raise DemoError(f"invalid --broker {url!r}: {exc}", "e.g. mqtt://127.0.0.1:1883") from None
    try:
        with socket.create_connection((parsed.host, parsed.port), timeout=timeout):
            pass
    except OSError as exc:
        raise DemoError(f"MQTT broker {url} is unreachable: {exc.strerror or exc}",
                        "start the broker, or omit --broker to use the embedded one") from None


def _aggregator_command() -> list[str]:
    found = shutil.which("fedface-aggregator", path=str(Path(sys.executable).parent)) or \
        shutil.which("fedface-aggregator")
    if found:
        return [found]
    return [sys.executable, "-m", "aggregator.cli"]


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DemoError(f"{what} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _serve_command(agg: list[str], protocol: str) -> list[str]:
    """``serve`` speaking the broker's MQTT version (the embedded amqtt has no MQTT 5).
    Every box retrains on its same faces every round (``--min-new-samples 0``): the demo
    shows the rounds; a real federation's boxes sit out the rounds they have nothing new
    for (serve's default, docs/operations.md "Round schedule")."""
    return [*agg, "serve", "--mqtt-protocol", protocol, "--min-new-samples", "0"]


def run_demo(opts: DemoOptions, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the federation; returns a summary. Raises DemoError with a hint on failure."""
    if opts.boxes < 1 or opts.rounds < 1 or opts.people_per_box < 2:
        raise DemoError("need --boxes >= 1, --rounds >= 1 and --people-per-box >= 2")
    if opts.images_per_person < 1:
        raise DemoError("--images-per-person must be >= 1")
    part = get_part(opts.part)
    try:
        cameras = box_cameras(opts.cameras, opts.boxes)
    except ValueError as exc:
        raise DemoError(str(exc), "--cameras takes names separated by commas") from None
    picked = pick(opts)
    plan, strangers = picked.boxes, picked.strangers
    if opts.broker:
        check_broker(opts.broker)
    workdir = _prepare_workdir(opts.workdir)
    default = "" if part.name == DEFAULT_PART else f"; a box's default is {DEFAULT_PART}"
    out(f"FedFace demo: {opts.boxes} boxes x {opts.people_per_box} people, {opts.rounds} "
        f"rounds, federated part {part.key} ({part.size:,} values{default}); work dir "
        f"{workdir}")
    out("held-out identification = share of each box's held-out photos, taken by its own "
        f"camera, named as the right person {_threshold_said(opts)}; strangers named = share "
        "of photos of people no box enrolled, through the same camera, named as someone")
    for line in picked.report(opts):
        out(line)

    embedded = None
    broker_url = opts.broker
    protocol = "5"
    if broker_url is None:
        from edge.demo.broker import EmbeddedBroker

        embedded = EmbeddedBroker().start()
        broker_url, protocol = embedded.url, "3.1.1"
        out(f"broker: embedded amqtt at {broker_url} (MQTT 3.1.1)")
    else:
        out(f"broker: {broker_url}")
    procs: list[subprocess.Popen[str]] = []
    t_start = time.time()
    failed = True
    try:
        agg_cmd = _aggregator_command()
        keys = create_federation_keys(workdir / "keys")
        agg_state = workdir / "aggregator"
        _run([*agg_cmd, "init", "--fed", FED_ID, "--state", str(agg_state), "--public-context",
              str(keys.public_context), "--part-key", part.key], "fedface-aggregator init")
        box_names = [f"box-{i + 1}" for i in range(opts.boxes)]
        box_cfgs = []
        for b_index, (name, people) in enumerate(zip(box_names, plan, strict=True)):
            box_dir = workdir / name
            make_dirs(box_dir, PRIVATE_DIR)
            shot = shoot(people, cameras[b_index], box_dir / "camera", seed=b_index)
            seen = shoot(strangers[b_index], cameras[b_index], box_dir / "camera-strangers",
                         seed=1000 + b_index)
            # the photo of the faces folder each camera shot was taken from: what the box
            # names when it finds no face in a shot
            originals = {str(s): str(o) for p, q in zip([*people, *strangers[b_index]],
                                                         [*shot, *seen], strict=True)
                         for o, s in zip(p.enrol + p.heldout, q.enrol + q.heldout, strict=True)}
            people = shot
            key = generate_signing_key()
            write_private_key(box_dir / "device.key", key)
            write_public_key(box_dir / "device.pub", key.public_key())
            _run([*agg_cmd, "devices", "add", name, "--public-key", str(box_dir / "device.pub"),
                  "--state", str(agg_state)], f"registering {name}")
            cfg = {
                "fed": FED_ID, "device_id": name, "broker": broker_url, "protocol": protocol,
                "data_dir": str(box_dir), "part": part.name, "camera": cameras[b_index].name,
                "secret_context": str(keys.secret_context),
                "device_key": str(box_dir / "device.key"),
                "aggregator_key": str(agg_state / "aggregator.pub"),
                "people": [{"name": p.name, "enrol": [str(x) for x in p.enrol],
                            "heldout": [str(x) for x in p.heldout]} for p in people],
                "strangers": [str(x) for p in seen for x in p.heldout],
                "originals": originals,
                "train_budget_s": opts.train_budget_s,
                "model_dir": os.environ.get("FEDFACE_MODEL_DIR"),
            }
            with open_new(box_dir / "box.json", 0o600, "w") as f:
                f.write(json.dumps(cfg, indent=2))
            box_cfgs.append(box_dir / "box.json")

        agg_log = open_new(agg_state / "serve.log", 0o600, "w")
        # tethered: a demo killed any way stops its aggregator and boxes with it (they
        # kept reconnecting for ever to the embedded broker that had died with it)
        agg = subprocess.Popen(
            tethered([*_serve_command(agg_cmd, protocol), "--state", str(agg_state),
                      "--broker", broker_url, "--quorum", str(opts.boxes),
                      "--rounds", str(opts.rounds),
                      "--round-deadline", str(max(120.0, opts.timeout_s))]),
            stdout=agg_log, stderr=subprocess.STDOUT, text=True)
        procs.append(agg)
        progress = Progress(box_names, opts.rounds, out)
        boxes: list[BoxProc] = []
        for name, cfg_path in zip(box_names, box_cfgs, strict=True):
            log_path = cfg_path.parent / "box.log"
            proc = subprocess.Popen(tethered([sys.executable, "-m", "edge.demo.box",
                                              str(cfg_path)]),
                                    stdout=subprocess.PIPE, stderr=open_new(log_path, 0o600, "w"),
                                    text=True, bufsize=1)
            procs.append(proc)
            box = BoxProc(name, proc, log_path)
            boxes.append(box)
            threading.Thread(target=read_events, args=(box, progress), daemon=True).start()
        out(f"aggregator and {opts.boxes} boxes started; boxes enrol their people...")

        def finished() -> bool:
            # --rounds results: an abandoned round (its base poisoned) is not one
            return len(progress.done_rounds()) >= opts.rounds or agg.poll() not in (None, 0)

        ok = progress.wait(finished, opts.timeout_s)
        if progress.failed:
            name, err = next(iter(progress.failed.items()))
            raise DemoError(f"{name} failed: {err}", f"see {workdir / name / 'box.log'}")
        if agg.poll() not in (None, 0):
            raise DemoError(f"the aggregator exited with code {agg.returncode}",
                            f"see {agg_state / 'serve.log'}")
        if not ok:
            raise DemoError(f"the federation did not finish {opts.rounds} round(s) within "
                            f"{opts.timeout_s:.0f} s", f"see the logs under {workdir}")
        done = progress.done_rounds()
        last = done[-1]
        trainers = sorted(set(progress.trainer.values()))
        summary: dict[str, Any] = {
            "workdir": str(workdir), "broker": broker_url, "rounds": opts.rounds,
            "seconds": time.time() - t_start, "trainer": trainers,
            "boxes": {
                name: {
                    "model": progress.by_round[last][name].get("applied", {}).get("model"),
                    "accuracy_before": progress.served_after(name, 0),
                    "accuracy_after": progress.served_after(name, last),
                }
                for name in box_names
            },
        }
        out(f"done in {summary['seconds']:.0f} s; trainer: {', '.join(trainers)}")
        rows = progress.history()
        for line in before_after_table(rows, done):
            out(line)
        summary["mean_gain"] = mean_gain(rows)
        failed = False
        return summary
    except KeyboardInterrupt:
        failed = False  # stopped by its user, who wants nothing of it left behind
        raise
    finally:
        _stop_all(procs)
        if embedded is not None:
            embedded.stop()
        if opts.workdir is None:
            _leave_temporary_workdir(workdir, failed, out)


def _threshold_said(opts: DemoOptions) -> str:
    """The threshold the figures are at: a federated model's own needs a box of
    OWN_THRESHOLD_PEOPLE (docs/operations.md, "Each model's own threshold")."""
    deployed = f"the deployed {DEFAULT_MATCH_THRESHOLD:.2f}"
    if opts.people_per_box < OWN_THRESHOLD_PEOPLE:
        return (f"at {deployed} (a federated model gets its own threshold, calibrated at each "
                f"swap, only on a box of {OWN_THRESHOLD_PEOPLE} or more people: these boxes "
                f"have {opts.people_per_box})")
    return ("at the served model's match threshold (its own, calibrated at each swap; a box "
            f"left with fewer than {OWN_THRESHOLD_PEOPLE} people keeps {deployed})")


def _prepare_workdir(workdir: Path | None) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="fedface-demo-"))
    workdir = Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        raise DemoError(f"work directory {workdir} is not empty",
                        "give a new or empty --workdir (the demo creates fresh keys and state)")
    make_dirs(workdir, PRIVATE_DIR)  # keys and boxes' face data go in
    return workdir


def _leave_temporary_workdir(workdir: Path, failed: bool, out: Callable[[str], None]) -> None:
    """A temp work dir holds the federation's secret key and 0.3 GB of photos of people:
    left behind, every run filled /tmp with them. It stays only for a failure's logs."""
    if failed:
        out(f"work dir kept for its logs: {workdir} (remove it when done: it holds the "
            "demo federation's secret key and its boxes' photos)")
        return
    shutil.rmtree(workdir, ignore_errors=True)
    out(f"work dir {workdir} removed (give --workdir DIR to keep the boxes' data)")


def _stop_all(procs: list[subprocess.Popen[str]]) -> None:
    for proc in reversed(procs):  # boxes first, so they say offline to a live broker
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
