"""The trainable tail of SFace in torch (the only models module that imports torch).

The tail is the part of the SFace graph after a cut tensor (``FederatedPart.cut``). It
is rebuilt from the ONNX graph itself: each node after the cut is interpreted with the
matching torch op, attributes (strides, pads, group, epsilon) are read from the node,
and every weight is the ONNX initializer of the same name. Weights in the federated
part are trainable parameters; all others are frozen buffers. Batch norm always uses
its frozen running statistics (``training=False``): a box with a few dozen people would
otherwise drag the statistics towards its own camera, and they are not federated.

Also here: the local identity head (CosFace) that never leaves the box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper

from models.federated_parts import FederatedPart, PartMismatchError
from models.trunk import EMBEDDING, load_model, read_weights

SUPPORTED_OPS = {"Conv", "BatchNormalization", "PRelu", "Dropout", "Flatten", "Gemm"}


def _key(name: str) -> str:
    # torch parameter names cannot contain dots
    return name.replace(".", "__")


def tail_nodes(model: onnx.ModelProto, cut: str) -> list[onnx.NodeProto]:
    """The nodes that compute the embedding from ``cut`` (graph order)."""
    nodes = list(model.graph.node)
    init_names = {i.name for i in model.graph.initializer}
    start = next((i for i, n in enumerate(nodes) if cut in n.output), None)
    if start is None:
        raise PartMismatchError(f"cut tensor {cut!r} is not produced by the model")
    tail = nodes[start + 1 :]
    available = {cut}
    for node in tail:
        if node.op_type not in SUPPORTED_OPS:
            raise PartMismatchError(f"tail op {node.op_type} ({node.name}) is not supported")
        for name in node.input:
            if name and name not in available and name not in init_names:
                raise PartMismatchError(
                    f"tail node {node.name or node.op_type} needs {name!r} from before the cut"
                )
        available.update(node.output)
    if EMBEDDING not in available:
        raise PartMismatchError(f"the tail from {cut!r} does not reach {EMBEDDING!r}")
    return tail


class TrainableTail(torch.nn.Module):
    """Embedding = tail(trunk features at ``part.cut``), trainable in ``part``."""

    def __init__(self, source: str | Path | onnx.ModelProto, part: FederatedPart) -> None:
        super().__init__()
        model = load_model(source)
        self.part = part
        self.nodes = tail_nodes(model, part.cut)
        weights = read_weights(model)
        self.base = {
            name: weights[name]
            for node in self.nodes
            for name in node.input
            if name in weights
        }
        self.trained = torch.nn.ParameterDict()
        part_names = set(part.names)
        for name in part.names:
            if name.endswith((".lora_a", ".lora_b")):
                continue
            if name not in self.base:
                raise PartMismatchError(f"{part.key}: {name!r} is not a weight of the tail")
        for target in part.low_rank:
            if target not in self.base:
                raise PartMismatchError(f"{part.key}: {target!r} is not a weight of the tail")
        for name, value in self.base.items():
            tensor = torch.from_numpy(value.copy())
            if name in part_names:
                self.trained[_key(name)] = torch.nn.Parameter(tensor)
            else:
                self.register_buffer(_key(name), tensor, persistent=False)
        initial = part.unflatten(part.initial_vector(self.base))
        for name, value in initial.items():
            if name.endswith((".lora_a", ".lora_b")):
                self.trained[_key(name)] = torch.nn.Parameter(torch.from_numpy(value))
        self.eval()

    # -- federated vector <-> parameters ---------------------------------------------
    def get_vector(self) -> np.ndarray:
        named = {
            name: self.trained[_key(name)].detach().cpu().numpy() for name in self.part.names
        }
        return self.part.flatten(named)

    def set_vector(self, vector: np.ndarray) -> None:
        named = self.part.unflatten(vector)
        with torch.no_grad():
            for name, value in named.items():
                self.trained[_key(name)].copy_(torch.from_numpy(value))

    def initial_vector(self) -> np.ndarray:
        return self.part.initial_vector(self.base)

    # -- forward -----------------------------------------------------------------------
    def _weight(self, name: str) -> torch.Tensor:
        key = _key(name)
        if name in self.part.low_rank:
            w0: torch.Tensor = getattr(self, key)
            a = self.trained[_key(f"{name}.lora_a")]
            b = self.trained[_key(f"{name}.lora_b")]
            return w0 + a @ b
        if key in self.trained:
            return self.trained[key]
        buffer: torch.Tensor = getattr(self, key)
        return buffer

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {self.part.cut: features}
        for node in self.nodes:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            args = [values[n] if n in values else self._weight(n) for n in node.input if n]
            values[node.output[0]] = _apply(node.op_type, attrs, args)
        return values[EMBEDDING]


def _apply(op: str, attrs: Mapping[str, Any], args: list[torch.Tensor]) -> torch.Tensor:
    if op == "Conv":
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise PartMismatchError(f"asymmetric Conv pads {pads} are not supported")
        return F.conv2d(
            args[0],
            args[1],
            args[2] if len(args) > 2 else None,
            stride=tuple(attrs.get("strides", [1, 1])),
            padding=tuple(pads[:2]),
            dilation=tuple(attrs.get("dilations", [1, 1])),
            groups=int(attrs.get("group", 1)),
        )
    if op == "BatchNormalization":
        x, gamma, beta, mean, var = args
        eps = float(attrs.get("epsilon", 1e-5))
        return F.batch_norm(x, mean, var, gamma, beta, training=False, eps=eps)
    if op == "PRelu":
        x, slope = args
        if x.dim() == 2 and slope.dim() == 3:
            slope = slope.reshape(-1)
        return torch.where(x >= 0, x, x * slope)
    if op == "Dropout":
        return args[0]  # inference semantics; the margin loss and few epochs regularise
    if op == "Flatten":
        return torch.flatten(args[0], int(attrs.get("axis", 1)))
    if op == "Gemm":
        x, w = args[0], args[1]
        if int(attrs.get("transA", 0)):
            x = x.t()
        out = x @ (w.t() if int(attrs.get("transB", 0)) else w)
        out = out * float(attrs.get("alpha", 1.0))
        if len(args) > 2:
            out = out + float(attrs.get("beta", 1.0)) * args[2]
        return out
    raise PartMismatchError(f"op {op} is not supported")


class CosFaceHead(torch.nn.Module):
    """Local identity classifier with an additive cosine margin (CosFace).

    Private to the box: its class centres describe the box's enrolled people and could be
    inverted into faces, so it is never federated, saved in an update, or logged.
    """

    def __init__(self, centres: torch.Tensor, scale: float = 30.0, margin: float = 0.25) -> None:
        super().__init__()
        self.centres = torch.nn.Parameter(F.normalize(centres.detach().clone(), dim=1))
        self.scale = scale
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(embeddings, dim=1) @ F.normalize(self.centres, dim=1).t()
        onehot = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        logits = self.scale * (cosine - self.margin * onehot)
        return F.cross_entropy(logits, labels)


def supervised_contrastive(embeddings: torch.Tensor, labels: torch.Tensor,
                           temperature: float = 0.1) -> torch.Tensor:
    """SupCon (Khosla et al., NeurIPS 2020) over a batch: each embedding against all
    others, those of the same person (their other photos and views) as positives.

    Measured against CosFace for issue 18 (README, "The two commands"): CosFace's class
    centres start at the means of a site's own few photos, so its loss starts near zero
    (2e-4 on a demo box), and this loss does not; it raised scores, strangers' too, and
    did not raise identification at equal false accepts. Not the default."""
    z = F.normalize(embeddings, dim=1)
    similarity = z @ z.t() / temperature
    itself = torch.eye(len(z), dtype=torch.bool)
    similarity = similarity.masked_fill(itself, float("-inf"))
    positive = (labels[:, None] == labels[None, :]) & ~itself
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp(min=1)
    return per_anchor[positive.any(1)].mean()


def class_centres(embeddings: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean normalised embedding per class: a head that starts where the model already is."""
    normed = F.normalize(embeddings, dim=1)
    sums = torch.zeros(n_classes, normed.shape[1], dtype=normed.dtype)
    sums.index_add_(0, labels, normed)
    return F.normalize(sums, dim=1)


def proximal_penalty(tail: TrainableTail, anchor: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Squared distance of the trained weights from an anchor (the round's global weights):
    keeps a box with few people from drifting far, which is what forgetting looks like."""
    total = torch.zeros(())
    for key, param in tail.trained.items():
        total = total + ((param - anchor[key]) ** 2).sum()
    return total


def cosine_lr(step: int, total: int, base: float) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
