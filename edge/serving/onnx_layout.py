"""Patch ONNX initializers in the serialised bytes, without parsing the model again.

The hot swap runs next to the live recognition thread of the same process. Parsing or
serialising the 38 MB SFace ModelProto holds Python's GIL for its whole duration
(measured here: ``onnx.load_from_string`` 52 ms, ``SerializeToString`` 169 ms, while
``ort.InferenceSession`` releases it), which would stall every frame in flight. So the
model's protobuf wire format is walked once, at start-up, to find where each
initializer's ``raw_data`` lies; a swap then copies the base bytes and overwrites those
byte ranges with the new values (same shape and dtype, hence same length). The result is
byte-for-byte what ``models.onnx_graph.patch_initializers`` + ``SerializeToString`` give
for raw-data tensors (tested), by initializer name, with no torch and no re-export.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from onnx import helper

# Field numbers of onnx.proto3 (stable since ONNX 1.0).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DIMS = 1
_TENSOR_DATA_TYPE = 2
_TENSOR_FLOAT_DATA = 4  # packed repeated float: little-endian float32, like raw_data
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9


class LayoutError(ValueError):
    """The bytes are not an ONNX model whose initializers can be patched in place."""


@dataclass(frozen=True)
class TensorSlot:
    name: str
    offset: int  # of the first raw_data byte in the model bytes
    nbytes: int
    dtype: np.dtype
    shape: tuple[int, ...]


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise LayoutError("truncated varint in the model bytes")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of one message."""
    out = []
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, wire, value, pos))
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((number, wire, pos, pos + length))
            pos += length
        elif wire == 1:
            out.append((number, wire, pos, pos + 8))
            pos += 8
        elif wire == 5:
            out.append((number, wire, pos, pos + 4))
            pos += 4
        else:
            raise LayoutError(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise LayoutError("a protobuf field runs past its message")
    return out


def _tensor_slot(data: memoryview, start: int, end: int) -> TensorSlot | None:
    name, raw, data_type, dims = None, None, None, []
    for number, wire, a, b in _fields(data, start, end):
        if number == _TENSOR_NAME and wire == 2:
            name = bytes(data[a:b]).decode()
        elif number == _TENSOR_RAW_DATA and wire == 2:
            raw = (a, b)
        elif number == _TENSOR_FLOAT_DATA and wire == 2:
            # SFace (old MXNet exporter) stores its weights here instead of raw_data
            raw = (a, b)
        elif number == _TENSOR_DATA_TYPE and wire == 0:
            data_type = a
        elif number == _TENSOR_DIMS and wire == 0:
            dims.append(a)
        elif number == _TENSOR_DIMS and wire == 2:  # packed repeated int64
            pos = a
            while pos < b:
                value, pos = _varint(data, pos)
                dims.append(value)
    if name is None or raw is None or data_type is None:
        return None  # e.g. int64 shapes stored as varints: not patchable in place
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(data_type))
    if raw[1] - raw[0] != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
        return None  # float_data of a non-float32 tensor, or a malformed one
    return TensorSlot(name, raw[0], raw[1] - raw[0], dtype, tuple(dims))


@dataclass(frozen=True)
class InitializerLayout:
    """Where each raw-data initializer of one serialised model lies."""

    size: int
    slots: Mapping[str, TensorSlot]

    @classmethod
    def scan(cls, model_bytes: bytes) -> InitializerLayout:
        data = memoryview(model_bytes)
        slots: dict[str, TensorSlot] = {}
        graphs = [(a, b) for n, w, a, b in _fields(data, 0, len(data))
                  if n == _MODEL_GRAPH and w == 2]
        if len(graphs) != 1:
            raise LayoutError("these bytes are not an ONNX model with one graph")
        for number, wire, a, b in _fields(data, *graphs[0]):
            if number == _GRAPH_INITIALIZER and wire == 2:
                slot = _tensor_slot(data, a, b)
                if slot is not None:
                    slots[slot.name] = slot
        return cls(len(model_bytes), slots)

    def _slot(self, name: str) -> TensorSlot:
        try:
            return self.slots[name]
        except KeyError:
            raise LayoutError(f"the model has no raw-data initializer named {name!r}") from None

    def read(self, model_bytes: bytes, names: list[str] | tuple[str, ...]
             ) -> dict[str, np.ndarray]:
        """Copies of the named initializers, read from bytes laid out like the scanned ones."""
        if len(model_bytes) != self.size:
            raise LayoutError(f"model has {len(model_bytes)} bytes, layout is for {self.size}")
        out = {}
        for name in names:
            slot = self._slot(name)
            raw = model_bytes[slot.offset:slot.offset + slot.nbytes]
            out[name] = np.frombuffer(raw, dtype=slot.dtype.newbyteorder("<")).reshape(
                slot.shape).copy()
        return out

    def patch(self, model_bytes: bytes, weights: Mapping[str, np.ndarray]) -> bytes:
        """A copy of ``model_bytes`` with the named initializers replaced (one copy: the
        unchanged spans are joined from views around the new values)."""
        if len(model_bytes) != self.size:
            raise LayoutError(f"model has {len(model_bytes)} bytes, layout is for {self.size}")
        replaced: list[tuple[TensorSlot, bytes]] = []
        for name, value in weights.items():
            slot = self._slot(name)
            array = np.asarray(value)
            if array.shape != slot.shape or array.dtype != slot.dtype:
                raise LayoutError(
                    f"initializer {name!r}: new value is {array.dtype}{list(array.shape)}, "
                    f"the graph expects {slot.dtype}{list(slot.shape)}")
            replaced.append((slot, np.ascontiguousarray(
                array, dtype=slot.dtype.newbyteorder("<")).tobytes()))
        view, pieces, pos = memoryview(model_bytes), [], 0
        for slot, raw in sorted(replaced, key=lambda item: item[0].offset):
            pieces += [view[pos:slot.offset], memoryview(raw)]
            pos = slot.offset + slot.nbytes
        pieces.append(view[pos:])
        return b"".join(pieces)
