"""Checkpoint → model directory: load, export ONNX, compile TensorRT engines if asked, write the manifest."""

from __future__ import annotations

import importlib
from pathlib import Path

import onnxruntime

from maskserve.engines import families
from maskserve.engines.model_dir import Manifest, staged

from .checkpoint import file_digest, load_model
from .specs import get_spec

BACKENDS = ("onnxruntime", "tensorrt", "torch")
PRECISIONS = {"onnxruntime": ("fp32",), "tensorrt": ("fp32", "fp16"), "torch": ("fp32", "bf16", "fp16")}


def build_model_dir(
    checkpoint: str | Path, model_type: str, out: str | Path, backend: str = "onnxruntime",
    precision: str = "fp32", max_encoder_batch: int = 8, max_decoder_batch: int = 64, max_points: int = 64,
) -> Manifest:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS[backend]:
        raise ValueError(f"the {backend} backend runs {' or '.join(PRECISIONS[backend])}, not {precision!r} "
                         "(fp16: TensorRT or torch; bf16: torch)")
    spec = get_spec(model_type)
    model_type = spec.name  # a publisher's alias (mobile_sam) builds its model type (vit_t)
    exporter = importlib.import_module(families.get(spec.family).export_module)  # the family's graphs and manifest
    if backend not in families.get(spec.family).backends:
        raise ValueError(f"{model_type} builds for {', '.join(families.get(spec.family).backends)} only, not "
                         f"{backend!r}")
    model = load_model(checkpoint, model_type)
    with staged(out) as staging:
        staging.mkdir()
        return exporter.write_model_dir(model, spec, checkpoint, model_type, staging, backend, precision,
                                        max_encoder_batch, max_decoder_batch, max_points)


def torch_encoder(manifest: Manifest, precision: str, max_batch: int, architecture: dict, **options) -> None:
    """Make `manifest` a torch directory's: its encoder the weights in encoder.pt, its decoder ONNX Runtime's."""
    from maskserve.engines import torch_backend

    manifest.backend, manifest.backend_version, manifest.precision = "torch", torch_backend.torch.__version__, precision
    manifest.encoder = {"file": torch_backend.ENCODER_FILE, "device": "auto", "max_batch": max_batch, **options,
                        "cuda_graphs": "auto", "compile": False, "architecture": architecture}


def onnx_manifest(spec, model_type: str, checkpoint, decoder: dict) -> Manifest:
    """The manifest of an ONNX Runtime model directory (`encoder.onnx` and `decoder`'s files), with what it
    records of the spec's family."""
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
        checkpoint_sha256=file_digest(checkpoint),
        model_version="",
        encoder={"file": "encoder.onnx"},
        decoder=decoder,
        generator=dict(spec.generator),
        **families.get(spec.family).manifest_fields(spec.embedding_layout),
    )
    manifest.model_version = manifest.derive_model_version()
    return manifest


def save_and_compile(staging: Path, manifest: Manifest, backend: str, precision: str, max_encoder_batch: int,
                     max_decoder_batch: int, max_points: int) -> Manifest:
    """Write the manifest, then compile TensorRT engines from the graphs when that backend is asked for."""
    manifest.save(staging)
    if backend == "tensorrt":
        from . import tensorrt_engines

        manifest = tensorrt_engines.compile_in_place(staging, manifest, precision, max_encoder_batch,
                                                     max_decoder_batch, max_points)
    return manifest
