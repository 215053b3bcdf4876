"""LFW View 2 verification accuracy of the edge pipeline (YuNet -> align -> SFace/ORT).

    .venv/bin/python -m bench.edge.lfw_verification [--lfw DIR] [--threads 2] [--no-cache]
        [--model shipped|optimised|PATH] [--folds N] [--canvas] [--max-side 320|0]

Each LFW image goes through the product path: YuNet (score >= 0.8), the 5-point
similarity alignment, SFace in ONNX Runtime. LFW images are centred on the person the
pair is about, so among several detections the one nearest the image centre is used.
If YuNet finds nothing at 0.8, the image is retried at 0.3 (counted and printed as a
fallback); an image with no face even then scores -1 against everything (counted as a
miss, never silently dropped). Reference: SFace via OpenCV, 10-fold, 99.05% (+-0.45).

Embeddings are cached (``$FEDFACE_BENCH_CACHE`` or the user cache dir), keyed by the
model file's hash and the detector settings, so reruns only redo the 10-fold maths.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bench.common.lfw_protocol import Pair, parse_pairs, ten_fold_accuracy
from bench.rig.compare import Measured, comparison, print_comparisons
from edge.vision.align import align_face
from edge.vision.detect import Face, FaceDetector
from edge.vision.embed import EMBEDDING_DIM, Embedder
from models.files import sha256_file
from models.registry import model_path, optimised_sface_path

log = logging.getLogger(__name__)

FALLBACK_THRESHOLD = 0.3
REFERENCE_ACCURACY = 0.9905


@dataclass
class LfwEmbeddings:
    vectors: dict[str, np.ndarray]  # relpath -> (128,), zeros when no face was found
    fallbacks: list[str]  # found only at FALLBACK_THRESHOLD
    misses: list[str]  # no face at all


def central_face(faces: Sequence[Face], centre: tuple[float, float]) -> Face:
    cx, cy = centre
    return min(faces, key=lambda f: (f.centre[0] - cx) ** 2 + (f.centre[1] - cy) ** 2)


def on_canvas(image: np.ndarray, rel: str) -> tuple[np.ndarray, tuple[float, float]]:
    """The image pasted on a 640x480 noisy grey frame at a place derived from its name,
    and the centre of the pasted image (where the pair's person is).

    Simulates a camera frame, so the detector's downscaling is exercised exactly as on a
    box (a 250x250 LFW image alone is below ``max_side`` and never downscaled).
    """
    rng = np.random.default_rng(int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16))
    frame = rng.normal(110, 12, (480, 640, 3)).clip(0, 255).astype(np.uint8)
    y = int(rng.integers(0, 480 - image.shape[0]))
    x = int(rng.integers(0, 640 - image.shape[1]))
    frame[y : y + image.shape[0], x : x + image.shape[1]] = image
    return frame, (x + image.shape[1] / 2.0, y + image.shape[0] / 2.0)


class OpenCvSFace:
    """The baseline recogniser: OpenCV's alignCrop + FaceRecognizerSF on the shipped model."""

    batch_size = 1

    def __init__(self, model_file: Path) -> None:
        self.sface = cv2.FaceRecognizerSF.create(str(model_file), "")

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        row = np.zeros((1, 15), np.float32)  # alignCrop reads the landmarks at [4:14]
        row[0, 4:14] = landmarks.ravel()
        return np.asarray(self.sface.alignCrop(image, row))

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        features = np.stack([np.asarray(self.sface.feature(c)).ravel() for c in crops])
        return features / np.linalg.norm(features, axis=1, keepdims=True)


def embed_images(
    lfw_dir: Path,
    relpaths: Sequence[str],
    detector: FaceDetector,
    embedder: Embedder | OpenCvSFace,
    canvas: bool = False,
) -> LfwEmbeddings:
    """Detect, align and embed each image (batched through the embedder)."""
    align = embedder.align if isinstance(embedder, OpenCvSFace) else align_face
    result = LfwEmbeddings({}, [], [])
    pending_paths: list[str] = []
    pending_crops: list[np.ndarray] = []

    def flush() -> None:
        if pending_crops:
            for rel, vec in zip(pending_paths, embedder.embed(pending_crops), strict=True):
                result.vectors[rel] = vec
            pending_paths.clear()
            pending_crops.clear()

    for rel in relpaths:
        image = cv2.imread(str(lfw_dir / rel))
        if image is None:
            raise FileNotFoundError(f"LFW image {lfw_dir / rel} is missing or unreadable")
        centre = (image.shape[1] / 2.0, image.shape[0] / 2.0)
        if canvas:
            image, centre = on_canvas(image, rel)
        faces = detector.detect(image)
        if not faces:
            faces = detector.detect(image, score_threshold=FALLBACK_THRESHOLD)
            if faces:
                result.fallbacks.append(rel)
        if not faces:
            result.misses.append(rel)
            result.vectors[rel] = np.zeros(EMBEDDING_DIM, np.float32)
            continue
        face = central_face(faces, centre)
        pending_paths.append(rel)
        pending_crops.append(align(image, face.landmarks))
        if len(pending_crops) >= embedder.batch_size:
            flush()
    flush()
    return result


def pair_scores(pairs: Sequence[Pair], emb: LfwEmbeddings) -> np.ndarray:
    """Cosine similarity per pair; -1 for a pair with an image where no face was found."""
    missed = set(emb.misses)
    return np.array(
        [
            -1.0
            if (p.left in missed or p.right in missed)
            else float(emb.vectors[p.left] @ emb.vectors[p.right])
            for p in pairs
        ]
    )


def evaluate(pairs: Sequence[Pair], emb: LfwEmbeddings) -> tuple[float, float, list[float]]:
    scores = pair_scores(pairs, emb)
    labels = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    return ten_fold_accuracy(scores, labels, folds)


def unique_images(pairs: Sequence[Pair]) -> list[str]:
    return sorted({p.left for p in pairs} | {p.right for p in pairs})


def _cache_file(model_file: Path, detector: FaceDetector, canvas: bool, engine: str) -> Path:
    root = os.environ.get("FEDFACE_BENCH_CACHE")
    if root:
        base = Path(root)
    else:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("fedface")) / "bench"
    settings = f"{detector.score_threshold}-{FALLBACK_THRESHOLD}-{detector.max_side}-central"
    settings += ("-canvas2" if canvas else "") + ("" if engine == "Embedder" else f"-{engine}")
    key = hashlib.sha256((sha256_file(model_file) + settings).encode()).hexdigest()[:16]
    return base / f"lfw-embeddings-{key}.npz"


def load_or_embed(
    lfw_dir: Path, relpaths: Sequence[str], detector: FaceDetector,
    embedder: Embedder | OpenCvSFace, model_file: Path, use_cache: bool = True,
    canvas: bool = False,
) -> tuple[LfwEmbeddings, bool]:  # fmt: skip
    cache = _cache_file(model_file, detector, canvas, type(embedder).__name__)
    if use_cache and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        stored = dict(zip(data["paths"].tolist(), data["vectors"], strict=True))
        if all(rel in stored for rel in relpaths):
            return LfwEmbeddings(stored, data["fallbacks"].tolist(), data["misses"].tolist()), True
    emb = embed_images(lfw_dir, relpaths, detector, embedder, canvas)
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        paths = sorted(emb.vectors)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            paths=np.array(paths),
            vectors=np.stack([emb.vectors[p] for p in paths]),
            fallbacks=np.array(emb.fallbacks, dtype=str),
            misses=np.array(emb.misses, dtype=str),
        )
        os.replace(tmp, cache)
    return emb, False


def _resolve_model(choice: str) -> Path:
    if choice == "optimised":
        return optimised_sface_path()
    if choice == "shipped":
        # The shipped file lists weights as graph inputs; ORT runs it, just slower.
        return model_path("sface")
    return Path(choice)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_lfw = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
    parser.add_argument(
        "--lfw", type=Path, default=Path(os.environ.get("FEDFACE_LFW", default_lfw))
    )
    parser.add_argument(
        "--pairs", type=Path, default=None, help="default: LFW/../lfw_protocol/pairs.txt"
    )
    parser.add_argument("--model", default="optimised", help="optimised | shipped | path to .onnx")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folds", type=int, default=10, help="use the first N folds (>= 2)")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also run OpenCV's alignCrop + FaceRecognizerSF on the same detections",
    )
    parser.add_argument(
        "--canvas", action="store_true", help="paste each image on a 640x480 frame first"
    )
    parser.add_argument(
        "--max-side", type=int, default=320, help="detector downscale target; 0 = never"
    )
    args = parser.parse_args(argv)

    pairs_file = args.pairs or args.lfw.parent / "lfw_protocol" / "pairs.txt"
    pairs = [p for p in parse_pairs(pairs_file) if p.fold < args.folds]
    cv2.setNumThreads(args.threads)
    model_file = _resolve_model(args.model)
    detector = FaceDetector(model_path("yunet"), max_side=args.max_side or None)
    embedder = Embedder(model_file, threads=args.threads)
    relpaths = unique_images(pairs)
    start = time.perf_counter()
    emb, cached = load_or_embed(
        args.lfw, relpaths, detector, embedder, model_file, not args.no_cache, args.canvas
    )
    took = time.perf_counter() - start
    mean, std, per_fold = evaluate(pairs, emb)
    print(
        f"model: {model_file.name} ({args.model}), threads {args.threads}, detector max side "
        f"{args.max_side or 'none'}, {'640x480 canvas' if args.canvas else 'LFW 250x250 as is'}"
    )
    print(
        f"images: {len(relpaths)} ({'from cache' if cached else f'embedded in {took:.1f} s'}); "
        f"found at 0.8: {len(relpaths) - len(emb.fallbacks) - len(emb.misses)}, "
        f"fallback at {FALLBACK_THRESHOLD}: {len(emb.fallbacks)}, no face: {len(emb.misses)}"
    )
    for rel in emb.fallbacks + emb.misses:
        print(f"  {'fallback' if rel in emb.fallbacks else 'no face'}: {rel}")
    print("per fold: " + " ".join(f"{a * 100:.2f}" for a in per_fold))
    print(
        f"LFW View 2, {len(pairs)} pairs, {len(per_fold)}-fold accuracy: "
        f"{mean * 100:.2f}% (+-{std * 100:.2f}); reference SFace/OpenCV 99.05%"
    )
    if args.baseline:
        shipped = model_path("sface")
        base, _ = load_or_embed(
            args.lfw, relpaths, detector, OpenCvSFace(shipped), shipped, not args.no_cache,
            args.canvas,
        )  # fmt: skip
        b_mean, b_std, b_folds = evaluate(pairs, base)
        print(
            f"baseline, same detections, OpenCV alignCrop + FaceRecognizerSF: "
            f"{b_mean * 100:.2f}% (+-{b_std * 100:.2f}); ours - baseline: "
            f"{(mean - b_mean) * 100:+.2f} points"
        )
        print_comparisons("bench.edge.lfw_verification", [comparison(
            "LFW accuracy per fold", Measured.of("ours", [100 * a for a in per_fold], "folds"),
            Measured.of("OpenCV's own path", [100 * a for a in b_folds], "folds"), "%")])


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
