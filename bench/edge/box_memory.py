"""Memory of a federating box's long-lived process (``fedface-edge join``), stage by stage.

    .venv/bin/python -m bench.edge.box_memory [--lfw DIR] [--people 8] [--per-person 4]

One child process per mode plays the box: it enrols ``--people`` x ``--per-person``
LFW photos, opens the hot swapper of the default federated part (it warms the trunk
features of every enrolled crop in the background), then runs one training round
through ``TorchLocalTrainer``. Printed per stage: RSS and peak RSS (psutil / ru_maxrss)
and, at the end, whether torch was imported into the box's process.

Modes, in the same run:
- ``isolated``: the product's ``join`` (the round, its trunk features and torch live in
  a child process that exits after the round);
- ``in-process``: the baseline, the round run inside the box's process (what
  ``fedface-edge train`` and the demo's boxes do to save the child's start-up).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common.lfw import default_lfw_dir
from bench.rig.compare import Measured, comparison, print_comparisons

REPO = Path(__file__).resolve().parent.parent

_BOX = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import psutil
from federation.memory import BOX_MALLOC, pin_malloc
pin_malloc(BOX_MALLOC)  # as the fedface-edge entry point does
lfw, people_n, per_person = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
isolate = sys.argv[4] == "isolated"
proc, stages = psutil.Process(), []
def mark(stage):
    stages.append({"stage": stage, "rss_mb": proc.memory_info().rss / 2**20,
                   "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
mark("python started")
from edge.gallery.store import Gallery
from edge.serving.sink import open_model_sink
from edge.vision.pipeline import FacePipeline
from edge.serving.recognizer import Recognizer
from models.federated_parts import DEFAULT_PART, get_part
from models.registry import model_path, optimised_sface_path
mark("imports")
work = Path(tempfile.mkdtemp(prefix="fedface-box-memory-"))
pipeline = FacePipeline.from_model_dir(None, threads=1)
gallery = Gallery.open(work / "gallery")
recognizer = Recognizer(pipeline, gallery, 0.40)
folders = [p for p in sorted(lfw.iterdir()) if len(list(p.glob("*.jpg"))) >= per_person]
for person in folders[:people_n]:
    recognizer.enroll_images(person.name, sorted(person.glob("*.jpg"))[:per_person])
mark(f"pipeline + {people_n} people enrolled")
part = get_part(DEFAULT_PART)
sink = open_model_sink(optimised_sface_path(None), part, work / "models", gallery, threads=1)
deadline = time.monotonic() + 120
while sink.assets.warm() and time.monotonic() < deadline:
    time.sleep(0.5)
time.sleep(2.0)
mark("hot swapper, trunk features warmed")
from edge.training.trainer import TorchLocalTrainer, TrainConfig
trainer = TorchLocalTrainer(model_path("sface", None), gallery.crops_by_person, work / "train",
                            part, TrainConfig(time_budget_s=10.0), isolate=isolate, niceness=0)
update = trainer.local_update(None, 1)
mark(f"after a training round ({update.n_samples} crops)")
print(json.dumps({"stages": stages, "torch_imported": "torch" in sys.modules}))
sink.stop()
"""


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, "-c", _BOX, str(args.lfw), str(args.people),
                          str(args.per_person), mode], capture_output=True, text=True,
                         cwd=REPO, timeout=1200)
    if out.returncode != 0:
        raise SystemExit(f"{mode} box failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, default=default_lfw_dir())
    parser.add_argument("--people", type=int, default=8)
    parser.add_argument("--per-person", type=int, default=4)
    args = parser.parse_args()
    results = {mode: run_mode(mode, args) for mode in ("isolated", "in-process")}
    print(f"box process memory, {args.people} people x {args.per_person} photos, default "
          "part; RSS / peak RSS in MB")
    print(f"{'stage':42s}" + "".join(f"{m:>22s}" for m in results))
    for i, stage in enumerate(results["isolated"]["stages"]):
        cells = "".join(f"{r['stages'][i]['rss_mb']:>12.0f} / {r['stages'][i]['peak_mb']:>6.0f}"
                        for r in results.values())
        print(f"{stage['stage']:42s}{cells}")
    print("torch imported into the box's process: " + ", ".join(
        f"{m} {r['torch_imported']}" for m, r in results.items()))
    iso, base = (results[m]["stages"][-1]["rss_mb"] for m in ("isolated", "in-process"))
    print_comparisons("bench.edge.box_memory", [comparison(
        "box process RSS after a round", Measured.of("round in its own process", [iso]),
        Measured.of("round in process", [base]), "MB", "{:.0f}")])


if __name__ == "__main__":
    main()
