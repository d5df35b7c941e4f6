"""SAM 3 on the PyTorch encoder backend (engines/torch_sam3.py), on the CPU (CUDA cases skip without a GPU): the
model directory `maskserve build --backend torch` writes, the six embedding arrays against the ONNX encoder's
and the package's own backbone (windowed blocks included), concept prompts from the encoder worker through the
wire against Sam3Processor, bf16 and fp16, what the loader refuses, and the GPU check's SAM 3 path.

It is for GPU nodes: on a CPU it is level with ONNX Runtime (docs/performance.md, "SAM 3")."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import test_parity
from conftest import report
from maskserve import ConceptSegmenter, Predictor
from maskserve.build.builder import build_model_dir
from maskserve.build.checkpoint import file_digest, read_checkpoint_file
from maskserve.engines import families, load, prompts
from maskserve.engines import torch_backend as tb
from maskserve.engines import torch_sam3
from maskserve.engines.model_dir import Manifest, ModelDirError
from test_sam2_torch import (FP32_ABS, IOU_MEAN_MIN, IOU_WORST_MIN, REDUCED_REL_MAX, encoder,  # the torch tests' own
                             needs_cuda, rel)
from test_sam3 import _check_concepts, processor, reference_model  # noqa: F401 - the shared reference fixtures

ARRAYS = families.get("sam3").arrays


@pytest.fixture(scope="module")
def torch_dir(sam3_random, tmp_path_factory):
    out = tmp_path_factory.mktemp("sam3-torch") / "model"
    build_model_dir(sam3_random[0], "sam3", out, backend="torch")
    return out


@pytest.fixture(scope="module")
def images(photos):
    return [np.ascontiguousarray(photos["coffee_400x600"][30:363, 40:557]), photos["chelsea_300x451"]]


@pytest.fixture(scope="module")
def expected(sam3_random, images):
    """The ONNX encoder's arrays for `images` (the model directory every parity test of test_sam3 checks)."""
    model = load(sam3_random[1], decoder=False)
    m = Manifest.load(sam3_random[1])
    return model.encoder.encode_arrays(np.stack([prompts.prepare_image(im, m) for im in images]))


def test_the_model_directory(torch_dir, sam3_random):
    """The ONNX build's manifest but for the encoder: same family, layout, concept graphs and model version (an
    embedding made by either is read by both), encoder.pt holding the checkpoint's backbone weights under their
    names, the ViT's shape recorded."""
    from maskserve.build.sam3_export import image_state

    m, onnx = Manifest.load(torch_dir), Manifest.load(sam3_random[1])
    assert (m.backend, m.precision, m.family, m.encoder["file"]) == ("torch", "fp32", "sam3", "encoder.pt")
    assert (m.embedding_layout, m.model_version, m.concepts) == (onnx.embedding_layout, onnx.model_version, onnx.concepts)
    assert m.checkpoint_sha256 == file_digest(sam3_random[0]) and m.model_version == m.derive_model_version()
    assert not (torch_dir / "encoder.onnx").exists()
    assert all((torch_dir / f).exists() for f in ("decoder.onnx", "text.onnx", "detector.onnx"))
    arch = m.encoder["architecture"]
    assert (arch["embed_dim"], arch["depth"], arch["num_heads"], arch["global_blocks"]) == (256, 4, 4, [0, 1, 2, 3])
    assert (arch["image_size"], arch["patch_size"], arch["pretrain_grid"], arch["rope_pretrain"]) == (1008, 14, 24, 24)
    state = torch.load(torch_dir / "encoder.pt", weights_only=True)
    source = image_state(read_checkpoint_file(sam3_random[0]))
    assert state.keys() == torch_sam3.encoder_state_dict(source).keys()
    assert not any(k.endswith("freqs_cis") for k in state)
    assert torch.equal(state["trunk.pos_embed"], source["backbone.vision_backbone.trunk.pos_embed"])
    assert torch.equal(state["sam2_convs.0.dconv_2x2_1.weight"],
                       source["backbone.vision_backbone.sam2_convs.0.dconv_2x2_1.weight"])
    assert torch.equal(state["no_mem_embed"], source["inst_interactive_predictor.model.no_mem_embed"])
    model = load(torch_dir)
    assert type(model.encoder).__name__ == "TorchEncoder" and type(model.decoder).__name__ == "OnnxDecoder"


def test_fp32_equals_the_onnx_encoder(torch_dir, images, expected):
    """Two images in one call against the ONNX encoder's six arrays (whose concept and SAM 1 answers test_sam3
    checks against the package; the worker's below are checked again end to end)."""
    m = Manifest.load(torch_dir)
    got = encoder(torch_dir).encode_arrays(np.stack([prompts.prepare_image(im, m) for im in images]))
    assert list(got) == list(ARRAYS)
    errors = {}
    for name in ARRAYS:
        assert got[name].shape == expected[name].shape and got[name].dtype == np.float32, name
        errors[name] = float(np.abs(got[name] - expected[name]).max())
    report("SAM 3 torch encoder fp32 vs its ONNX encoder, scaled-down random, CPU: max abs "
           + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    assert max(errors.values()) <= FP32_ABS


def test_windowed_blocks_equal_the_packages_backbone():
    """The test model's ViT is all global blocks (four, each a quarter's last): here an 8-block one, half of its
    blocks attending in 24² windows, against the package's own modules (ViT, both necks, conv_s0/s1)."""
    from maskserve.build.sam3_export import ImageEncoder, Sam3Architecture, network

    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = network(Sam3Architecture(vit_dim=128, vit_depth=8, vit_mlp=592, text_width=256, text_layers=2))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # what a fresh model leaves at zero or a constant
        for name, p in model.named_parameters():
            if "no_mem_embed" in name or "conv_s" in name or "trunk.pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    arch = torch_sam3.architecture(model)
    assert arch["global_blocks"] == [1, 3, 5, 7] and arch["window"] == 24
    net = torch_sam3.VisionEncoder.from_state_dict(model.state_dict(), arch)
    x = torch.randn(1, 3, 1008, 1008, generator=g)
    with torch.inference_mode():
        ref, got = ImageEncoder(model).eval()(x), net(x)
    errors = [float((a - b).abs().max() / a.abs().max()) for a, b in zip(ref, got)]
    report(f"SAM 3 torch backbone vs the package's, 8 blocks (4 windowed), CPU: max abs / max "
           f"{max(errors):.1e}")
    assert max(errors) <= 1e-5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_gives_the_same_masks(torch_dir, images, expected, precision):
    """Relative error of the six arrays against fp32, and the interactive head's masks (SAM 1 point prompts
    through the ONNX decoder) on the reduced embedding against those on the fp32 one. Concept instances are not
    compared: random weights score all 200 queries within ~1e-5 of each other (test_sam3)."""
    m = Manifest.load(torch_dir)
    image = images[0]
    arrays = encoder(torch_dir, precision=precision).encode_arrays(prompts.prepare_image(image, m)[None])
    reference = {n: a[:1] for n, a in expected.items()}
    errors = [rel(arrays[n], reference[n]) for n in ARRAYS]
    assert all(np.isfinite(a).all() for a in arrays.values())
    ours, fp32 = Predictor(torch_dir), Predictor(torch_dir)
    ours.set_embedding(arrays, image.shape[:2])
    fp32.set_embedding(reference, image.shape[:2])
    h, w = image.shape[:2]
    ious = []
    for fx in (0.2, 0.5, 0.8):
        for fy in (0.25, 0.5, 0.75):
            point = dict(point_coords=np.array([[w * fx, h * fy]]), point_labels=np.array([1]))
            ious += [i for a, b in zip(fp32.predict(**point)[0], ours.predict(**point)[0])
                     if (i := test_parity._iou(a, b)) is not None]
    report(f"SAM 3 torch encoder {precision} vs fp32, scaled-down random, CPU: relative error "
           f"{', '.join(f'{e:.1e}' for e in errors)}; mask IoU over {len(ious)} masks mean {np.mean(ious):.4f}, "
           f"worst {min(ious):.4f}")
    assert max(errors) <= REDUCED_REL_MAX[precision]
    assert np.mean(ious) >= IOU_MEAN_MIN and min(ious) >= IOU_WORST_MIN


def test_what_the_loader_refuses(torch_dir, reference_model):  # noqa: F811
    m = Manifest.load(torch_dir)
    state = torch.load(torch_dir / "encoder.pt", weights_only=True)
    arch = m.encoder["architecture"]
    with pytest.raises(ModelDirError, match=r"do not fit the recorded SAM 3 architecture: .*unexpected \['trunk\.blocks\.3"):
        torch_sam3.VisionEncoder.from_state_dict(state, dict(arch, depth=3, global_blocks=[0, 1, 2]))
    with pytest.raises(ModelDirError, match="malformed SAM 3 encoder architecture in the manifest: KeyError"):
        torch_sam3.VisionEncoder.from_state_dict(state, {k: v for k, v in arch.items() if k != "pretrain_grid"})
    with pytest.raises(ModelDirError, match="needs the manifest's encoder.architecture"):
        families.get("sam3").torch_encoder(torch_dir, state, {"file": "encoder.pt"}, torch.float32, "bias", "cpu")
    trunk = reference_model.backbone.vision_backbone.trunk
    ln_post, trunk.ln_post = trunk.ln_post, torch.nn.LayerNorm(256)
    try:
        with pytest.raises(ValueError, match="does not run this SAM 3 vision backbone"):
            torch_sam3.architecture(reference_model)
    finally:
        trunk.ln_post = ln_post


def test_the_worker_runs_it_behind_the_decoder_service(torch_dir, processor, photos, tmp_path):  # noqa: F811
    """The encoder worker (its own process, real Redis) runs the torch backbone; the decoder service loads the
    same directory without it (no torch). Concept prompts over the wire equal Sam3Processor's."""
    from maskserve.client import Client
    from maskserve.service.stack import LocalStack

    with LocalStack(model_dir=str(torch_dir), log_dir=tmp_path, encoder_env={"MASKSERVE_TORCH_DEVICE": "cpu"}) as stack, \
            Client(stack.target) as client:
        _check_concepts(processor, ConceptSegmenter(client=client), photos, ("coffee_400x600",),
                        "torch encoder worker, through the wire")


def test_gpu_check_measures_sam3_in_its_quick_mode(tmp_path):
    """The device script's SAM 3 path on the CPU, scaled down (an 8-block ViT, half windowed): weights made and
    built on the spot, parity of fp32 and bf16 against the package's modules, latency and batches."""
    from maskserve.build import gpu_check

    out = tmp_path / "gpu_check.json"
    gpu_check.main(["--models", "sam3", "--quick", "--device", "cpu", "--no-compile", "--budget-s", "900",
                    "--out", str(out), "--work-dir", str(tmp_path / "work")])
    data = json.loads(out.read_text())
    assert data["complete"] and not data["errors"], data["errors"]
    r = data["models"]["sam3"]
    assert r["build"]["encoder"]["architecture"]["global_blocks"] == [1, 3, 5, 7]
    assert r["parity"]["fp32"]["rel_l2"] <= 1e-5 and r["parity"]["fp32"]["mask_iou"]["min"] == 1.0
    assert set(r["parity"]["bf16"]["arrays"]) == set(ARRAYS) and r["parity"]["bf16"]["nonfinite"] == 0
    assert r["parity"]["bf16"]["rel_l2"] <= REDUCED_REL_MAX["bf16"]
    assert r["latency"]["bf16"]["network_batch1"]["median_ms"] > 0 and r["throughput"]["bf16"]["best_batch"] in (1, 2)


@needs_cuda
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 1e-2), ("fp16", 2e-3)])
def test_cuda_matches_the_cpu_with_and_without_graphs(torch_dir, images, expected, precision, tol):
    m = Manifest.load(torch_dir)
    x = np.stack([prompts.prepare_image(im, m) for im in images])
    for graphs in ("off", "on"):
        enc = tb.TorchEncoder(torch_dir, m, device="cuda", precision=precision, cuda_graphs=graphs)
        got = enc.encode_arrays(x)
        assert max(rel(got[n], expected[n]) for n in ARRAYS) <= tol, (precision, graphs)
        assert enc.run_size == enc.max_batch
