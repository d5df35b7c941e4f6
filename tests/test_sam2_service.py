"""SAM 2.1 through the whole service: the encoder worker stores its three arrays, the decoder answers over
gRPC, and `Client.predict` equals the official `SAM2ImagePredictor` on the same weights (points, box,
multimask and single-mask, refinement by handle); `return_logits` upscaled on the client agrees in sign.
StreamSegment and SegmentEverything (with SAM 2's own options) answer as the same model in process, whose
parity with the references is tests/test_sam2.py's and tests/test_sam2_automatic.py's."""

from __future__ import annotations

import numpy as np
import pytest

from maskserve import AutomaticMaskGenerator, Predictor
from maskserve.engines.automatic import Options
from maskserve.client import Client, decode_mask, image_message, prompt_message
from maskserve.service.proto import pb
from maskserve.service.stack import LocalStack

from maskserve.build.specs import get_spec

SPEC = get_spec("sam2.1_hiera_tiny")


def _iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = np.logical_or(a, b).sum()
    return None if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def stack(sam2_tiny_random, tmp_path_factory):
    with LocalStack(model_dir=str(sam2_tiny_random[1]), log_dir=tmp_path_factory.mktemp("sam2-stack")) as s:
        yield s


@pytest.fixture(scope="module")
def image(photos):
    return np.ascontiguousarray(photos["coffee_400x600"][30:363, 40:557])


@pytest.fixture(scope="module")
def in_process(sam2_tiny_random, image):
    predictor = Predictor(sam2_tiny_random[1])
    predictor.set_image(image)
    return predictor


def test_client_equals_sam2_image_predictor(stack, sam2_tiny_random, image):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    reference = SAM2ImagePredictor(build_sam2(SPEC.config, ckpt_path=str(sam2_tiny_random[0]), device="cpu"))
    h, w = image.shape[:2]
    reference.set_image(image)
    worst_iou, worst_score = 1.0, 0.0
    with Client(stack.target) as client:
        assert client.model_info().family == "sam2.1"
        client.set_image(image)
        cases = [dict(point_coords=np.array([[0.5 * w, 0.45 * h]]), point_labels=np.array([1])),
                 dict(box=np.array([0.15 * w, 0.2 * h, 0.8 * w, 0.85 * h])),
                 dict(point_coords=np.array([[0.4 * w, 0.5 * h], [0.1 * w, 0.1 * h]]), point_labels=np.array([1, 0]))]
        for prompt in cases:
            for multimask in (True, False):
                m1, s1, l1 = reference.predict(multimask_output=multimask, **prompt)
                m2, s2, l2 = client.predict(multimask_output=multimask, **prompt)
                assert m2.shape == m1.shape and np.asarray(l2).shape == l1.shape
                worst_score = max(worst_score, float(np.abs(s1 - s2).max()))
                for a, b in zip(m1 > 0, m2):
                    if (iou := _iou(a, b)) is not None:
                        worst_iou = min(worst_iou, iou)
                # the next click refines the best answer: by handle here, by the logits there
                best = int(np.argmax(s1))
                more = dict(point_coords=np.array([[0.55 * w, 0.5 * h]]), point_labels=np.array([1]))
                r1 = reference.predict(mask_input=l1[best][None], multimask_output=False, **more)
                r2 = client.predict(mask_input=l2[best][None], multimask_output=False, **more)
                worst_score = max(worst_score, float(np.abs(r1[1] - r2[1]).max()))
                if (iou := _iou(r1[0][0] > 0, r2[0][0])) is not None:
                    worst_iou = min(worst_iou, iou)
        full = client.predict(return_logits=True, **cases[0])[0]
        agree = ((full > 0) == reference.predict(**cases[0])[0].astype(bool)).mean()
    print(f"SAM 2.1 through the wire: worst mask IoU {worst_iou:.5f}, |Δ iou_pred| {worst_score:.1e}, "
          f"return_logits sign agreement {agree:.5f}")
    assert worst_iou >= 0.995 and worst_score <= 1e-3
    # return_logits: the client upscales the ±32-clamped low-res logits the reference returns (the reference's
    # own masks come from the unclamped ones), so near saturated regions the edge moves by up to a pixel
    assert agree >= 0.99


def test_stream_segment_answers_as_in_process(stack, in_process, image):
    h, w = image.shape[:2]
    prompts = [dict(point_coords=[[0.3 * w, 0.6 * h]], point_labels=[1]), dict(box=[0.1 * w, 0.2 * h, 0.7 * w, 0.9 * h]),
               dict(point_coords=[[0.5 * w, 0.5 * h], [0.2 * w, 0.1 * h]], point_labels=[1, 0])]

    def requests():
        yield pb.StreamSegmentRequest(sequence=0, frame=image_message(image))
        for i, p in enumerate(prompts, 1):
            yield pb.StreamSegmentRequest(sequence=i, prompt=prompt_message(**p),
                                          options=pb.OutputOptions(single_mask=i == 2))

    with Client(stack.target) as client:
        replies = list(client.stub.StreamSegment(requests(), timeout=60))
    assert [r.sequence for r in replies] == [0, 1, 2, 3] and replies[0].image_id
    for i, (p, r) in enumerate(zip(prompts, replies[1:]), 1):
        kwargs = {k: np.asarray(v, np.float64) for k, v in p.items()}
        masks, scores, _ = in_process.predict(multimask_output=i != 2, **kwargs)
        got = r.result.masks
        assert len(got) == len(masks)
        for m, want, score in zip(got, masks, scores):
            assert np.array_equal(decode_mask(m), want) and abs(m.predicted_iou - score) <= 1e-6


def test_segment_everything_answers_as_in_process(stack, in_process, image, monkeypatch):
    """The service's generator (the image from the store, SAM 2's options over the wire, its default
    pred_iou_thresh when unset) gives the in-process generator's masks and fields."""
    options = dict(points_per_side=6, stability_score_thresh=0.45, stability_score_offset=0.05, box_nms_thresh=1.0,
                   min_mask_region_area=30, use_m2m=True, mask_threshold=0.01)
    with Client(stack.target) as client:
        wire = client.segment_everything(image, Options(pred_iou_thresh=0.52, **options))
        defaults = client.segment_everything(image, Options(points_per_side=4, stability_score_thresh=0.0,
                                                            box_nms_thresh=1.0))
    here = AutomaticMaskGenerator(in_process, pred_iou_thresh=0.52, **options)
    monkeypatch.setattr(in_process, "set_image", lambda _image: None)  # it is set already
    mine = here.generate_masks(image)
    assert len(wire) == len(mine) >= 20
    assert wire.rles == mine.rles and np.array_equal(wire.boxes, mine.boxes)
    assert np.allclose(wire.iou_preds, mine.iou_preds, atol=1e-6) and np.allclose(wire.stability, mine.stability, atol=1e-6)
    assert np.array_equal(wire.points.astype(np.float32), mine.points.astype(np.float32))
    # SAM 2.1's default threshold (0.8) is above every predicted IoU of these random weights: nothing passes
    assert len(defaults) == 0
