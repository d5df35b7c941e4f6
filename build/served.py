"""A model by name → a model directory to serve. `maskserve up --model vit_b` pulls Meta's checkpoint (or takes
the one given), builds its ONNX Runtime model directory once into the cache, keyed by the checkpoint's content,
and serves it from there after."""

from __future__ import annotations

import importlib
from pathlib import Path

from maskserve.engines import families
from maskserve.engines.model_dir import MANIFEST

from .download import _digest, cache_root, pull
from .specs import get_spec


class CannotBuild(RuntimeError):
    """Building needs what this install lacks (the export extra)."""


def model_dir_for(model: str, checkpoint: str | Path | None = None, cache: Path | None = None,
                  progress: bool = True) -> Path:
    """`model`: a model directory, or a model type (vit_b, sam2.1_hiera_tiny, ...) to build from `checkpoint`
    (default: the published one, pulled)."""
    if (Path(model) / MANIFEST).is_file():
        return Path(model)
    spec = get_spec(model)  # an unknown name: UnknownModelType, naming the known ones
    model = spec.name  # a publisher's alias (mobile_sam) is its model type (vit_t)
    try:  # before a download of hundreds of MB: can this install build at all?
        importlib.import_module("maskserve.build.builder")
        importlib.import_module(families.get(spec.family).export_module)
    except ModuleNotFoundError as exc:
        extra = " (and Meta's package beside it: pip install --no-deps sam3==0.1.4)" if exc.name == "sam3" else ""
        raise CannotBuild(f"building a {model} model directory needs the export extra (missing: {exc.name}): "
                          f"pip install 'maskserve[export]'{extra} — or build it where torch is installed "
                          f"(`maskserve build --model-type {model} --out DIR`) and serve it with --model-dir DIR"
                          ) from None
    checkpoint = Path(checkpoint) if checkpoint else pull(model, progress=progress)
    out = (cache or cache_root()) / "models" / f"{model}-{_digest(checkpoint, 'sha256')[:12]}"
    if not (out / MANIFEST).is_file():
        from .builder import build_model_dir

        build_model_dir(checkpoint, model, out)
    return out
