"""SAM 2.1 on the PyTorch encoder backend (engines/torch_hiera.py), on the CPU (CUDA cases skip without a GPU):
the model directory `maskserve build --backend torch` writes, the embedding's three arrays against the official
SAM2ImagePredictor's, its masks through the ONNX decoder in fp32, bf16 and fp16, batching, and the encoder worker
running it behind the decoder service.

The weights are the shared seeded random hiera-tiny with its position tables filled (a fresh Hiera's are zeros,
which would hide a wrong position embedding)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from conftest import report
from maskserve.build.builder import build_model_dir
from maskserve.build.checkpoint import file_digest
from maskserve.build.sam2_checkpoint import build_sam2_model, read_sam2_state_dict
from maskserve.build.specs import get_spec
from maskserve.engines import families, interface, load, prompts
from maskserve.engines.model_dir import Manifest, ModelDirError
from maskserve.engines.predictor import Predictor
from test_sam2 import _cases, _compare, _iou

from maskserve.engines import torch_backend as tb, torch_hiera

MODEL = "sam2.1_hiera_tiny"
SPEC = get_spec(MODEL)
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (PyTorch sees none here)")
FP32_ABS = 1e-4
# Reduced precision on the CPU, against the reference's fp32 arrays, and the masks the ONNX decoder makes of them.
REDUCED_REL_MAX = {"bf16": 1e-2, "fp16": 2e-3}
IOU_MEAN_MIN, IOU_WORST_MIN = 0.99, 0.97


@pytest.fixture(scope="module")
def checkpoint(sam2_tiny_random, tmp_path_factory):
    state = read_sam2_state_dict(sam2_tiny_random[0])
    g = torch.Generator().manual_seed(1)
    for name in ("pos_embed", "pos_embed_window"):
        key = f"image_encoder.trunk.{name}"
        state[key] = torch.randn(state[key].shape, generator=g) * 0.1
    path = tmp_path_factory.mktemp("sam2-torch") / "sam2.1_hiera_tiny_positions.pt"
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="module")
def torch_dir(checkpoint):
    out = checkpoint.parent / "model"
    build_model_dir(checkpoint, MODEL, out, backend="torch")
    return out


@pytest.fixture(scope="module")
def reference(checkpoint):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(build_sam2(SPEC.config, ckpt_path=str(checkpoint), device="cpu"))


@pytest.fixture(scope="module")
def image(photos):
    return np.ascontiguousarray(photos["coffee_400x600"][30:363, 40:557])  # 333 × 517


@pytest.fixture(scope="module")
def expected(reference, image):
    """The reference's arrays for `image`, in layout order."""
    reference.set_image(image)
    f = reference._features
    return [t.numpy() for t in (f["image_embed"], *f["high_res_feats"])]


def encoder(torch_dir, **options) -> tb.TorchEncoder:
    return tb.TorchEncoder(torch_dir, Manifest.load(torch_dir), device="cpu", **options)


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_the_model_directory(torch_dir, checkpoint):
    """The ONNX Runtime build's manifest but for the encoder: same family, layout and model version (so an ONNX
    decoder anywhere reads this encoder's embeddings), encoder.pt holding the checkpoint's encoder weights under
    their names, and Hiera's shape recorded (it cannot be read off the weights)."""
    m = Manifest.load(torch_dir)
    assert (m.backend, m.precision, m.family, m.encoder["file"]) == ("torch", "fp32", "sam2.1", "encoder.pt")
    layout = [{"name": n, "shape": list(s), "dtype": d} for n, s, d in SPEC.embedding_layout]
    assert m.embedding_layout == layout
    assert m.checkpoint_sha256 == file_digest(checkpoint) and m.model_version == m.derive_model_version()
    assert not (torch_dir / "encoder.onnx").exists() and (torch_dir / "decoder.onnx").exists()
    arch = m.encoder["architecture"]
    assert arch["stage_ends"] == [0, 2, 9, 11] and [b[2] for b in arch["blocks"]].count(0) == 3  # tiny's 3 global
    assert [b[3] for b in arch["blocks"]] == [0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 2, 0]  # queries pooled at each stage
    state = torch.load(torch_dir / "encoder.pt", weights_only=True)
    source = read_sam2_state_dict(checkpoint)
    assert state.keys() == torch_hiera.encoder_state_dict(source).keys()
    assert torch.equal(state["trunk.pos_embed"], source["image_encoder.trunk.pos_embed"])
    assert torch.equal(state["conv_s1.weight"], source["sam_mask_decoder.conv_s1.weight"])
    model = load(torch_dir)
    assert type(model.encoder).__name__ == "TorchEncoder" and type(model.decoder).__name__ == "OnnxDecoder"


def test_fp32_equals_sam2_image_predictor(torch_dir, reference, image, expected):
    """The three arrays against set_image's, and the masks of Predictor on the torch directory against the
    reference's predictions for every prompt kind, multimask and single-mask."""
    predictor = Predictor(torch_dir)
    predictor.set_image(image)
    got = predictor.get_image_arrays()
    errors = []
    for name, e in zip(families.get("sam2.1").arrays, expected):
        assert got[name].shape == e.shape and got[name].dtype == np.float32, name
        errors.append(float(np.abs(got[name] - e).max()))
        assert errors[-1] <= FP32_ABS, (name, errors[-1])
    worst = {"iou": 1.0, "score": 0.0, "logits": 0.0, "absolute": 0.0}
    h, w = image.shape[:2]
    for case, prompt in _cases(h, w).items():
        for multimask in (True, False):
            _compare(f"{case} multimask={multimask}", reference.predict(multimask_output=multimask, **prompt),
                     predictor.predict(multimask_output=multimask, **prompt), worst)
    report(f"SAM 2.1 torch encoder fp32 vs SAM2ImagePredictor, hiera-tiny random, CPU: max abs "
           f"{', '.join(f'{e:.1e}' for e in errors)}; worst mask IoU {worst['iou']:.5f}, |Δ iou_pred| {worst['score']:.1e}")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_gives_the_same_masks(torch_dir, reference, image, expected, precision):
    arrays = encoder(torch_dir, precision=precision).encode_arrays(prompts.prepare_image(image, Manifest.load(torch_dir))[None])
    errors = [rel(arrays[n], e) for n, e in zip(families.get("sam2.1").arrays, expected)]
    assert all(np.isfinite(a).all() for a in arrays.values())
    predictor = Predictor(torch_dir)
    predictor.set_embedding(arrays, image.shape[:2])
    h, w = image.shape[:2]
    ious = []
    for fx in (0.2, 0.5, 0.8):
        for fy in (0.25, 0.5, 0.75):
            point = dict(point_coords=np.array([[w * fx, h * fy]]), point_labels=np.array([1]))
            ref = reference.predict(**point)[0] > 0
            ious += [i for a, b in zip(ref, predictor.predict(**point)[0]) if (i := _iou(a, b)) is not None]
    report(f"SAM 2.1 torch encoder {precision} vs SAM2ImagePredictor fp32, hiera-tiny random, CPU: relative error "
           f"{', '.join(f'{e:.1e}' for e in errors)}; mask IoU over {len(ious)} masks mean {np.mean(ious):.4f}, "
           f"worst {min(ious):.4f}")
    assert max(errors) <= REDUCED_REL_MAX[precision]
    assert np.mean(ious) >= IOU_MEAN_MIN and min(ious) >= IOU_WORST_MIN


def test_a_batch_equals_its_images_alone(torch_dir, image, photos):
    m = Manifest.load(torch_dir)
    x = np.stack([prompts.prepare_image(image, m), prompts.prepare_image(photos["chelsea_300x451"], m)])
    enc = encoder(torch_dir)
    both = enc.encode_arrays(x)
    alone = encoder(torch_dir, max_batch=1).encode_arrays(x)  # runs of one, concatenated in order
    assert list(both) == list(families.get("sam2.1").arrays)
    for name in both:
        assert both[name].shape == (2, *m.array_shapes()[name]) and np.abs(both[name] - alone[name]).max() <= 1e-5
    with pytest.raises(TypeError, match="use encode_arrays"):
        enc.encode(x)


def test_an_architecture_the_weights_do_not_fit_or_the_backend_does_not_run(torch_dir):
    m = Manifest.load(torch_dir)
    state = torch.load(torch_dir / "encoder.pt", weights_only=True)
    arch = m.encoder["architecture"]
    shorter = dict(arch, blocks=arch["blocks"][:-1], stage_ends=[0, 2, 9, 10])
    with pytest.raises(ModelDirError, match=r"do not fit the recorded SAM 2\.1 architecture: .*unexpected \['trunk\.blocks\.11"):
        torch_hiera.HieraEncoder.from_state_dict(state, shorter)
    with pytest.raises(ModelDirError, match="malformed SAM 2.1 encoder architecture in the manifest: KeyError"):
        torch_hiera.HieraEncoder.from_state_dict(state, {k: v for k, v in arch.items() if k != "blocks"})
    model = build_sam2_model(SPEC)
    model.image_encoder.neck.fuse_type = "avg"
    with pytest.raises(ValueError, match="does not run this SAM 2.1 image encoder: FPN fusion avg"):
        torch_hiera.architecture(model)


def test_the_worker_runs_it_behind_the_decoder_service(torch_dir, reference, image, expected, tmp_path):
    """One torch directory for both: the encoder worker (its own process, real Redis) runs the Hiera encoder;
    the decoder service loads the same directory without its encoder (no torch). Masks over the wire equal the
    reference's."""
    from maskserve.client import decode_mask, image_message, prompt_message
    from maskserve.service.proto import pb, pb_grpc
    from maskserve.service.stack import LocalStack

    h, w = image.shape[:2]
    with LocalStack(model_dir=str(torch_dir), log_dir=tmp_path, encoder_env={"MASKSERVE_TORCH_DEVICE": "cpu"}) as stack, \
            grpc.insecure_channel(stack.target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        encoded = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=120)
        assert encoded.ready and encoded.model_version == Manifest.load(torch_dir).model_version
        reference.set_image(image)
        for fx, fy in ((0.5, 0.45), (0.2, 0.7)):
            point = [[w * fx, h * fy]]
            reply = stub.SegmentPrompt(pb.SegmentPromptRequest(image_id=encoded.image_id,
                                                               prompts=[prompt_message(point, [1])]), timeout=30)
            masks, scores, _ = reference.predict(point_coords=np.array(point), point_labels=np.array([1]))
            got = reply.results[0].masks
            assert len(got) == 3 and np.abs(np.array([m.predicted_iou for m in got]) - scores).max() <= 1e-3
            for m, e in zip(got, masks > 0):
                assert _iou(decode_mask(m), e) >= 0.995


@needs_cuda
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 1e-2), ("fp16", 2e-3)])
def test_cuda_with_and_without_graphs(torch_dir, image, expected, precision, tol):
    x = prompts.prepare_image(image, Manifest.load(torch_dir))[None]
    for graphs in ("off", "on"):
        enc = tb.TorchEncoder(torch_dir, Manifest.load(torch_dir), device="cuda", precision=precision,
                              cuda_graphs=graphs)
        arrays = enc.encode_arrays(x)
        for name, e in zip(families.get("sam2.1").arrays, expected):
            assert rel(arrays[name], e) <= tol, (precision, graphs, name, rel(arrays[name], e))


def test_full_size_base_plus_equals_the_official_encoder():
    """Seeded random sam2.1_hiera_base_plus (position tables filled), one image, fp32: the full-size
    architecture as recorded from the official model (14×14 background position table, windows of 8, 4, 14
    and 7 — the last two padded — global blocks 12, 16, 20, heads 2 to 16) against SAM2ImagePredictor's features
    (build/sam2_export.Sam2ImageEncoder, the exported graph's module, computes exactly them; tests/test_sam2.py)."""
    from maskserve.build.sam2_export import Sam2ImageEncoder

    torch.manual_seed(0)
    model = build_sam2_model(get_spec("sam2.1_hiera_base_plus"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (model.image_encoder.trunk.pos_embed, model.image_encoder.trunk.pos_embed_window):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    arch = torch_hiera.architecture(model)
    assert arch["pos_embed_size"] == [14, 14] and [i for i, b in enumerate(arch["blocks"]) if not b[2]] == [12, 16, 20]
    x = torch.randn(1, 3, 1024, 1024, generator=g)
    with torch.inference_mode():
        expected = Sam2ImageEncoder(model).eval()(x)
        got = torch_hiera.HieraEncoder.from_state_dict(model.state_dict(), arch)(x)
    errors = [float((a - b).abs().max()) for a, b in zip(got, expected)]
    report(f"SAM 2.1 torch encoder fp32 vs the official encoder, hiera-base+ random, CPU: max abs "
           f"{', '.join(f'{e:.1e}' for e in errors)}")
    assert max(errors) <= FP32_ABS
