"""Checkpoint → model directory: load, export ONNX, compile TensorRT engines if asked, write the manifest."""

from __future__ import annotations

from pathlib import Path

import onnxruntime

from maskserve.engines.model_dir import Manifest, staged

from . import export
from .checkpoint import file_digest, load_model
from .specs import get_spec

BACKENDS = ("onnxruntime", "tensorrt")


def build_model_dir(
    checkpoint: str | Path, model_type: str, out: str | Path, backend: str = "onnxruntime",
    precision: str = "fp32", max_encoder_batch: int = 8, max_decoder_batch: int = 64, max_points: int = 64,
) -> Manifest:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    if backend == "onnxruntime" and precision != "fp32":
        raise ValueError("the ONNX Runtime backend runs fp32; fp16 is a TensorRT build option")
    spec = get_spec(model_type)
    sam = load_model(checkpoint, model_type)
    with staged(out) as staging:
        staging.mkdir()
        return _write(sam, spec, checkpoint, model_type, staging, backend, precision,
                      max_encoder_batch, max_decoder_batch, max_points)


def _write(sam, spec, checkpoint, model_type, staging, backend, precision,
           max_encoder_batch, max_decoder_batch, max_points) -> Manifest:
    export.export_encoder(sam, staging / "encoder.onnx")
    export.export_decoder(sam, staging / "decoder.onnx")
    export.export_points_decoder(sam, staging / "decoder_image.onnx", staging / "decoder_points.onnx")
    checkpoint_sha256 = file_digest(checkpoint)
    manifest = Manifest(
        model_type=model_type,
        backend="onnxruntime",
        backend_version=onnxruntime.__version__,
        precision="fp32",
        image_size=spec.image_size,
        embedding_shape=spec.embedding_shape,
        embedding_dtype="float32",
        mask_input_size=spec.mask_input_size,
        pixel_mean=spec.pixel_mean,
        pixel_std=spec.pixel_std,
        checkpoint_sha256=checkpoint_sha256,
        model_version=Manifest.derive_model_version(model_type, checkpoint_sha256, spec.embedding_shape),
        encoder={"file": "encoder.onnx"},
        decoder={"file": "decoder.onnx", "image_file": "decoder_image.onnx", "points_file": "decoder_points.onnx"},
    )
    manifest.save(staging)
    if backend == "tensorrt":
        from . import tensorrt_engines

        manifest = tensorrt_engines.compile_in_place(staging, manifest, precision, max_encoder_batch,
                                                     max_decoder_batch, max_points)
    return manifest
