"""Runtimes that execute a model directory, behind the two interfaces of `interface` (an `Encoder`, a
`Decoder`), with the graphs' tensor names declared there once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .interface import Decoder, Encoder
from .model_dir import Manifest, ModelDirError



def default_model_dir() -> Path:
    """The shipped tiny model, the offline default: the source tree's, else the `maskserve-tiny` distribution's
    (maskserve/bundled.py)."""
    from maskserve.bundled import tiny_model_dir

    return tiny_model_dir()


def engine_dir(cache: str | Path, model_dir: str | Path | None = None) -> Path:
    """Where `maskserve compile --cache` keeps this model's TensorRT engines for this machine's GPU:
    `{cache}/{model_version}/sm{arch}-trt{version}`, so a new node type or driver never loads a wrong engine."""
    from .tensorrt_backend import engine_key

    manifest = Manifest.load(Path(model_dir) if model_dir else default_model_dir())
    return Path(cache) / manifest.model_version / engine_key()


def resolve(model_dir: str | Path | None, engine_cache: str | Path | None = None) -> Path:
    """The model directory to run: the given one, or its compiled engines for this GPU from the cache."""
    if not engine_cache:
        return Path(model_dir) if model_dir else default_model_dir()
    compiled = engine_dir(engine_cache, model_dir)
    if not (compiled / "manifest.json").is_file():
        raise ModelDirError(f"no TensorRT engines for this GPU at {compiled}; "
                            f"run `maskserve compile --model-dir {model_dir} --cache {engine_cache}` first")
    return compiled


@dataclass
class Model:
    directory: Path
    manifest: Manifest
    encoder: Encoder | None
    decoder: Decoder | None


def load(model_dir: str | Path | None = None, *, encoder: bool = True, decoder: bool = True,
         threads: int | None = None, device: str | None = None) -> Model:
    """Open a model directory with the backend its manifest names (TensorRT needs an NVIDIA GPU; torch is imported
    only for a torch directory's encoder). `threads`: ONNX Runtime's (None: all cores); `device`: the torch
    encoder's (None: the manifest's)."""
    directory = Path(model_dir) if model_dir is not None else default_model_dir()
    manifest = Manifest.load(directory)
    if manifest.backend == "onnxruntime":
        from .onnxruntime_backend import OnnxDecoder as Dec, OnnxEncoder as Enc
    elif manifest.backend == "tensorrt":
        from .tensorrt_backend import TensorRTDecoder as Dec, TensorRTEncoder as Enc
    elif manifest.backend == "torch":  # PyTorch encoder (CUDA, else CPU); the decoder stays ONNX Runtime's
        from .onnxruntime_backend import OnnxDecoder as Dec

        if encoder:
            from .torch_backend import TorchEncoder as Enc
    else:
        raise ModelDirError(f"{directory}: unknown backend {manifest.backend!r}")
    return Model(
        directory, manifest,
        (Enc(directory, manifest, threads, device=device) if device and manifest.backend == "torch"
         else Enc(directory, manifest, threads)) if encoder else None,
        Dec(directory, manifest, threads) if decoder else None,
    )
