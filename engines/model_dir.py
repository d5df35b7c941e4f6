"""The model directory: encoder and decoder artifacts plus `manifest.json`, which says what they are.

The manifest's `model_version` keys every embedding in the store. It is derived from the checkpoint's content
and the embedding layout, not from the backend, so an ONNX Runtime decoder can read embeddings made by a
TensorRT encoder of the same checkpoint, and a different checkpoint can never be decoded against them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1


class ModelDirError(ValueError):
    pass


@dataclass
class Manifest:
    model_type: str
    backend: str  # "onnxruntime" | "tensorrt"
    backend_version: str
    precision: str  # "fp32" | "fp16"
    image_size: int  # the encoder's square input side
    embedding_shape: tuple[int, int, int]  # (C, E, E) per image
    embedding_dtype: str
    mask_input_size: int  # side of the low-res logits
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    checkpoint_sha256: str
    model_version: str
    encoder: dict  # {"file": ..., plus backend details}
    decoder: dict  # "file": the general graph; ONNX Runtime also "image_file" + "points_file" (see build/export.py)
    format: int = FORMAT
    extra: dict = field(default_factory=dict)  # backend specifics: TensorRT GPU architecture, profiles

    @staticmethod
    def derive_model_version(model_type: str, checkpoint_sha256: str, embedding_shape) -> str:
        key = f"{model_type}:{checkpoint_sha256}:{tuple(embedding_shape)}:{FORMAT}"
        return f"{model_type}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def save(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "Manifest":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise ModelDirError(f"{directory} is not a model directory: it has no {MANIFEST} "
                                f"(create one with `maskserve build`)")
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ModelDirError(f"{path}: manifest format {data.get('format')} is not {FORMAT}; rebuild the model")
        try:
            m = cls(**data)
        except TypeError as exc:
            raise ModelDirError(f"{path}: malformed manifest ({exc})") from None
        m.embedding_shape = tuple(m.embedding_shape)
        m.pixel_mean, m.pixel_std = tuple(m.pixel_mean), tuple(m.pixel_std)
        for part in (m.encoder, m.decoder):
            for key in ("file", "image_file", "points_file"):
                if key in part and not (Path(directory) / part[key]).is_file():
                    raise ModelDirError(f"{directory}: {part[key]} named by the manifest is missing")
        return m


@contextmanager
def staged(out: str | Path):
    """Write a model directory beside its destination (`<out>.partial`) and move it into place only when
    complete: a failed build never leaves half a model behind, nor destroys the previous one."""
    out = Path(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
