"""The PyTorch encoder backend, on the CPU (the cases that need CUDA skip without it): parity with
segment_anything's image encoder in fp32, what bf16 and fp16 cost in masks through the ONNX decoder, batching,
the model directory that selects it (same model version as the ONNX Runtime build), the encoder worker running
it against real Redis while the ONNX decoder service answers from its embeddings, and the GPU check's logic."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import numpy as np
import pytest

from conftest import report

from maskserve import Predictor
from maskserve.build.builder import build_model_dir
from maskserve.engines import families, interface, load, transforms
from maskserve.engines.model_dir import Manifest, ModelDirError

torch = pytest.importorskip("torch")
tb = pytest.importorskip("maskserve.engines.torch_backend")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (PyTorch sees none here)")
PHOTOS = ("coffee_400x600", "chelsea_300x451", "astronaut_512x512")
FP32_REL, FP32_ABS = 1e-5, 1e-4  # measured: relative 4e-7, max abs 7e-6 on the tiny model
# Reduced precision, through the ONNX decoder, 27 point prompts × 3 masks on three photos. Measured on the tiny
# model: bf16 relative error 1.0e-3, mask IoU mean 0.998, worst 0.986 (small masks: a few boundary pixels);
# fp16 1.1e-4, 0.9998, 0.998.
IOU_MEAN_MIN, IOU_WORST_MIN = 0.99, 0.97
REDUCED_REL_MAX = {"bf16": 5e-3, "fp16": 1e-3}


@pytest.fixture(scope="module")
def torch_dir(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("torch") / "tiny-torch"
    build_model_dir(tiny_checkpoint, "tiny", out, backend="torch")
    return out


@pytest.fixture(scope="module")
def inputs(photos, tiny_model_dir):
    m = Manifest.load(tiny_model_dir)
    return np.stack([transforms.preprocess(photos[k], m.image_size, m.pixel_mean, m.pixel_std)[0] for k in PHOTOS])


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, inputs):
    """segment_anything's image encoder on the same weights, fp32, one image at a time."""
    from maskserve.build.checkpoint import load_model

    encoder = load_model(tiny_checkpoint, "tiny").image_encoder
    with torch.no_grad():
        return np.concatenate([encoder(torch.from_numpy(x[None])).numpy() for x in inputs])


def encoder(torch_dir, **options) -> "tb.TorchEncoder":
    return tb.TorchEncoder(torch_dir, Manifest.load(torch_dir), device="cpu", **options)


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_model_directory_selects_the_backend_with_the_onnx_builds_version(torch_dir, tiny_model_dir):
    """Same checkpoint, same model version and embedding layout as the ONNX Runtime directory: a CPU decoder reads
    this encoder's embeddings unchanged. The encoder is the checkpoint's image_encoder weights, no graph."""
    torch_m, onnx_m = Manifest.load(torch_dir), Manifest.load(tiny_model_dir)
    assert (torch_m.backend, torch_m.precision, torch_m.encoder["file"]) == ("torch", "fp32", "encoder.pt")
    for field in ("model_version", "checkpoint_sha256", "embedding_shape", "embedding_dtype", "image_size",
                  "mask_input_size", "pixel_mean", "pixel_std", "decoder"):
        assert getattr(torch_m, field) == getattr(onnx_m, field), field
    assert not (torch_dir / "encoder.onnx").exists()
    assert torch_m.encoder["architecture"]["windows"] == [8, 8, 8, 0]  # the tiny spec: global attention at block 3
    model = load(torch_dir)
    assert type(model.encoder).__name__ == "TorchEncoder" and type(model.decoder).__name__ == "OnnxDecoder"
    state = torch.load(torch_dir / "encoder.pt", weights_only=True)
    checkpoint = torch.load(tiny_model_dir.parent / "sam_tiny.pth", weights_only=True)
    assert set(state) == {k[len("image_encoder."):] for k in checkpoint if k.startswith("image_encoder.")}


def test_build_refuses_precisions_a_backend_does_not_run(tiny_checkpoint, tmp_path):
    for backend, precision in (("onnxruntime", "bf16"), ("tensorrt", "bf16"), ("torch", "int8")):
        with pytest.raises(ValueError, match=f"the {backend} backend runs"):
            build_model_dir(tiny_checkpoint, "tiny", tmp_path / "x", backend=backend, precision=precision)
    assert not (tmp_path / "x").exists()


def test_the_serving_side_does_not_import_torch(torch_dir, tiny_model_dir):
    """Only a torch directory's encoder imports torch: its decoder, and the ONNX Runtime backend, do not."""
    code = ("import sys; from maskserve import engines; "
            f"engines.load({str(torch_dir)!r}, encoder=False); engines.load({str(tiny_model_dir)!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_the_encoder_interface(torch_dir, monkeypatch):
    enc = encoder(torch_dir)
    params = lambda f: [p for p in __import__("inspect").signature(f).parameters if p != "self"]  # noqa: E731
    assert params(tb.TorchEncoder.encode_arrays) == params(interface.Encoder.encode_arrays)
    assert enc.run_size == 1 and enc.max_batch == 8 and enc.device.type == "cpu"  # the CPU runs one at a time
    assert load(torch_dir, decoder=False, device="cpu").encoder.device.type == "cpu"  # MASKSERVE_TORCH_DEVICE
    if not CUDA:
        with pytest.raises(ModelDirError, match="sees no CUDA device"):
            load(torch_dir, decoder=False, device="cuda")
    with pytest.raises(ModelDirError, match="precision"):
        encoder(torch_dir, precision="int8")


@pytest.mark.parametrize("attention", tb.ATTENTION)
def test_fp32_matches_segment_anything(torch_dir, inputs, reference, attention):
    got = encoder(torch_dir, attention=attention).encode(inputs)
    assert got.shape == reference.shape and got.dtype == np.float32 and got.flags.c_contiguous
    err = float(np.abs(got - reference).max())
    report(f"torch encoder fp32 ({attention}) vs segment_anything, tiny, CPU: max abs {err:.2e}, "
           f"relative {rel(got, reference):.2e}")
    assert err <= FP32_ABS and rel(got, reference) <= FP32_REL


def _iou(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_embeddings_give_the_same_masks(torch_dir, tiny_model_dir, photos, inputs, reference,
                                                          precision):
    """bf16/fp16 on the CPU against the fp32 reference: the embedding's error, and the masks the repository's
    ONNX decoder makes from it for a grid of foreground points, three masks each."""
    got = encoder(torch_dir, precision=precision).encode(inputs)
    assert np.isfinite(got).all()
    predictor = Predictor(tiny_model_dir)
    ious = []
    for i, name in enumerate(PHOTOS):
        h, w = photos[name].shape[:2]
        for x in (0.2, 0.5, 0.8):
            for y in (0.25, 0.5, 0.75):
                point = dict(point_coords=np.array([[w * x, h * y]]), point_labels=np.array([1]))
                predictor.set_embedding(reference[i:i + 1], (h, w))
                ref = predictor.predict(**point)[0]
                predictor.set_embedding(got[i:i + 1], (h, w))
                ours = predictor.predict(**point)[0]
                ious += [_iou(a, b) for a, b in zip(ref, ours)]
    err = rel(got, reference)
    report(f"torch encoder {precision} vs fp32 reference, tiny, CPU: max abs {np.abs(got - reference).max():.3g}, "
           f"relative {err:.2e}; mask IoU over {len(ious)} masks mean {np.mean(ious):.4f}, worst {min(ious):.4f}")
    assert err <= REDUCED_REL_MAX[precision]
    assert np.mean(ious) >= IOU_MEAN_MIN and min(ious) >= IOU_WORST_MIN


def test_a_batch_equals_its_images_alone(torch_dir, inputs):
    for precision, tol in (("fp32", 1e-5), ("bf16", 2e-2)):
        enc = encoder(torch_dir, precision=precision)
        both = enc.encode(inputs[:2])
        alone = np.concatenate([enc.encode(inputs[:1]), enc.encode(inputs[1:2])])
        assert both.shape == alone.shape and np.abs(both - alone).max() <= tol, precision
    enc = encoder(torch_dir, max_batch=2)  # runs of at most max_batch images, concatenated in order
    np.testing.assert_allclose(enc.encode(inputs), np.concatenate([enc.encode(inputs[:2]), enc.encode(inputs[2:])]),
                               atol=1e-5)


def test_the_worker_runs_a_torch_model_dir_for_the_onnx_decoder_service(torch_dir, tiny_model_dir, photos, tmp_path):
    """The encoder worker (its own process, real Redis) on the torch directory; the decoder service on the ONNX
    Runtime one of the same checkpoint: same model version, so one stream and one key space; the masks equal
    those of the in-process ONNX predictor."""
    from maskserve.client import decode_mask, image_message, prompt_message
    from maskserve.service.proto import pb, pb_grpc
    from maskserve.service.stack import LocalStack

    image = photos["coffee_400x600"]
    local = Predictor(tiny_model_dir)
    local.set_image(image)
    with LocalStack(model_dir=str(tiny_model_dir), log_dir=tmp_path,
                    encoder_env={"MASKSERVE_MODEL_DIR": str(torch_dir), "MASKSERVE_TORCH_DEVICE": "cpu"}) as stack, \
            grpc.insecure_channel(stack.target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        encoded = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=120)
        assert encoded.ready and encoded.model_version == Manifest.load(torch_dir).model_version
        for x, y in ((300, 200), (100, 80), (500, 350)):
            request = pb.SegmentPromptRequest(image_id=encoded.image_id, prompts=[prompt_message([[x, y]], [1])])
            reply = stub.SegmentPrompt(request, timeout=30).results[0]
            expected = local.predict(np.array([[x, y]]), np.array([1]))[0]
            for m, e in zip(reply.masks, expected):
                assert _iou(decode_mask(m), e) >= 0.995


def test_gpu_check_logic_in_its_quick_mode(tmp_path):
    """The device script on the CPU with the tiny model and SAM 2.1's hiera-tiny, reduced: every stage runs and
    the JSON says what it must."""
    from maskserve.build import gpu_check

    out = tmp_path / "gpu_check.json"
    gpu_check.main(["--models", "tiny,sam2.1_hiera_tiny", "--quick", "--device", "cpu", "--no-compile",
                    "--budget-s", "300", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    data = json.loads(out.read_text())
    assert data["complete"] and not data["errors"], data["errors"]
    tiny = data["models"]["tiny"]
    assert tiny["build"]["model_version"].startswith("tiny-")
    assert tiny["parity"]["fp32"]["rel_l2"] <= FP32_REL and tiny["parity"]["fp32"]["mask_iou"]["min"] == 1.0
    assert tiny["parity"]["bf16"]["nonfinite"] == 0 and tiny["parity"]["bf16"]["mask_iou"]["masks"] == 12
    assert tiny["latency"]["bf16"]["network_batch1"]["median_ms"] > 0
    assert tiny["throughput"]["bf16"]["best_batch"] in (1, 2)
    assert tiny["decoder"]["onnxruntime_cpu"]["low_res"]["median_ms"] > 0
    assert "tiny" in data["summary"] and "goals" in data["summary"]
    sam2 = data["models"]["sam2.1_hiera_tiny"]  # its three arrays, the worst of each reported
    assert sam2["build"]["encoder"]["architecture"]["stage_ends"] == [0, 2, 9, 11]
    assert sam2["parity"]["fp32"]["rel_l2"] <= FP32_REL and sam2["parity"]["fp32"]["mask_iou"]["min"] == 1.0
    assert set(sam2["parity"]["bf16"]["arrays"]) == set(families.get("sam2.1").arrays)
    assert sam2["parity"]["bf16"]["nonfinite"] == 0 and sam2["parity"]["bf16"]["mask_iou"]["min"] >= IOU_WORST_MIN
    assert sam2["throughput"]["bf16"]["best_batch"] in (1, 2) and sam2["decoder"]["onnxruntime_cpu"]["low_res"]["median_ms"] > 0
    # Out of time: every stage says it was skipped, and the file is still written whole.
    gpu_check.main(["--models", "tiny", "--quick", "--device", "cpu", "--budget-s", "0", "--out", str(out),
                    "--work-dir", str(tmp_path / "work")])
    data = json.loads(out.read_text())
    assert data["complete"] and "skipped" in data["models"]["tiny"]["weights"]


@needs_cuda
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 5e-3), ("fp16", 1e-3)])
def test_cuda_matches_segment_anything_with_and_without_graphs(torch_dir, inputs, reference, precision, tol):
    for graphs in ("off", "on"):
        enc = tb.TorchEncoder(torch_dir, Manifest.load(torch_dir), device="cuda", precision=precision,
                              cuda_graphs=graphs)
        got = enc.encode(inputs)
        assert rel(got, reference) <= tol, (precision, graphs, rel(got, reference))
        assert enc.run_size == enc.max_batch


def test_windows_that_do_not_tile_the_grid_are_padded_as_the_reference_pads_them():
    """A small SAM ViT whose 14×14 grid is tiled by 4×4 windows with padding (as ViT-B's and ViT-H's 64×64 grid by
    14×14 windows; the tiny model's divides evenly), random position tables, global attention in one block."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(0)
    ref = ImageEncoderViT(img_size=224, patch_size=16, embed_dim=96, depth=3, num_heads=3, out_chans=32,
                          qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                          window_size=4, global_attn_indexes=(1,)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                p.copy_(torch.randn(p.shape) * 0.1)
        x = torch.randn(2, 3, 224, 224)
        expected = ref(x).numpy()
        for attention in tb.ATTENTION:
            net = tb.SamViT.from_state_dict(ref.state_dict(), attention=attention)
            assert net.config["windows"] == [4, 0, 4]
            got = net(x).numpy()
            assert rel(got, expected) <= FP32_REL, attention


def test_full_size_vit_b_matches_segment_anything():
    """Seeded random ViT-B weights (position tables filled), one image, bf16 against the fp32 reference: the
    full-size architecture read off its weights (fp32's exactness is the tiny and padded cases')."""
    from maskserve.build.gpu_check import random_sam

    sam = random_sam("vit_b")
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 1024, 1024), np.float32))
    with torch.no_grad():
        ref = sam.image_encoder(x).numpy()
        net = tb.SamViT.from_state_dict(sam.image_encoder.state_dict(), torch.bfloat16)
        assert net.config["windows"] == [14, 14, 0] * 4 and net.config["num_heads"] == 12
        got = net(x).numpy()
    report(f"torch encoder bf16 vs segment_anything fp32, vit_b random, CPU: relative {rel(got, ref):.2e}")
    assert rel(got, ref) <= 1e-2
