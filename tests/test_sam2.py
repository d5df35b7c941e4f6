"""SAM 2.1 image models: checkpoint loading, the exported graphs and the model directory, and parity of
`Predictor` with the official `sam2` package's `SAM2ImagePredictor` on the same seeded random weights.

Parity: per mask IoU ≥ 0.995 (where either mask has a pixel), |Δ predicted IoU| ≤ 1e-3 and the low-res
logits close, for points, negatives, boxes, box + points and mask input, multimask and single-mask, on real
photos of odd sizes. The reference computes each image's embedding once (about 6 s for hiera-tiny on two
cores); every prompt case of an image runs against it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import SAM2_TOKEN_SCALES, report
from maskserve.build.checkpoint import CheckpointError, load_model
from maskserve.build.sam2_checkpoint import build_sam2_model, guess_sam2_model_type, read_sam2_state_dict
from maskserve.build.specs import SAM2_SPECS, get_spec
from maskserve.build.tensorrt_engines import profiles
from maskserve.engines import families, interface, load, prompts, sam2_transforms
from maskserve.engines.model_dir import Manifest, ModelDirError
from maskserve.engines.predictor import Predictor

SPEC = get_spec("sam2.1_hiera_tiny")
IOU_MIN, SCORE_TOL = 0.995, 1e-3
FLOAT16_IOU_MIN = 0.98  # as SAM's (tests/test_parity.py): the opt-in's measured loss, worst on small masks


@pytest.fixture(scope="module")
def built(sam2_tiny_random):
    return sam2_tiny_random


@pytest.fixture(scope="module")
def state(built):
    return read_sam2_state_dict(built[0])


@pytest.fixture(scope="module")
def reference(built):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(build_sam2(SPEC.config, ckpt_path=str(built[0]), device="cpu"))


@pytest.fixture(scope="module")
def predictor(built):
    return Predictor(built[1])


# -- specs and checkpoints ----------------------------------------------------------------------------------


def test_specs_name_meta_configs_and_files():
    for name, spec in SAM2_SPECS.items():
        assert spec.family == "sam2.1" and spec.checkpoint_url.endswith(f"/092824/{name}.pt")
        assert spec.config == f"configs/sam2.1/sam2.1_hiera_{dict(tiny='t', small='s', base_plus='b+', large='l')[name.split('_', 2)[2]]}.yaml"
        assert spec.checkpoint_bytes > 100_000_000 and len(spec.checkpoint_sha256) == 64
        assert [a[0] for a in spec.embedding_layout] == list(families.get("sam2.1").arrays)
    assert get_spec("vit_b").family == "sam"


def test_checkpoint_is_metas_format_and_guessed(state):
    assert guess_sam2_model_type(state) == "sam2.1_hiera_tiny"
    tops = {k.split(".")[0] for k in state}
    assert {"image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "memory_attention", "no_mem_embed"} <= tops


def test_malformed_checkpoints_are_refused(built, state, tiny_checkpoint, tmp_path):
    def refused(obj, match, model_type="sam2.1_hiera_tiny"):
        path = tmp_path / "bad.pt"
        torch.save(obj, path)
        with pytest.raises(CheckpointError, match=match):
            load_model(path, model_type)

    refused({k: v for k, v in state.items() if k != "no_mem_embed"} | {}, "bare state dict")
    refused({"model": {k: v for k, v in state.items() if k != "no_mem_embed"}}, r"1 missing keys \(no_mem_embed\)")
    refused({"model": {**state, "extra.weight": torch.zeros(1)}}, r"1 unexpected keys \(extra.weight\)")
    refused({"model": {**state, "no_mem_embed": torch.zeros(1, 1, 128)}},
            r"wrong shape \(no_mem_embed \(1, 1, 128\) \(expected \(1, 1, 256\)\)\)")
    refused({"model": "weights"}, "its \"model\" entry is not a mapping")
    refused({"state_dict": state}, r"expected \{\"model\": state dict\}, found a dict \(its keys: state_dict\)")
    refused({"model": state}, "does not fit model type sam2.1_hiera_small.*looks like a sam2.1_hiera_tiny",
            model_type="sam2.1_hiera_small")
    with pytest.raises(CheckpointError, match="looks like a SAM checkpoint"):
        load_model(tiny_checkpoint, "sam2.1_hiera_tiny")
    with pytest.raises(CheckpointError, match="SAM 2.1 format"):  # the other way round
        load_model(built[0], "vit_b")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(built[0].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="could not be read|not a PyTorch file"):
        load_model(truncated, "sam2.1_hiera_tiny")


def test_cli_build_reports_a_refused_checkpoint(tiny_checkpoint, tmp_path):
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "build", "--model-type", "sam2.1_hiera_tiny",
                          "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "m")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "not a SAM 2.1 checkpoint" in out.stderr.replace("\n", "")
    assert not (tmp_path / "m").exists()


# -- the model directory ------------------------------------------------------------------------------------


def test_manifest_lays_out_three_arrays_and_versions_apart_from_sam(built, tiny_model_dir):
    _, model_dir = built
    data = json.loads((model_dir / "manifest.json").read_text())
    m = Manifest.load(model_dir)
    assert data["family"] == "sam2.1" and data["model_type"] == "sam2.1_hiera_tiny"
    assert data["embedding_layout"] == [
        {"name": "image_embeddings", "shape": [256, 64, 64], "dtype": "float32"},
        {"name": "high_res_feats_0", "shape": [32, 256, 256], "dtype": "float32"},
        {"name": "high_res_feats_1", "shape": [64, 128, 128], "dtype": "float32"}]
    assert data["image_size"] == 1024 and data["mask_input_size"] == 256 and data["embedding_shape"] == [256, 64, 64]
    assert m.embedding_nbytes() == 16 << 20 and m.embedding_nbytes("float16") == 8 << 20
    assert m.model_version.startswith("sam2.1_hiera_tiny-") and m.model_version == m.derive_model_version()
    # The same checkpoint digest under SAM's derivation (one array) is another version: a SAM decoder can never
    # be given these embeddings, nor the other way round.
    assert m.model_version != families.get("sam").model_version(m.model_type, m.checkpoint_sha256, m.embedding_layout)
    sam = Manifest.load(tiny_model_dir)  # a manifest from before families: SAM's, one array
    assert sam.family == "sam" and sam.array_names == ["image_embeddings"]
    assert sam.model_version == sam.derive_model_version()  # the shipped manifest's: derivation unchanged
    assert sam.embedding_nbytes() == 4 * int(np.prod(sam.embedding_shape))


def test_manifest_refuses_an_unknown_family(built, tmp_path):
    broken = tmp_path / "m"
    broken.mkdir()
    for f in built[1].iterdir():
        (broken / f.name).symlink_to(f)
    data = json.loads((built[1] / "manifest.json").read_text())
    (broken / "manifest.json").unlink()
    (broken / "manifest.json").write_text(json.dumps({**data, "family": "sam9"}))
    with pytest.raises(ModelDirError, match="model family 'sam9'"):
        Manifest.load(broken)


def test_graphs_have_the_declared_names_and_dynamic_axes(built):
    _, model_dir = built
    for file, inputs, outputs in (("encoder.onnx", interface.ENCODER_INPUTS, list(families.get("sam2.1").arrays)),
                                  ("decoder.onnx", families.get("sam2.1").decoder_inputs, interface.DECODER_OUTPUTS)):
        model = onnx.load(str(model_dir / file))
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == inputs and [o.name for o in model.graph.output] == outputs
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # what TensorRT's parser reads
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        if file == "encoder.onnx":
            assert dims == {"images": ["batch", 3, 1024, 1024]}
        else:
            assert dims["high_res_feats_0"] == [1, 32, 256, 256] and dims["high_res_feats_1"] == [1, 64, 128, 128]
            assert dims["point_coords"] == ["batch", "points", 2] and dims["mask_input"] == ["batch", 1, 256, 256]
        # The TensorRT build's profiles name every input with its rank.
        m = Manifest.load(model_dir)
        profile = profiles(m, 8, 64, 64)[0 if file == "encoder.onnx" else 1]
        assert list(profile) == inputs and all(len(s) == len(dims[k]) for k, v in profile.items() for s in v)


def test_engine_interface_for_several_arrays(built):
    model = load(built[1])
    with pytest.raises(TypeError, match="use encode_arrays"):
        model.encoder.encode(np.zeros((1, 3, 1024, 1024), np.float32))
    assert model.decoder.prepare({}) is None
    rng = np.random.default_rng(0)
    emb = {a["name"]: rng.normal(size=(1, *a["shape"])).astype(np.float32) for a in model.manifest.embedding_layout}
    coords = rng.uniform(0, 1024, (3, 2, 2)).astype(np.float32)
    labels = np.array([[1, -1], [2, 3], [0, -1]], np.float32)
    masks_in = rng.normal(size=(3, 1, 256, 256)).astype(np.float32)
    has = np.array([0, 1, 0], np.float32)
    iou, low = model.decoder.decode(emb, coords, labels, masks_in, has)
    assert iou.shape == (3, 4) and low.shape == (3, 4, 256, 256)
    for i in range(3):  # a batch answers as its prompts one by one
        one = model.decoder.decode(emb, coords[i:i + 1], labels[i:i + 1], masks_in[i:i + 1], has[i:i + 1])
        assert np.abs(one[0] - iou[i:i + 1]).max() < 1e-5 and np.abs(one[1] - low[i:i + 1]).max() < 1e-3
    with pytest.raises(ValueError, match="lacks high_res_feats_1"):
        prompts.embedding_arrays({k: v for k, v in emb.items() if k != "high_res_feats_1"}, model.manifest)
    with pytest.raises(TypeError, match="a mapping of its named arrays"):
        prompts.embedding_arrays(emb["image_embeddings"], model.manifest)


# -- pre- and post-processing against SAM2Transforms ---------------------------------------------------------


@pytest.mark.parametrize("size", [(333, 517), (23, 41), (1024, 1024), (1500, 2100), (18, 600), (2000, 700)])
def test_preprocessing_equals_sam2_transforms(size):
    from sam2.utils.transforms import SAM2Transforms

    rng = np.random.default_rng(size[0])
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    reference = SAM2Transforms(1024, 0.0)
    expected = reference(image).numpy()
    got = sam2_transforms.preprocess(image, 1024, SPEC.pixel_mean, SPEC.pixel_std)
    assert got.shape == (3, 1024, 1024) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5  # antialiased when shrinking, as torchvision's Resize
    coords = rng.uniform(0, max(size), (5, 2))
    assert np.abs(sam2_transforms.transform_coords(coords, size, 1024) - reference.transform_coords(
        torch.as_tensor(coords, dtype=torch.float), normalize=True, orig_hw=size).numpy()).max() < 1e-4
    low = rng.normal(size=(2, 256, 256)).astype(np.float32) * 5
    up = reference.postprocess_masks(torch.from_numpy(low)[None], size)[0].numpy()
    got = sam2_transforms.upscale_logits(low, size)
    # torch computes the source positions in float32 (a few 1e-5 of a pixel off at the far edge of a large
    # output); OpenCV's are exact, so the logits differ by up to ~1e-4 of their range there...
    assert np.abs(got - up).max() < 1e-3
    # ...and thresholded masks only where the logit is within that of zero.
    disagree = (got > 0) != (up > 0)
    assert np.all(np.abs(up[disagree]) < 1e-3)


def test_single_mask_choice_equals_the_reference_decoder(reference):
    decoder = reference.model.sam_mask_decoder
    assert decoder.dynamic_multimask_via_stability
    assert (decoder.dynamic_multimask_stability_delta, decoder.dynamic_multimask_stability_thresh) == (
        sam2_transforms.STABILITY_DELTA, sam2_transforms.STABILITY_THRESHOLD)
    rng = np.random.default_rng(1)
    low = rng.normal(size=(6, 4, 256, 256)).astype(np.float32)
    low[0, 0] *= 1000  # stable
    low[1, 0] = -1.0  # nothing above −0.05: stability 1
    low[2, 0] = 0.0  # all within the band: 0 / all, unstable
    low[3, 0] = np.where(rng.random((256, 256)) < 0.01, 0.01, 3.0)  # 1 % in the band: stability 0.99
    low[5, 0] = np.where(rng.random((256, 256)) < 0.03, 0.01, 3.0)  # 3 %: 0.97, unstable
    iou = rng.random((6, 4)).astype(np.float32)
    iou[4, 1:] = 0.5  # ties: the first
    expected = decoder._dynamic_multimask_via_stability(torch.from_numpy(low), torch.from_numpy(iou))
    got = sam2_transforms.select_single_mask(iou, low)
    assert np.array_equal(got[0], expected[1].numpy()) and np.array_equal(got[1], expected[0].numpy())
    tokens = sam2_transforms.single_mask_tokens(iou, low).tolist()
    assert tokens[:4] == [0, 0, int(1 + np.argmax(iou[2, 1:])), 0] and tokens[5] != 0


# -- parity with SAM2ImagePredictor --------------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = np.logical_or(a, b).sum()
    return None if union == 0 else float(np.logical_and(a, b).sum() / union)


def _compare(case: str, expected, got, worst: dict, logits_tol: float = 1e-3) -> None:
    (m1, s1, l1), (m2, s2, l2) = expected, got
    assert m2.shape == m1.shape and s2.shape == s1.shape and l2.shape == l1.shape, case
    for k in range(len(m1)):
        a, b = m1[k] > 0, m2[k]
        iou = _iou(a, b)
        if iou is None:  # both empty: nothing to compare but the logits below
            continue
        assert 0.001 < a.mean() < 0.999, f"{case}: degenerate reference mask {k} ({a.mean():.4f} on)"
        assert iou >= IOU_MIN, f"{case}: mask {k} IoU {iou:.5f}"
        worst["iou"] = min(worst["iou"], iou)
    delta = float(np.abs(s1 - s2).max())
    assert delta <= SCORE_TOL, f"{case}: |Δ iou_pred| {delta:.2e}"
    scale = max(1.0, float(np.abs(l1).max()))
    logits = float(np.abs(l1 - l2).max()) / scale
    assert logits <= logits_tol, f"{case}: low-res logits differ by {logits:.2e} (relative to {scale:.1f})"
    worst["score"], worst["logits"] = max(worst["score"], delta), max(worst["logits"], logits)
    worst["absolute"] = max(worst["absolute"], float(np.abs(l1 - l2).max()))


def _cases(h: int, w: int) -> dict[str, dict]:
    p = lambda fx, fy: [fx * w, fy * h]  # noqa: E731
    box = np.array([*p(0.15, 0.2), *p(0.8, 0.85)])
    return {
        "one point": dict(point_coords=np.array([p(0.5, 0.45)]), point_labels=np.array([1])),
        "points with negatives": dict(point_coords=np.array([p(0.4, 0.5), p(0.1, 0.1), p(0.7, 0.6), p(0.9, 0.2)]),
                                      point_labels=np.array([1, 0, 1, 0])),
        "box": dict(box=box),
        "box + points": dict(box=box, point_coords=np.array([p(0.5, 0.5), p(0.2, 0.8)]), point_labels=np.array([1, 0])),
        "edge point": dict(point_coords=np.array([p(0.0, 1.0)]), point_labels=np.array([1])),
    }


@pytest.fixture(scope="module")
def half(built):
    """A Predictor given each embedding as MASKSERVE_EMBEDDING_DTYPE=float16 stores it (through the store's
    packing): the three arrays rounded to float16."""
    return Predictor(built[1])


@pytest.mark.parametrize("name", ["coffee_333x517", "chelsea_300x451", "small_23x41"])
def test_predictor_equals_sam2_image_predictor(name, photos, reference, predictor, half):
    from maskserve.service import store

    image = np.ascontiguousarray(photos["coffee_400x600"][30:363, 40:557]) if name == "coffee_333x517" \
        else photos[name]
    h, w = image.shape[:2]
    reference.set_image(image)
    predictor.set_image(image)
    features = predictor.get_image_arrays()
    for k, expected in zip(list(families.get("sam2.1").arrays), [reference._features["image_embed"],
                                                              *reference._features["high_res_feats"]]):
        assert np.abs(features[k] - expected.numpy()).max() < 1e-4, k
    assert np.array_equal(predictor.get_image_embedding(), features["image_embeddings"])
    stored = store.unpack(store.pack(features, predictor.manifest.model_version, (h, w), "float16"))
    half.set_embedding(stored.arrays, stored.original_size)
    worst = {"iou": 1.0, "score": 0.0, "logits": 0.0, "absolute": 0.0}
    worst_half = {"iou": 1.0, "score": 0.0}
    branches = {"stable token 0": 0, "fallback": 0}
    clamped = 0
    for case, prompt in _cases(h, w).items():
        for multimask in (True, False):
            tag = f"{name} {case} multimask={multimask}"
            expected = reference.predict(multimask_output=multimask, **prompt)
            got = predictor.predict(multimask_output=multimask, **prompt)
            _compare(tag, expected, got, worst)
            got_half = half.predict(multimask_output=multimask, **prompt)
            worst_half["score"] = max(worst_half["score"], float(np.abs(expected[1] - got_half[1]).max()))
            for a, b in zip(expected[0] > 0, got_half[0]):
                if (iou := _iou(a, b)) is not None:
                    worst_half["iou"] = min(worst_half["iou"], iou)
            clamped += int(np.abs(expected[2]).max() >= 32.0)
            if not multimask:
                multi = predictor.predict(**prompt)[1]
                branches["fallback" if got[1][0] in multi else "stable token 0"] += 1
            # Refinement: the answer's own low-res logits back as mask_input, as a user's loop does.
            best = int(np.argmax(expected[1]))
            for refine_multimask in (False, True):
                _compare(f"{tag} refined multimask={refine_multimask}",
                         reference.predict(mask_input=expected[2][best][None], multimask_output=refine_multimask, **prompt),
                         predictor.predict(mask_input=got[2][best][None], multimask_output=refine_multimask, **prompt),
                         worst)
    prompt = _cases(h, w)["box + points"]
    (l1, _, _), (l2, _, _) = (reference.predict(return_logits=True, **prompt),
                              predictor.predict(return_logits=True, **prompt))
    assert l2.dtype == np.float32 and l2.shape == (3, h, w)
    assert np.abs(l1 - l2).max() / max(1.0, np.abs(l1).max()) < 1e-3
    report(f"SAM 2.1 parity on {name}: worst mask IoU {worst['iou']:.5f}, |Δ iou_pred| {worst['score']:.1e}, "
           f"low-res logits {worst['absolute']:.1e} ({worst['logits']:.1e} of their range); single-mask answers "
           f"{branches}; {clamped} answers clamped at ±32; float16 store: worst mask IoU {worst_half['iou']:.5f}, "
           f"|Δ iou_pred| {worst_half['score']:.1e}")
    assert worst_half["iou"] >= FLOAT16_IOU_MIN and worst_half["score"] <= SCORE_TOL, worst_half
    # The checkpoint's scaled tokens (conftest.SAM2_TOKEN_SCALES) make both single-mask branches and the clamp
    # happen here, each checked against the reference above.
    assert all(branches.values()), branches
    assert clamped, f"no answer reached the ±32 clamp (token 3 is scaled ×{SAM2_TOKEN_SCALES[3]:g} for it)"
