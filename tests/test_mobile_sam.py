"""MobileSAM (vit_t): its checkpoint, its model directory, and parity with the official `mobile_sam` package's
`SamPredictor` and `SamAutomaticMaskGenerator` on the same seeded random weights (tests/conftest.py
`vit_t_random`) — in process, through the wire, and on a stream of camera frames."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import test_automatic
import test_parity
from conftest import report
from maskserve import AutomaticMaskGenerator, Predictor
from maskserve.build.checkpoint import CheckpointError, load_model
from maskserve.build.specs import get_spec
from maskserve.client import Client, decode_mask
from maskserve.engines import families, transforms
from maskserve.engines.model_dir import Manifest
from maskserve.service.stack import LocalStack

SPEC = get_spec("vit_t")


@pytest.fixture(scope="module")
def reference_model(vit_t_random):
    """As the authors' README builds it: the registry's builder with the checkpoint, then `eval()` (which gathers
    TinyViT's attention biases from the loaded weights)."""
    from mobile_sam import sam_model_registry

    return sam_model_registry["vit_t"](checkpoint=str(vit_t_random[0])).eval()


@pytest.fixture(scope="module")
def reference(reference_model):
    from mobile_sam import SamPredictor

    return SamPredictor(reference_model)


def test_model_directory_is_the_mobile_sam_family(vit_t_random):
    manifest = Manifest.load(vit_t_random[1])
    family = families.of(manifest)
    assert family.name == manifest.family == "mobile_sam" and manifest.model_type == "vit_t"
    assert family.arrays == families.get("sam").arrays  # SAM's decoder, SAM's embedding
    assert tuple(manifest.embedding_shape) == (256, 64, 64) and manifest.image_size == 1024
    assert manifest.model_version.startswith("vit_t-")
    assert manifest.model_version == family.model_version("vit_t", manifest.checkpoint_sha256, manifest.embedding_layout)
    decoder = ort.InferenceSession(str(vit_t_random[1] / manifest.decoder["file"]))
    assert [i.name for i in decoder.get_inputs()] == family.decoder_inputs


def test_encoder_graph_computes_tinyvit(vit_t_random, reference_model, photos):
    import torch

    image = photos["coffee_400x600"]
    x = transforms.preprocess(image, SPEC.image_size, SPEC.pixel_mean, SPEC.pixel_std)[0][None]
    with torch.inference_mode():
        expected = reference_model.image_encoder(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(vit_t_random[1] / "encoder.onnx")).run(None, {"images": x})[0]
    error = float(np.abs(got - expected).max())
    report(f"vit_t encoder graph vs mobile_sam's TinyViT: max |Δ| {error:.1e} (embedding max {np.abs(expected).max():.2f})")
    assert error < 1e-3


def test_the_torch_backend_runs_tinyvit(vit_t_random, reference_model, photos, tmp_path):
    """`--backend torch`: the checkpoint's TinyViT weights run by mobile_sam's own module (on the CPU here), the
    same model version as the ONNX Runtime directory, so the two share one embedding store."""
    import torch

    from maskserve.build.builder import build_model_dir
    from maskserve.engines.torch_backend import TorchEncoder

    manifest = build_model_dir(vit_t_random[0], "vit_t", tmp_path / "torch", backend="torch")
    assert manifest.model_version == Manifest.load(vit_t_random[1]).model_version
    x = transforms.preprocess(photos["chelsea_300x451"], SPEC.image_size, SPEC.pixel_mean, SPEC.pixel_std)[0][None]
    got = TorchEncoder(tmp_path / "torch", manifest, device="cpu").encode(x)
    with torch.inference_mode():
        expected = reference_model.image_encoder(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - expected).max()) < 1e-4


def test_a_mobile_sam_checkpoint_given_as_vit_b_is_named(vit_t_random):
    with pytest.raises(CheckpointError, match="looks like a vit_t checkpoint"):
        load_model(vit_t_random[0], "vit_b")


def test_predictor_matches_mobile_sam(vit_t_random, reference, photos):
    images = {k: photos[k] for k in ("coffee_400x600", "small_23x41", "tall_640x25")}
    test_parity.check_parity("vit_t (seeded random weights)", vit_t_random[0], "vit_t", vit_t_random[1], images,
                             reference=reference)


def test_generator_matches_mobile_sam(vit_t_random, reference_model, photos):
    """Its decoder is SAM's at init scale, as the seeded ViT-B's: the same scaled thresholds (test_automatic.VIT_B)."""
    image = np.ascontiguousarray(photos["coffee_400x600"][::2, ::2])
    test_automatic.check_parity("vit_t (seeded random weights)", reference_model, Predictor(vit_t_random[1]), image,
                                dict(test_automatic.VIT_B, points_per_side=16), only=("defaults",),
                                package="mobile_sam")


# -- through the service ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(vit_t_random, tmp_path_factory):
    with LocalStack(model_dir=str(vit_t_random[1]), log_dir=tmp_path_factory.mktemp("vit_t-stack")) as s:
        yield s


def test_client_predict_matches_mobile_sam(stack, reference, photos):
    image = np.ascontiguousarray(photos["chelsea_300x451"])
    h, w = image.shape[:2]
    reference.set_image(image)
    worst_iou, worst_score = 1.0, 0.0
    with Client(stack.target) as client:
        assert client.model_info().family == "mobile_sam"
        client.set_image(image)
        for case, kwargs in test_parity._prompt_cases(h, w):
            if case == "refine":
                continue
            m1, s1, l1 = reference.predict(**kwargs)
            m2, s2, l2 = client.predict(**kwargs)
            worst_score = max(worst_score, float(np.abs(s1 - s2).max()))
            worst_iou = min(worst_iou, *(test_parity._iou(a, b) for a, b in zip(m1, m2)))
            best = int(np.argmax(s1))  # the next click refines the best answer: by handle here, by logits there
            more = dict(point_coords=np.array([[0.55 * w, 0.5 * h]]), point_labels=np.array([1]),
                        multimask_output=False)
            r1 = reference.predict(mask_input=l1[best][None], **more)
            r2 = client.predict(mask_input=l2[best][None], **more)
            worst_score = max(worst_score, float(np.abs(r1[1] - r2[1]).max()))
            worst_iou = min(worst_iou, test_parity._iou(r1[0][0], r2[0][0]))
    report(f"vit_t through the wire: worst mask IoU {worst_iou:.5f}, |Δ predicted IoU| {worst_score:.1e}")
    assert worst_iou >= test_parity.IOU_MIN and worst_score <= test_parity.SCORE_TOL


def test_segment_everything_answers_as_in_process(stack, vit_t_random, photos):
    image = np.ascontiguousarray(photos["coffee_400x600"][::2, ::2])
    options = dict(test_automatic.VIT_B, points_per_side=8)
    local = AutomaticMaskGenerator(Predictor(vit_t_random[1]), output_mode="coco_rle", **options).generate(image)
    with Client(stack.target) as client:
        remote = AutomaticMaskGenerator(client, output_mode="coco_rle", **options).generate(image)
    assert len(remote) == len(local) > 0
    for a, b in zip(remote, local):
        assert a["segmentation"] == b["segmentation"] and abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-5


def test_a_camera_stream_of_frames_and_gaze_points(stack, reference, video_frames):
    """The robotics loop: each message a new frame, then a gaze point on it; the best mask only. Each answer is
    the reference's best mask for that frame and point (set_image + predict per frame)."""
    frames = video_frames[:3]
    h, w = frames[0].shape[:2]
    gaze = [(0.5 * w, 0.5 * h), (0.45 * w, 0.55 * h), (0.4 * w, 0.5 * h)]
    replies = test_parity.camera_stream(stack, frames, gaze)
    worst = 1.0
    for i, (frame, point) in enumerate(zip(frames, gaze)):
        assert replies[2 * i].image_id, replies[2 * i]
        result = replies[2 * i + 1].result
        assert len(result.masks) == 1
        got = decode_mask(result.masks[0])
        reference.set_image(frame)
        masks, scores, _ = reference.predict(np.array([point]), np.array([1]))
        worst = min(worst, test_parity._iou(masks[int(np.argmax(scores))], got))
        assert abs(result.masks[0].predicted_iou - float(scores.max())) <= test_parity.SCORE_TOL
    report(f"vit_t camera stream ({len(frames)} frames): worst best-mask IoU vs set_image + predict {worst:.5f}")
    assert worst >= test_parity.IOU_MIN



def test_served_by_its_publishers_name(vit_t_random, tmp_path):
    """`maskserve up --model mobile_sam [--checkpoint FILE]`: built once into the cache as model type vit_t."""
    from maskserve.build.served import model_dir_for

    out = model_dir_for("mobile_sam", vit_t_random[0], cache=tmp_path, progress=False)
    assert out.parent == tmp_path / "models" and out.name.startswith("vit_t-")
    manifest = Manifest.load(out)
    assert (manifest.model_type, manifest.family) == ("vit_t", "mobile_sam")
    assert manifest.model_version == Manifest.load(vit_t_random[1]).model_version
