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
    assert list(found.arrays) == list(arrays) and found.original_size == (333, 517)
    for name, a in arrays.items():
        got = found.arrays[name]
        assert got.dtype == np.float32 and got.shape == a.shape
        np.testing.assert_array_equal(got, a.astype(dtype).astype(np.float32))


def test_a_single_array_keeps_its_format():
    """SAM's embeddings are written as before the named arrays existed, so decoders of either release read them."""
    a = np.random.default_rng(1).normal(size=(1, 64, 64, 64)).astype(np.float32)
    blob = store.pack({"image_embeddings": a}, "tiny-0123", (10, 20))
    assert "arrays" not in _header(blob) and _header(blob)["shape"] == [1, 64, 64, 64]
    found = store.unpack(blob)
    assert list(found.arrays) == ["image_embeddings"]
    np.testing.assert_array_equal(found.arrays["image_embeddings"], a)


def test_an_embedding_stored_before_named_arrays_decodes_the_same(tiny_model_dir):
    """A value as the store wrote it before every embedding became named arrays (the byte layout written out
    here by hand: magic, header length, JSON header with `shape`, raw float32) is what `pack` writes today, and
    it decodes to the very masks of a freshly set image."""
    from maskserve.engines.predictor import Predictor

    image = np.random.default_rng(2).integers(0, 255, (90, 130, 3), np.uint8)
    fresh = Predictor(tiny_model_dir)
    fresh.set_image(image)
    array = fresh.get_image_embedding()
    version = fresh.manifest.model_version
    header = json.dumps({"dtype": "float32", "model_version": version, "original_size": [90, 130],
                         "shape": list(array.shape)}).encode()
    old = b"MSE1" + struct.pack("<I", len(header)) + header + array.astype("<f4").tobytes()
    assert store.pack(fresh.get_image_arrays(), version, (90, 130)) == old
    stored = Predictor(tiny_model_dir)
    found = store.unpack(old)
    stored.set_embedding(found.arrays, found.original_size)
    for point in ([[30.0, 40.0]], [[100.0, 20.0]]):
        a, b = fresh.predict(np.array(point), np.array([1])), stored.predict(np.array(point), np.array([1]))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
