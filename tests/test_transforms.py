"""The NumPy pre/post-processing against the reference's torch implementation, operation by operation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from maskserve.build.specs import get_spec
from maskserve.engines import transforms

SIZES = [(400, 600), (427, 640), (23, 41), (18, 600), (640, 25), (2000, 1500), (1024, 1024), (1, 1)]


@pytest.mark.parametrize("size", SIZES)
def test_resize_equals_reference_pixel_for_pixel(size):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    ref = ResizeLongestSide(1024).apply_image(image)
    got = transforms.resize_image(image, 1024)
    assert got.shape == ref.shape
    assert np.array_equal(got, ref)


def test_normalize_and_pad_equals_sam_preprocess():
    from maskserve.build.checkpoint import build_model

    spec = get_spec("tiny")
    sam = build_model(spec)
    image = np.random.default_rng(1).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    resized = ResizeLongestSide(spec.image_size).apply_image(image)
    ref = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None])[0].numpy()
    got, input_size = transforms.preprocess(image, spec.image_size, spec.pixel_mean, spec.pixel_std)
    assert input_size == resized.shape[:2]
    assert np.array_equal(got, ref)


@pytest.mark.parametrize("size", SIZES)
def test_coordinates_equal_reference(size):
    coords = np.random.default_rng(2).uniform(0, 1, (7, 2)) * np.array([size[1], size[0]])
    ref = torch.as_tensor(ResizeLongestSide(1024).apply_coords(coords, size), dtype=torch.float).numpy()
    assert np.array_equal(transforms.transform_coords(coords, size, 1024), ref)
    box = np.array([[1.5, 2.5, size[1] - 0.5, size[0] - 1]])
    ref_box = torch.as_tensor(ResizeLongestSide(1024).apply_boxes(box, size), dtype=torch.float).numpy()
    assert np.array_equal(transforms.transform_boxes(box, size, 1024).reshape(-1, 4), ref_box)


@pytest.mark.parametrize("size", SIZES)
def test_upscaled_logits_match_sam_postprocess(size):
    low = np.random.default_rng(3).normal(0, 4, (3, 256, 256)).astype(np.float32)
    input_size = transforms.resized_shape(*size, 1024)
    t = F.interpolate(torch.from_numpy(low)[None], (1024, 1024), mode="bilinear", align_corners=False)
    t = t[..., : input_size[0], : input_size[1]]
    ref = F.interpolate(t, size, mode="bilinear", align_corners=False)[0].numpy()
    got = transforms.upscale_logits(low, input_size, size, 1024)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-3
    # thresholded masks agree except where the logit is within float noise of zero
    disagree = (got > 0) != (ref > 0)
    assert np.all(np.abs(ref[disagree]) < 1e-3)


def test_prompt_points_pad_like_the_reference():
    pts, lbl = transforms.prompt_points(np.array([[1, 2]]), np.array([1]), None)
    assert pts.tolist() == [[1, 2], [0, 0]] and lbl.tolist() == [1, -1]
    pts, lbl = transforms.prompt_points(np.array([[1, 2]]), np.array([0]), np.array([[3, 4], [5, 6]]))
    assert pts.tolist() == [[1, 2], [3, 4], [5, 6]] and lbl.tolist() == [0, 2, 3]
    pts, lbl = transforms.prompt_points(None, None, np.array([[3, 4], [5, 6]]))
    assert lbl.tolist() == [2, 3]


@pytest.mark.parametrize("low_side,long_side,size", [(64, 256, (256, 171)), (100, 256, (170, 256)), (128, 256, (33, 256))])
def test_upscaled_logits_for_other_model_sizes(low_side, long_side, size):
    """The tiny model's 2x scale, a non-integral scale, and a very elongated image."""
    low = np.random.default_rng(5).normal(0, 4, (2, low_side, low_side)).astype(np.float32)
    input_size = transforms.resized_shape(*size, long_side)
    t = F.interpolate(torch.from_numpy(low)[None], (long_side, long_side), mode="bilinear", align_corners=False)
    ref = F.interpolate(t[..., : input_size[0], : input_size[1]], size, mode="bilinear", align_corners=False)[0]
    got = transforms.upscale_logits(low, input_size, size, long_side)
    assert np.abs(got - ref.numpy()).max() < 1e-4


@pytest.mark.parametrize("size", [(768, 1024), (1080, 1920), (1000, 400), (18, 600), (1024, 1024)])
def test_upscale_from_the_mask_extent_alone(size):
    """The decoder may compute only `mask_extent`'s cells (build/export.py): upscaling that part gives the
    same pixels as upscaling the whole low-res map, and a part that lacks samples the upscale reads is refused."""
    low = np.random.default_rng(6).normal(0, 4, (3, 256, 256)).astype(np.float32)
    input_size = transforms.resized_shape(*size, 1024)
    rows, cols = transforms.mask_extent(input_size, 1024, 256)
    assert rows * 16 >= input_size[0] and cols * 16 >= input_size[1]
    part = np.ascontiguousarray(low[:, : 4 * rows, : 4 * cols])
    full = transforms.upscale_logits(low, input_size, size, 1024)
    assert np.array_equal(transforms.upscale_logits(part, input_size, size, 1024, side=256), full)
    with pytest.raises(ValueError, match="lack"):
        transforms.upscale_logits(low[:, :1, :1], input_size, size, 1024, side=256)


def test_no_mask_extent_when_the_scale_is_not_integral():
    assert transforms.mask_extent((170, 256), 256, 100) is None


@pytest.mark.parametrize("shape", [(256, 256, 1024, 1024), (100, 77, 333, 517), (64, 64, 30, 41)])
def test_bilinear_without_opencv_equals_opencv(shape):
    """A client-only install upscales `return_logits=True` answers by matrix products instead of OpenCV."""
    import cv2

    h, w, out_h, out_w = shape
    x = np.random.default_rng(0).normal(0, 10, (h, w)).astype(np.float32)
    ours = transforms.bilinear_weights(h, out_h) @ x @ transforms.bilinear_weights(w, out_w).T
    np.testing.assert_allclose(ours, cv2.resize(x, (out_w, out_h), interpolation=cv2.INTER_LINEAR), atol=1e-4)
