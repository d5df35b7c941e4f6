"""The automatic generator on a SAM 2.1 model against the official `SAM2AutomaticMaskGenerator` on the same
seeded random hiera-tiny weights: its defaults and its own options (`use_m2m`, `multimask_output=False`,
`mask_threshold`), explicit point grids, and `min_mask_region_area` (which SAM 2 also applies to the
low-res logits, before upscaling). Through the service: tests/test_sam2_service.py.

Seeded random weights give masks that cover most of the image (every box is the image's), predicted IoUs
around 0.5 and, for the single-mask and refined answers, stabilities near zero at the ±1 offset: thresholds
and the offset are set among those values, box NMS is off (1.0). The reference's decoder takes about 0.2 s
per point here, so the grids are small (36 points; 64 for single-mask answers, one per point; 24 for m2m, which decodes every mask twice).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import report
from test_automatic import MATCH_IOU, MIN_REFERENCE_MASKS, SCORE_TOL, _memoise_set_image, match

from maskserve import AutomaticMaskGenerator, Predictor
from maskserve.build.specs import get_spec
from maskserve.engines import automatic, families, sam2_transforms

BASE = dict(points_per_side=6, pred_iou_thresh=0.5, stability_score_thresh=0.9, box_nms_thresh=1.0,
            crop_nms_thresh=1.0)
CASES = {
    "defaults": {},
    "min_mask_region_area": dict(min_mask_region_area=30),
    "single mask, mask_threshold": dict(multimask_output=False, points_per_side=8, pred_iou_thresh=0.525, stability_score_thresh=0.75,
                                        stability_score_offset=0.05, mask_threshold=0.02),
    "use_m2m, point_grids": dict(use_m2m=True, points_per_side=None,
                                 point_grids=[np.random.default_rng(3).uniform(0, 1, (24, 2))],
                                 pred_iou_thresh=0.52, stability_score_thresh=0.45, stability_score_offset=0.05),
}


def _connected_components(mask):
    """sam2's `get_connected_components` (8-connected labels and each pixel's region area, a CUDA kernel in
    sam2's extension, which a CPU build lacks: the reference then skips hole filling) by OpenCV."""
    import cv2
    import torch

    flat = mask.to(torch.uint8).cpu().numpy()
    labels, counts = np.zeros(flat.shape, np.int32), np.zeros(flat.shape, np.int32)
    for i in range(flat.shape[0]):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(flat[i, 0], connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        area[0] = 0
        labels[i, 0], counts[i, 0] = lab, area[lab]
    return torch.from_numpy(labels), torch.from_numpy(counts)


@pytest.fixture(scope="module")
def generators(sam2_tiny_random):
    from sam2.build_sam import build_sam2

    reference_model = build_sam2(get_spec("sam2.1_hiera_tiny").config, ckpt_path=str(sam2_tiny_random[0]),
                                 device="cpu")
    return reference_model, Predictor(sam2_tiny_random[1])


def test_matches_sam2_automatic_mask_generator(generators, photos, monkeypatch):
    import sam2.utils.misc
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    monkeypatch.setattr(sam2.utils.misc, "get_connected_components", _connected_components)
    reference_model, ours = generators
    image = np.ascontiguousarray(photos["coffee_400x600"][:397, :571])
    cache, ours = {}, _memoise_set_image(ours, ("embedding", "prepared", "original_size", "input_size",
                                                "is_image_set"))
    for case, kwargs in CASES.items():
        kwargs = dict(BASE, **kwargs)
        reference = SAM2AutomaticMaskGenerator(reference_model, output_mode="coco_rle", **kwargs)
        if not cache:  # the first case encodes; the others reuse its features
            reference.predictor.set_image(image)
            cache.update({a: getattr(reference.predictor, a) for a in ("_features", "_orig_hw", "_is_image_set",
                                                                        "_is_batch")})
        reference.predictor.set_image = lambda _image, p=reference.predictor: p.__dict__.update(cache)
        reference.predictor.reset_predictor = lambda: None
        m = match(reference.generate(image), AutomaticMaskGenerator(ours, output_mode="coco_rle", **kwargs).generate(image))
        line = (f"automatic SAM 2.1 {case}: {m['matched']}/{m['reference']} reference masks matched (IoU ≥ "
                f"{MATCH_IOU}; worst {m['worst_iou']:.5f}), {m['extra']} extra, |Δ predicted IoU| {m['d_iou']:.1e}, "
                f"|Δ stability| {m['d_stab']:.1e}")
        report(line)
        assert m["reference"] >= MIN_REFERENCE_MASKS and m["matched"] == m["reference"] and not m["extra"], line
        assert m["d_iou"] <= SCORE_TOL and m["d_stab"] <= SCORE_TOL, line


def test_hole_and_sprinkle_removal_is_eight_connected():
    low = np.full((10, 10), -5.0, np.float32)
    low[1:6, 1:6] = 5.0  # a 25-cell square...
    low[3, 3] = -1.0  # ...with a one-cell hole
    low[8, 7] = low[9, 8] = 2.0  # a two-cell speck, joined only diagonally
    out = sam2_transforms.fill_holes_and_sprinkles(low, 1)
    assert out[3, 3] == 10.0 and np.array_equal(out[1:6, 1:6] > 0, np.ones((5, 5), bool))
    assert out[8, 7] == out[9, 8] == 2.0  # one region of two cells, not two of one
    out = sam2_transforms.fill_holes_and_sprinkles(low, 2)
    assert out[8, 7] == out[9, 8] == -10.0 and out[2, 2] == 5.0
    assert sam2_transforms.fill_holes_and_sprinkles(low, 0) is low or np.array_equal(
        sam2_transforms.fill_holes_and_sprinkles(low, 0), low)


def test_family_defaults_and_options():
    sam, sam2 = families.get("sam"), families.get("sam2.1")
    assert automatic.Options().validate(family=sam).pred_iou_thresh == 0.88
    assert automatic.Options().validate(family=sam2).pred_iou_thresh == 0.8
    assert automatic.Options(pred_iou_thresh=0.3).validate(family=sam2).pred_iou_thresh == 0.3
    for name, value in (("use_m2m", True), ("multimask_output", False), ("mask_threshold", 0.5)):
        with pytest.raises(automatic.ParameterError, match=f"{name}: is an option of the sam2.1 generator"):
            automatic.Options(**{name: value}).validate(family=sam)
        automatic.Options(**{name: value}).validate(family=sam2)
    with pytest.raises(automatic.ParameterError, match="use_m2m: must be true or false"):
        automatic.Options(use_m2m="yes").validate()
