"""On-device trainer: the torch tail equals the ONNX graph, trained weights patch back
into the graph, frozen parts stay frozen, and a real local round runs on LFW faces."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edge.training.api import LocalTrainer, TrainingError
from edge.training.augment import CropError
from edge.training.loop import fit
from edge.training.trainer import TorchLocalTrainer, TrainConfig, train_local
from edge.vision.align import align_face
from edge.vision.detect import FaceDetector
from models.federated_parts import PARTS, get_part
from models.onnx_graph import patch_initializers, weights_to_initializers
from models.registry import model_path
from models.trainable import TrainableTail
from models.trunk import TrunkRunner, crops_to_blob

PEOPLE = ("Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder",
          "Ariel_Sharon", "Hugo_Chavez")  # fmt: skip
PER_PERSON = 4


@pytest.fixture(scope="module")
def sface() -> Path:
    return model_path("sface")


@pytest.fixture(scope="module")
def crops_by_person(lfw_dir: Path) -> dict[str, list[np.ndarray]]:
    detector = FaceDetector(model_path("yunet"))
    out: dict[str, list[np.ndarray]] = {}
    for person in PEOPLE:
        for i in range(1, PER_PERSON + 1):
            image = cv2.imread(str(lfw_dir / person / f"{person}_{i:04d}.jpg"))
            assert image is not None
            faces = detector.detect(image)
            assert faces, f"no face in {person} {i}"
            out.setdefault(person, []).append(align_face(image, faces[0].landmarks))
    return out


@pytest.fixture(scope="module")
def trunk(sface: Path, crops_by_person: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    crops = [c for person in PEOPLE for c in crops_by_person[person]]
    runner = TrunkRunner(sface, sorted({p.cut for p in PARTS.values()}))
    out = runner.run(crops)
    out["labels"] = np.repeat(np.arange(len(PEOPLE)), PER_PERSON)
    return out


@pytest.mark.parametrize("part_name", sorted(PARTS))
def test_tail_reproduces_the_onnx_embedding(sface: Path, trunk: dict, part_name: str) -> None:
    tail = TrainableTail(sface, get_part(part_name))
    with torch.no_grad():
        emb = tail(torch.from_numpy(trunk[tail.part.cut])).numpy()
    assert np.abs(emb - trunk["fc1"]).max() < 1e-4
    assert tail.get_vector().size == tail.part.size


@pytest.mark.parametrize("part_name", ["conv14", "fc1_lora"])
def test_trained_vector_patched_into_onnx_gives_the_torch_embedding(
    sface: Path, trunk: dict, crops_by_person: dict, part_name: str
) -> None:
    part = get_part(part_name)
    tail = TrainableTail(sface, part)
    before = tail.get_vector()
    fit(tail, trunk[part.cut], trunk["labels"], TrainConfig(epochs=3, batch_size=8,
                                                             lr=1e-3, seed=1))
    vector = tail.get_vector()
    assert not np.allclose(vector, before)
    model = weights_to_initializers(onnx.load(str(sface)))
    patched = patch_initializers(model, part.onnx_weights(vector, tail.base))
    session = ort.InferenceSession(patched.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    crop = crops_by_person[PEOPLE[0]][0]
    onnx_emb = session.run(["fc1"], {"data": crops_to_blob([crop])})[0]
    with torch.no_grad():
        torch_emb = tail(torch.from_numpy(trunk[part.cut][:1])).numpy()
    assert np.abs(onnx_emb - torch_emb).max() < 1e-4
    assert np.abs(onnx_emb - trunk["fc1"][:1]).max() > 1e-3  # the patch changed the model


def test_fit_trains_only_the_part_and_keeps_batch_norm_statistics(sface: Path, trunk: dict) -> None:
    tail = TrainableTail(sface, get_part("conv14"))
    frozen = {name: buf.clone() for name, buf in tail.named_buffers()}
    assert "conv_14_batchnorm_moving_mean" in frozen and "pre_fc1_weight" in frozen
    before = tail.get_vector()
    result = fit(tail, trunk["conv_14_dw_relu"], trunk["labels"],
                 TrainConfig(epochs=4, batch_size=8, lr=1e-4, seed=0))
    for name, buf in tail.named_buffers():
        assert torch.equal(buf, frozen[name]), f"frozen tensor {name} changed"
    assert result.steps == 12
    assert np.abs(tail.get_vector() - before).max() > 1e-6


def test_the_contrastive_loss_benches_compare_trains_and_a_wrong_name_is_refused(
        sface: Path, trunk: dict) -> None:
    """CosFace's centres start at the means of the site's own photos, so its loss starts
    near zero; SupCon's does not (README, the demo's tries for issue 18)."""
    features, labels = trunk["conv_14_dw_relu"], trunk["labels"]
    cosface = fit(TrainableTail(sface, get_part("conv14")), features, labels,
                  TrainConfig(epochs=4, batch_size=24, seed=0))
    tail = TrainableTail(sface, get_part("conv14"))
    supcon = fit(tail, features, labels,
                 TrainConfig(epochs=4, batch_size=24, seed=0, loss="supcon", lr=1e-3))
    assert supcon.first_loss > 10 * cosface.first_loss
    assert supcon.last_loss < supcon.first_loss
    with pytest.raises(TrainingError, match="unknown loss 'arcface'"):
        fit(tail, features, labels, TrainConfig(loss="arcface"))


def test_local_update_in_a_low_priority_process(
    sface: Path, crops_by_person: dict, tmp_path: Path
) -> None:
    trainer: LocalTrainer = TorchLocalTrainer(
        sface, crops_by_person, tmp_path, config=TrainConfig(epochs=2, batch_size=16),
        n_views=2, niceness=0,  # the product default (10) would starve on a busy CI box
    )
    first = trainer.local_update(None, round_no=0)
    assert first.n_samples == len(PEOPLE) * PER_PERSON
    assert first.vector.dtype == np.float32 and first.vector.shape == (trainer.part.size,)
    assert np.all(np.isfinite(first.vector))
    cached = list((tmp_path / "features").rglob("*.npy"))
    assert len(cached) == len(PEOPLE) * PER_PERSON
    second = trainer.local_update(first.vector, round_no=1)
    assert not np.array_equal(second.vector, first.vector)
    assert second.seconds < first.seconds  # features came from the cache
    with pytest.raises(TrainingError, match=f"needs {trainer.part.size}"):
        trainer.local_update(np.zeros(10, np.float32), round_no=2)


def test_train_local_saves_the_vector_and_accepts_person_crop_pairs(
    sface: Path, crops_by_person: dict, tmp_path: Path
) -> None:
    pairs = [(p, c) for p in PEOPLE[:3] for c in crops_by_person[p][:2]]
    out = tmp_path / "update.npz"
    update = train_local(sface, pairs, tmp_path / "cache", out, part_name="embed_bn",
                         config=TrainConfig(epochs=1, batch_size=8), isolate=False)
    saved = np.load(out)
    assert str(saved["part"]) == "embed_bn@v1"
    assert int(saved["n_samples"]) == update.n_samples == 6
    np.testing.assert_array_equal(saved["vector"], update.vector)


def test_bad_inputs_are_refused_with_a_clear_error(
    sface: Path, crops_by_person: dict, tmp_path: Path
) -> None:
    one_person = {PEOPLE[0]: crops_by_person[PEOPLE[0]]}
    with pytest.raises(TrainingError, match="at least 2"):
        train_local(sface, one_person, tmp_path, isolate=False)
    with pytest.raises(CropError, match="112, 112, 3"):
        train_local(sface, {"a": [np.zeros((50, 50, 3), np.uint8)]}, tmp_path, isolate=False)


def test_the_box_process_never_imports_torch_or_runs_the_trunk_for_training(
        tmp_path: Path, lfw_dir: Path) -> None:
    """A box's long-lived process (``join``) asks for a round: torch, the trunk's session
    and the feature arrays live in the round's process only (the parent would keep
    ~450 MB of them, and ~180 MB for torch, for the rest of its life)."""
    script = f"""
import sys
from pathlib import Path
import cv2
from edge.vision.pipeline import FacePipeline
from edge.training.trainer import TorchLocalTrainer, TrainConfig
from models.registry import model_path
pipeline = FacePipeline.from_model_dir(threads=1)
lfw = Path({str(lfw_dir)!r})
people = [p for p in sorted(lfw.iterdir()) if len(list(p.glob("*.jpg"))) >= 3][:3]
crops = {{p.name: [pipeline.process(cv2.imread(str(f)))[0].crop
                   for f in sorted(p.glob("*.jpg"))[:3]] for p in people}}
trainer = TorchLocalTrainer(model_path("sface"), crops, Path({str(tmp_path)!r}),
                            config=TrainConfig(epochs=1, batch_size=8), n_views=2,
                            niceness=0)
update = trainer.local_update(None, round_no=0)
assert update.n_samples == 9, update.n_samples
print("torch" in sys.modules, trainer._cache is None)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "True"], out.stdout
    assert not list(tmp_path.glob("round/*.npz"))  # the round's crops file is removed


_ORPHAN_SCRIPT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from edge.training.trainer import _init_round_process

def child_pid(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    with ProcessPoolExecutor(1, get_context("spawn"), _init_round_process,
                             (0, os.getpid())) as pool:
        pool.submit(child_pid, sys.argv[1]).result()
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


def test_the_training_child_dies_with_the_box_process(tmp_path: Path) -> None:
    """kill -9 of `join` left its training child (hundreds of MB) running for good; the
    kernel now kills it with its parent (PR_SET_PDEATHSIG)."""
    script, pid_file = tmp_path / "orphan.py", tmp_path / "child.pid"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)],
                              cwd=Path(__file__).resolve().parents[3])
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()):
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    child = int(pid_file.read_text())
    assert _running(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _running(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the training child outlived its parent")


def test_two_trainings_on_one_box_each_train_on_their_own_crops(
    sface: Path, crops_by_person: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fedface-edge train` during a federated round: both wrote train/round/crops.npz,
    so the round trained on `train`'s set (calibration people included) or lost its file
    to the other's clean-up."""
    import threading

    import edge.training.trainer as trainer_module

    both_saved = threading.Barrier(2, timeout=60)
    run_round = trainer_module._run_round

    def after_both_saved(job: Any, cache: Any = None, features_done: Any = None) -> Any:
        both_saved.wait()  # each has written its crops before either reads them
        return run_round(job, cache, features_done)

    monkeypatch.setattr(trainer_module, "_run_round", after_both_saved)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = tmp_path / "round" / f"crops-{dead}-0.npz"  # a killed run's faces
    left.parent.mkdir(parents=True)
    left.write_bytes(b"x")
    federated = {p: crops_by_person[p] for p in PEOPLE[:3]}  # 12 crops
    local = {p: crops_by_person[p][:1] for p in PEOPLE}  # 6 crops
    config = TrainConfig(epochs=1, batch_size=8)
    results: dict[str, object] = {}

    def train(name: str, crops: dict) -> None:
        trainer = TorchLocalTrainer(sface, crops, tmp_path, config=config, n_views=1,
                                    isolate=False)
        try:
            results[name] = trainer.local_update(None, round_no=0).n_samples
        except Exception as exc:  # the test reports what either met
            results[name] = exc

    threads = [threading.Thread(target=train, args=("federated", federated)),
               threading.Thread(target=train, args=("local", local))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {"federated": 12, "local": 6}
    assert not list((tmp_path / "round").glob("crops*.npz"))  # theirs and the dead run's


def test_two_writers_of_one_cached_feature_both_succeed(
    sface: Path, crops_by_person: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two trainings on one box (`train` during a federated round) computing the same
    crop's trunk features wrote one ".tmp.npy"; the second's rename found it gone
    (FileNotFoundError, a fresh-clone CI's two-trainings test). Each writer has its own."""
    import threading

    import edge.training.feature_cache as cache_module
    from edge.training.feature_cache import FeatureCache
    from models.federated_parts import get_part

    both_written = threading.Barrier(2, timeout=60)
    replace = os.replace

    def after_both_wrote(src: Any, dst: Any) -> None:
        both_written.wait()  # both temp files written before either is renamed
        replace(src, dst)

    monkeypatch.setattr(cache_module.os, "replace", after_both_wrote)
    crop = crops_by_person[PEOPLE[0]][0]
    cut = get_part("embed_bn").cut
    results: list[object] = []

    def compute() -> None:
        try:
            results.append(FeatureCache(sface, cut, tmp_path, n_views=1).features_for(crop))
        except Exception as exc:  # the test reports what either met
            results.append(exc)

    threads = [threading.Thread(target=compute) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 2 and all(isinstance(r, np.ndarray) for r in results), results
    assert np.array_equal(results[0], results[1])  # type: ignore[arg-type]
    assert not list(tmp_path.rglob("*.tmp.npy"))  # no temp file left behind
