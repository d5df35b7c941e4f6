"""maskserve.Predictor (ONNX Runtime, no torch) against segment_anything.SamPredictor on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import report

IOU_MIN = 0.995
# float16 embedding storage is an opt-in with a measured loss (docs/performance.md): its worst case is a small mask, where
# a few boundary pixels flipped by the rounding are a percent of the area (tiny model, 25-pixel-wide image).
FLOAT16_IOU_MIN = 0.98
SCORE_TOL = 1e-3


def _prompt_cases(h: int, w: int):
    """(name, kwargs); 'refine' cases take the previous answer's best low-res logits as mask input."""
    cx, cy = w * 0.5, h * 0.5
    box = np.array([w * 0.2, h * 0.25, w * 0.75, h * 0.8])
    yield "point", dict(point_coords=np.array([[cx, cy]]), point_labels=np.array([1]))
    yield "point/single", dict(point_coords=np.array([[cx, cy]]), point_labels=np.array([1]), multimask_output=False)
    yield "pos+neg", dict(point_coords=np.array([[cx, cy], [w * 0.1, h * 0.15]]), point_labels=np.array([1, 0]),
                          multimask_output=False)
    yield "box", dict(box=box, multimask_output=False)
    yield "box+points", dict(box=box, point_coords=np.array([[cx, cy], [w * 0.3, h * 0.7]]),
                             point_labels=np.array([1, 0]))
    yield "five points", dict(point_coords=np.array([[w * f, h * g] for f, g in
                                                     [(.2, .2), (.4, .6), (.5, .5), (.8, .3), (.6, .9)]]),
                              point_labels=np.array([1, 1, 0, 1, 0]))
    yield "refine", dict(point_coords=np.array([[cx, cy], [w * 0.3, h * 0.4]]), point_labels=np.array([1, 1]),
                         multimask_output=False)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def camera_stream(stack, frames, points) -> list:
    """StreamSegment as a robot drives it: each frame, then a point on it (best mask only); the replies."""
    import grpc

    from maskserve.client import image_message, prompt_message
    from maskserve.service.proto import pb, pb_grpc

    def requests():
        for i, (frame, point) in enumerate(zip(frames, points)):
            yield pb.StreamSegmentRequest(sequence=2 * i, frame=image_message(frame))
            yield pb.StreamSegmentRequest(sequence=2 * i + 1, prompt=prompt_message([point], [1]),
                                          options=pb.OutputOptions(best_mask_only=True))

    with grpc.insecure_channel(stack.target) as channel:
        replies = list(pb_grpc.SegmenterStub(channel).StreamSegment(requests(), timeout=300))
    assert [r.sequence for r in replies] == list(range(2 * len(frames)))
    return replies


def check_parity(model_name, checkpoint, model_type, model_dir, images, reference=None):
    """`reference`: a SamPredictor on the same weights; default segment_anything's."""
    from maskserve import Predictor

    if reference is None:
        from segment_anything import SamPredictor

        from maskserve.build.checkpoint import load_model

        reference = SamPredictor(load_model(checkpoint, model_type))
    ours = Predictor(model_dir)
    half = Predictor(model_dir)  # with the embedding as MASKSERVE_EMBEDDING_DTYPE=float16 stores it
    worst_iou, worst_score, worst_half = (1.0, ""), (0.0, ""), (1.0, "")
    for image_name, image in images.items():
        reference.set_image(image)
        ours.set_image(image)
        half.set_embedding(ours.get_image_embedding().astype(np.float16), image.shape[:2])
        h, w = image.shape[:2]
        previous = None
        for case, kwargs in _prompt_cases(h, w):
            if case == "refine":
                kwargs = dict(kwargs, mask_input=previous)
            ref = reference.predict(**kwargs)
            got = ours.predict(**kwargs)
            got_half = half.predict(**kwargs)
            for r, g in zip(ref, got):
                assert g.shape == r.shape and g.dtype == r.dtype, (case, g.shape, r.shape, g.dtype, r.dtype)
            where = f"{model_name} {image_name} {case}"
            for k in range(len(ref[0])):
                iou = _iou(ref[0][k], got[0][k])
                if iou < worst_iou[0]:
                    worst_iou = (iou, f"{where} mask {k}")
                iou = _iou(ref[0][k], got_half[0][k])
                if iou < worst_half[0]:
                    worst_half = (iou, f"{where} mask {k}")
            delta = float(np.abs(ref[1] - got[1]).max())
            if delta > worst_score[0]:
                worst_score = (delta, where)
            previous = ref[2][[int(np.argmax(ref[1]))]]
        logits_ref = reference.predict(**dict(next(_prompt_cases(h, w))[1], return_logits=True))[0]
        logits_got = ours.predict(**dict(next(_prompt_cases(h, w))[1], return_logits=True))[0]
        assert logits_got.dtype == np.float32
        assert np.abs(logits_ref - logits_got).max() < 1e-2
    report(f"parity {model_name}: worst mask IoU {worst_iou[0]:.6f} ({worst_iou[1]}); "
           f"worst |Δ predicted IoU| {worst_score[0]:.2e} ({worst_score[1]}); "
           f"float16 embeddings: worst mask IoU {worst_half[0]:.6f} ({worst_half[1]})")
    assert worst_iou[0] >= IOU_MIN, worst_iou
    assert worst_half[0] >= FLOAT16_IOU_MIN, worst_half
    assert worst_score[0] <= SCORE_TOL, worst_score


def test_tiny_model_matches_reference(tiny_checkpoint, tiny_model_dir, photos):
    check_parity("tiny", tiny_checkpoint, "tiny", tiny_model_dir, photos)


def test_full_size_vit_b_matches_reference(vit_b_random, photos):
    checkpoint, model_dir = vit_b_random
    images = {k: photos[k] for k in ("coffee_400x600", "wide_18x600")}
    check_parity("vit_b (seeded random weights)", checkpoint, "vit_b", model_dir, images)
