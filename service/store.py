"""Embeddings in Redis, under a TTL, behind a bounded in-process LRU.

Key `keys.embedding_key`; value = magic, header length, JSON header, raw arrays, so one GET
returns everything and a decoder can check it was made by its own model. SAM's embedding is one array;
SAM 2.1's is three named arrays (the manifest's `embedding_layout`), stored one after another with their
names and shapes in the header. Arrays are float32, or float16 where the encoders are configured so (half
the bytes in Redis and on the wire; docs/performance.md gives the measured effect on masks); readers always get
float32, and always the named arrays (a one-array value, written without names, is `image_embeddings`).
"""

from __future__ import annotations

import functools
import json
import struct
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

MAGIC = b"MSE1"
DTYPES = ("float32", "float16")


SINGLE = "image_embeddings"  # the name of a value's one array (SAM's layout, stored without names)


@dataclass
class StoredEmbedding:
    arrays: dict[str, np.ndarray]  # the embedding's named arrays, each (1, *shape) float32
    model_version: str
    original_size: tuple[int, int]  # (H, W) of the image
    prepared: dict | None = None  # the decoder's per-image work, kept with the embedding in the LRU


def pack(embedding: dict, model_version: str, original_size: tuple[int, int], dtype: str = "float32") -> bytes:
    """One image's embedding, its named arrays (each with its batch axis of 1). SAM's one array is written
    as it always was, without a name, so values stored by any version read the same."""
    if dtype not in DTYPES:
        raise ValueError(f"embedding dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    header = {"dtype": dtype, "model_version": model_version, "original_size": list(original_size)}
    arrays = [np.ascontiguousarray(a, dtype) for a in embedding.values()]
    if list(embedding) == [SINGLE]:
        header["shape"] = list(arrays[0].shape)
    else:
        header["arrays"] = [{"name": n, "shape": list(a.shape)} for n, a in zip(embedding, arrays)]
    encoded = json.dumps(header).encode()
    return b"".join([MAGIC, struct.pack("<I", len(encoded)), encoded, *(a.tobytes() for a in arrays)])


def unpack(blob: bytes) -> StoredEmbedding:
    if blob[:4] != MAGIC:
        raise ValueError("not a maskserve embedding")
    (n,) = struct.unpack("<I", blob[4:8])
    header = json.loads(blob[8:8 + n])
    dtype = header.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"embedding stored as {dtype!r}; this decoder reads {', '.join(DTYPES)}")
    offset, found = 8 + n, {}
    for part in header.get("arrays") or [{"name": SINGLE, "shape": header["shape"]}]:
        count = int(np.prod(part["shape"]))
        array = np.frombuffer(blob, dtype, count, offset).reshape(part["shape"])  # zero-copy for float32
        found[part["name"]] = array if array.dtype == np.float32 else half_to_float(array)
        offset += count * np.dtype(dtype).itemsize
    return StoredEmbedding(found, header["model_version"], tuple(header["original_size"]))


# ONNX graph `y = Cast<to=float>(x)` for a float16 vector of any length, serialised by
# onnx.helper.make_model(make_graph([make_node("Cast", ["x"], ["y"], to=FLOAT)], ...), opset 13, IR 7.
_CAST_HALF_TO_FLOAT = (
    b'\x08\x07\x12\x00:L\n\x17\n\x01x\x12\x01y"\x04Cast*\t\n\x02to\x18\x01\xa0\x01\x02\x12\rhalf_to_float'
    b'Z\x10\n\x01x\x12\x0b\n\t\x08\n\x12\x05\n\x03\x12\x01nb\x10\n\x01y\x12\x0b\n\t\x08\x01\x12\x05\n\x03\x12\x01nB\x04\n\x00\x10\r')


@functools.cache
def _cast_session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(_CAST_HALF_TO_FLOAT, options, providers=["CPUExecutionProvider"])


def half_to_float(array: np.ndarray) -> np.ndarray:
    """float16 → float32, exactly (NaNs come back quiet), through ONNX Runtime's vectorised Cast: NumPy
    converts element by element (2 ms for a ViT-B embedding on AVX2, against 0.13 ms here), which would
    eat the fetch time that storing half the bytes saves."""
    (out,) = _cast_session().run(None, {"x": np.ascontiguousarray(array, np.float16).reshape(-1)})
    return out.reshape(array.shape)


class LRU:
    """Least recently used first out, but taken from the owner (tenant) that holds the most entries: a tenant
    that floods this process with new images evicts its own entries, not another's smaller working set."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self.items: OrderedDict[str, tuple[str, object]] = OrderedDict()
        self.held: dict[str, int] = {}

    def get(self, k: str):
        item = self.items.get(k)
        if item is None:
            return None
        self.items.move_to_end(k)
        return item[1]

    def discard(self, k: str) -> None:
        item = self.items.pop(k, None)
        if item is not None:
            self._release(item[0])

    def _release(self, owner: str) -> None:
        self.held[owner] -= 1
        if not self.held[owner]:
            del self.held[owner]

    def put(self, k: str, value, owner: str = "") -> None:
        self.discard(k)
        self.items[k] = (owner, value)
        self.held[owner] = self.held.get(owner, 0) + 1
        while len(self.items) > self.entries:
            most = max(self.held.values())
            victim = next(key for key, (o, _) in self.items.items() if self.held[o] == most)
            self.discard(victim)
