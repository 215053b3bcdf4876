"""Assemble an edge box from its settings: the one place every command and the demo use.

A box is its data dir, laid out here and nowhere else:

    <data dir>/gallery.sqlite3   people, crops, embeddings per model version
    <data dir>/models/           the box's model versions (swap pointer, weights, history)
    <data dir>/federation/       the federation client's state (outbox, federated store)
    <data dir>/train/            the trainer's feature cache and local results

Before this, ``join``, ``train``, the demo's boxes and the recognising commands each
built their own parts: the demo laid its gallery out elsewhere, and ``identify`` served
without the base model's path, so it could not serve (and then dropped) the federated
model. Parts open lazily, so ``people list`` loads no model and a box that only
recognises never imports torch (only :meth:`Box.trainer` does, in the trainer module).

May import: edge.errors, edge.config, edge.vision, edge.gallery, edge.serving,
edge.training, edge.federated, federation, models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edge.config import BoxConfig, EdgeSettings

if TYPE_CHECKING:
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from edge.federated.api import ClientConfig, EventCallback, TransportFactory
    from edge.federated.client import FederationClient
    from edge.gallery.store import Gallery
    from edge.serving.engine import Engine
    from edge.serving.hot_swap import HotSwapper
    from edge.serving.recognizer import Recognizer
    from edge.training.api import LocalTrainer
    from edge.training.trainer import TorchLocalTrainer, TrainConfig
    from edge.vision.pipeline import FacePipeline
    from federation.crypto.ckks import FederationContext
    from models.federated_parts import FederatedPart

MODELS_DIRNAME = "models"
FEDERATION_DIRNAME = "federation"
TRAIN_DIRNAME = "train"


@dataclass
class Box:
    """One box's parts, opened on first use from its settings (and config, if any)."""

    settings: EdgeSettings
    config: BoxConfig | None = None
    _gallery: Gallery | None = field(default=None, repr=False)
    _pipeline: FacePipeline | None = field(default=None, repr=False)
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    # --- the layout ----------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def gallery_db(self) -> Path:
        from edge.gallery.files import DB_FILENAME

        return self.data_dir / DB_FILENAME

    @property
    def models_dir(self) -> Path:
        return self.data_dir / MODELS_DIRNAME

    @property
    def federation_dir(self) -> Path:
        return self.data_dir / FEDERATION_DIRNAME

    @property
    def train_dir(self) -> Path:
        return self.data_dir / TRAIN_DIRNAME

    def inference_model(self) -> Path:
        """The graph every served version is patched from (the optimised SFace)."""
        from models.registry import optimised_sface_path

        return optimised_sface_path(self.settings.model_dir)

    def training_model(self) -> Path:
        """The graph the trainer rebuilds its torch tail from (the pinned original: the
        optimised one rewrote PRelu into ops the tail builder lacks)."""
        from models.registry import model_path

        return model_path("sface", self.settings.model_dir)

    def part(self, name: str | None = None) -> FederatedPart:
        """``name``, else the config's ``federation.part``, else the project default."""
        from models.federated_parts import DEFAULT_PART, get_part

        if name is None:
            name = self.config.federation.part if self.config is not None else DEFAULT_PART
        return get_part(name)

    # --- recognition (no torch) ----------------------------------------------------------
    def gallery(self) -> Gallery:
        if self._gallery is None:
            from edge.gallery.store import Gallery
            from edge.serving.forget import forget_removed_faces

            self._gallery = Gallery.open(self.data_dir)
            self._gallery.on_removal.append(forget_removed_faces)
        return self._gallery

    def pipeline(self) -> FacePipeline:
        if self._pipeline is None:
            from edge.vision.pipeline import FacePipeline

            self._pipeline = FacePipeline.from_model_dir(self.settings.model_dir,
                                                         threads=self.settings.threads)
        return self._pipeline

    def engine(self, threshold: float | None = None) -> Engine:
        """An engine serving the box's current model version, as a reader: it follows the
        swap pointer but never moves it (only the swap owner, :meth:`model_sink`, does)."""
        from edge.serving.current import open_engine

        pipeline = self.pipeline()
        engine = open_engine(pipeline.detector, self.gallery().path, self.inference_model(),
                             threads=self.settings.threads,
                             threshold=self._threshold(threshold),
                             base_embedder=pipeline.embedder, swap_dir=self.models_dir,
                             # a threshold given to the command is the one it serves at,
                             # even when it equals the deployed one
                             fixed_threshold=threshold is not None)
        self._closers.append(engine.close)
        return engine

    def recognizer(self, threshold: float | None = None) -> Recognizer:
        from edge.serving.recognizer import Recognizer

        chosen = self._threshold(threshold)
        # the engine is told whether a threshold was given (None: each model's own)
        return Recognizer(self.pipeline(), self.gallery(), chosen, engine=self.engine(threshold))

    # --- model versions, training, federation --------------------------------------------
    def model_sink(self, part: FederatedPart, background: bool = True) -> HotSwapper:
        """The owner of the box's model versions: restores, hot-swaps and rolls back.
        ``background``: follow enrolments and warm the trainer's features in a thread (a
        long-running ``join``); a one-shot command such as ``train`` does without."""
        from edge.serving.sink import open_model_sink

        sink = open_model_sink(self.inference_model(), part, self.models_dir, self.gallery(),
                               threads=self.settings.threads,
                               policy=self.settings.canary_policy(),
                               threshold=self.settings.match_threshold, background=background,
                               calibrate=self.settings.calibrate_threshold)
        self._closers.append(sink.engine.close)
        return sink

    def trainer(self, part: FederatedPart, config: TrainConfig | None = None,
                isolate: bool = True, federated: bool = True) -> TorchLocalTrainer:
        """The torch trainer (ImportError without the train extra). ``isolate``: each
        round in its own low-priority process, so this process never imports torch.
        ``federated``: a round's trainer, which leaves the calibration people out
        (edge.gallery.holdout); ``fedface-edge train``'s local model, which is not
        calibrated, trains on everyone."""
        from edge.training.trainer import TorchLocalTrainer

        gallery = self.gallery()
        crops = gallery.federated_training_crops if federated else gallery.crops_by_person
        return TorchLocalTrainer(self.training_model(), crops, self.train_dir, part, config,
                                 isolate=isolate)

    def federation_client(
        self, client_config: ClientConfig, transport_factory: TransportFactory,
        context: FederationContext, signing_key: Ed25519PrivateKey,
        aggregator_key: Ed25519PublicKey, trainer: LocalTrainer, sink: HotSwapper,
        on_event: EventCallback | None = None, base: np.ndarray | None = None,
        secret_context: Path | None = None,
    ) -> FederationClient:
        from edge.federated.client import FederationClient
        from edge.federated.epochs import epoch_keys_for
        from edge.federated.round_gate import GallerySamples

        # ``secret_context``: the file a new key epoch replaces (None: no key epochs)
        epochs = None if secret_context is None else epoch_keys_for(
            client_config.fed_id, client_config.device_id, secret_context)
        # the gallery's new crops decide whether the box has anything new to train on
        return FederationClient(client_config, transport_factory, context, signing_key,
                                aggregator_key, trainer, sink, self.federation_dir,
                                sink.base_vector() if base is None else base,
                                on_event=on_event, samples=GallerySamples(self.gallery_db),
                                epochs=epochs)

    def close(self) -> None:
        for close in reversed(self._closers):
            close()
        self._closers.clear()
        if self._gallery is not None:
            self._gallery.close()
            self._gallery = None

    def _threshold(self, threshold: float | None) -> float:
        return self.settings.match_threshold if threshold is None else threshold


def build_box(settings: EdgeSettings, config: BoxConfig | None = None) -> Box:
    """The box these settings describe (nothing is opened until a part is asked for)."""
    return Box(settings, config)
