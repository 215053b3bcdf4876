"""What a removed person leaves behind in the box's feature caches: deleted.

Two caches hold trunk features of enrolment crops, by the SHA-256 of the crop's pixels
(``edge.serving.split_model.crop_key``, 32 hex digits: ``<data dir>/models/trunk-*/``; the
trainer's ``edge.training.feature_cache``, 24: ``<data dir>/train/features/*/``). They are
content-addressed, so nothing ever asked to drop an entry: ``people remove`` (and the
kiosk's and the REST API's removals) said "crops and embeddings" were deleted, while
about 0.5 MB of features per crop, derived from the person's face, stayed (helper-48).
Every removal path calls :func:`forget_removed_faces` after the gallery's delete.

No ONNX here: the CLI's ``people remove`` imports this and nothing heavier.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from edge.gallery.store import Gallery

log = logging.getLogger(__name__)

CACHES = ("models/trunk-*", "train/features/*")  # under the data dir


def forget_removed_faces(gallery: Gallery) -> int:
    """Delete every cached feature file of a crop the gallery no longer holds (another
    person's copy of the same photo keeps it); returns how many files went."""
    data_dir = gallery.path.parent
    digests = {hashlib.sha256(np.ascontiguousarray(c.image).tobytes()).hexdigest()
               for c in gallery.iter_crops()}
    kept = {d[:n] for d in digests for n in (24, 32)}
    removed = 0
    for pattern in CACHES:
        for folder in data_dir.glob(pattern):
            if not folder.is_dir():
                continue
            for entry in folder.glob("*.npy"):
                # an entry being written (`x.tmp.npy`, renamed into place when done) is
                # a training's or a swap's of now: deleting it would fail that run
                if entry.stem not in kept and ".tmp" not in entry.name:
                    entry.unlink(missing_ok=True)
                    removed += 1
    if removed:
        log.info("deleted %d cached feature file(s) of removed faces", removed)
    return removed
