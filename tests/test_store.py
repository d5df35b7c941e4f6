"""The embedding store's value format: SAM's one array as before, SAM 2.1's named arrays after one another."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from maskserve.service import store


def _header(blob: bytes) -> dict:
    (n,) = struct.unpack("<I", blob[4:8])
    return json.loads(blob[8:8 + n])


@pytest.mark.parametrize("dtype", store.DTYPES)
def test_named_arrays_round_trip(dtype):
    rng = np.random.default_rng(0)
    arrays = {"image_embeddings": rng.normal(size=(1, 256, 64, 64)), "high_res_feats_0": rng.normal(size=(1, 32, 256, 256)),
              "high_res_feats_1": rng.normal(size=(1, 64, 128, 128))}
    blob = store.pack(arrays, "sam2.1_hiera_tiny-0123", (333, 517), dtype)
    assert len(blob) - 8 - len(json.dumps(_header(blob))) == sum(a.size for a in arrays.values()) * np.dtype(dtype).itemsize
    found = store.unpack(blob)
    assert list(found.array) == list(arrays) and found.original_size == (333, 517)
    for name, a in arrays.items():
        got = found.array[name]
        assert got.dtype == np.float32 and got.shape == a.shape
        np.testing.assert_array_equal(got, a.astype(dtype).astype(np.float32))


def test_a_single_array_keeps_its_format():
    """SAM's embeddings are written as before the named arrays existed, so decoders of either release read them."""
    a = np.random.default_rng(1).normal(size=(1, 64, 64, 64)).astype(np.float32)
    blob = store.pack(a, "tiny-0123", (10, 20))
    assert "arrays" not in _header(blob) and _header(blob)["shape"] == [1, 64, 64, 64]
    found = store.unpack(blob)
    assert isinstance(found.array, np.ndarray)
    np.testing.assert_array_equal(found.array, a)
