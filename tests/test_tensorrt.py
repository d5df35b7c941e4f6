"""TensorRT engines (SAM, MobileSAM and SAM 2.1) against the ONNX Runtime model they are compiled from. Needs an
NVIDIA GPU and TensorRT."""

from __future__ import annotations

import shutil

import numpy as np
import pytest


def _gpu_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (pip install 'maskserve[tensorrt]')"
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine"
    try:
        from maskserve.engines.tensorrt_backend import cuda_device_properties

        cuda_device_properties()
    except Exception as exc:  # no driver, no device
        return f"no usable CUDA device ({exc})"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpu_reason() is not None, reason=str(_gpu_reason()))]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_match_onnxruntime(tiny_checkpoint, tiny_model_dir, photos, tmp_path, precision):
    from maskserve.build.builder import build_model_dir
    from maskserve.engines.model_dir import Manifest

    manifest = build_model_dir(tiny_checkpoint, "tiny", tmp_path / "trt", backend="tensorrt", precision=precision,
                               max_encoder_batch=4, max_decoder_batch=16, max_points=8)
    assert manifest.extra["gpu"]["compute_capability"] and manifest.encoder["file"] == "encoder.plan"
    assert manifest.model_version == Manifest.load(tiny_model_dir).model_version
    _embedding_and_masks_match(tmp_path / "trt", tiny_model_dir, photos["coffee_400x600"], [300, 200], precision)


def _embedding_and_masks_match(trt_dir, onnx_dir, image, point, precision) -> None:
    """One image's embedding (within the precision's tolerance) and one point's three masks (IoU), engines
    against ONNX Runtime."""
    from maskserve import Predictor

    gpu, cpu = Predictor(trt_dir), Predictor(onnx_dir)
    gpu.set_image(image)
    cpu.set_image(image)
    tol = 1e-3 if precision == "fp32" else 5e-2
    g_emb, c_emb = gpu.get_image_embedding(), cpu.get_image_embedding()
    assert np.abs(g_emb - c_emb).max() < tol * max(1.0, float(np.abs(c_emb).max()))
    point = np.array([point])
    g, c = gpu.predict(point, np.array([1])), cpu.predict(point, np.array([1]))
    for k in range(3):
        union = (g[0][k] | c[0][k]).sum()
        assert union == 0 or (g[0][k] & c[0][k]).sum() / union > (0.995 if precision == "fp32" else 0.97)


def test_engine_for_another_gpu_is_refused(tiny_checkpoint, tmp_path):
    import json

    from maskserve.build.builder import build_model_dir
    from maskserve.engines import load
    from maskserve.engines.model_dir import ModelDirError

    build_model_dir(tiny_checkpoint, "tiny", tmp_path / "trt", backend="tensorrt", max_decoder_batch=4, max_points=4)
    path = tmp_path / "trt" / "manifest.json"
    data = json.loads(path.read_text())
    data["extra"]["gpu"]["compute_capability"] = "1.0"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelDirError, match="rebuild it here"):
        load(tmp_path / "trt")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_sam2_engines_match_onnxruntime(sam2_tiny_random, photos, tmp_path, precision):
    """SAM 2.1: the encoder engine's three arrays and the decoder engine's masks against the ONNX Runtime build of
    the same checkpoint (same model version), at an odd image size, multimask and single-mask."""
    from maskserve import Predictor
    from maskserve.build.builder import build_model_dir
    from maskserve.engines import families
    from maskserve.engines.model_dir import Manifest

    checkpoint, onnx_dir = sam2_tiny_random
    manifest = build_model_dir(checkpoint, "sam2.1_hiera_tiny", tmp_path / "trt", backend="tensorrt",
                               precision=precision, max_encoder_batch=2, max_decoder_batch=16, max_points=8)
    assert manifest.family == "sam2.1" and manifest.encoder["file"] == "encoder.plan"
    assert manifest.model_version == Manifest.load(onnx_dir).model_version
    gpu, cpu = Predictor(tmp_path / "trt"), Predictor(onnx_dir)
    image = np.ascontiguousarray(photos["coffee_400x600"][30:363, 40:557])
    gpu.set_image(image)
    cpu.set_image(image)
    tol = 1e-3 if precision == "fp32" else 5e-2
    g_arrays, c_arrays = gpu.get_image_arrays(), cpu.get_image_arrays()
    for name in families.get("sam2.1").arrays:
        c = c_arrays[name]
        assert np.abs(g_arrays[name] - c).max() < tol * max(1.0, float(np.abs(c).max())), name
    for multimask in (True, False):
        point = np.array([[260, 160], [100, 300]])
        g, c = (p.predict(point, np.array([1, 0]), multimask_output=multimask) for p in (gpu, cpu))
        assert np.abs(g[1] - c[1]).max() < (1e-3 if precision == "fp32" else 2e-2)
        for k in range(len(c[0])):
            union = (g[0][k] | c[0][k]).sum()
            assert union == 0 or (g[0][k] & c[0][k]).sum() / union > (0.995 if precision == "fp32" else 0.97)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_mobile_sam_engines_match_onnxruntime(vit_t_random, photos, tmp_path, precision):
    """MobileSAM: TinyViT's encoder engine and SAM's decoder engine against the ONNX Runtime build of the same
    checkpoint (same model version)."""
    from maskserve.build.builder import build_model_dir
    from maskserve.engines.model_dir import Manifest

    checkpoint, onnx_dir = vit_t_random
    manifest = build_model_dir(checkpoint, "vit_t", tmp_path / "trt", backend="tensorrt", precision=precision,
                               max_encoder_batch=4, max_decoder_batch=16, max_points=8)
    assert manifest.family == "mobile_sam" and manifest.encoder["file"] == "encoder.plan"
    assert manifest.model_version == Manifest.load(onnx_dir).model_version
    _embedding_and_masks_match(tmp_path / "trt", onnx_dir, photos["chelsea_300x451"], [220, 150], precision)
