"""The model directory: encoder and decoder artifacts plus `manifest.json`, which says what they are.

The manifest's `model_version` keys every embedding in the store. It is derived from the checkpoint's content
and the embedding layout, not from the backend, so an ONNX Runtime decoder can read embeddings made by a
TensorRT encoder of the same checkpoint, and a different checkpoint can never be decoded against them.

`family` says which pre- and post-processing and which graphs the directory holds: "sam" (SAM and the tiny
model; what a manifest without the field is), "mobile_sam", "sam2.1" or "sam3". `embedding_layout` is the per-image embedding as
named arrays, `[{"name", "shape" (without batch), "dtype"}, ...]` in the encoder graph's output order: SAM's
one `image_embeddings` array (its `embedding_shape`), SAM 2.1's three (the family's `arrays`, engines.families).
`embedding_shape` stays the `image_embeddings` array's.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import families
from .families import FORMAT

MANIFEST = "manifest.json"


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
    family: str = "sam"  # "sam" | "sam2.1"
    embedding_layout: list = field(default_factory=list)  # [{"name", "shape", "dtype"}]; SAM's from embedding_shape
    tracking: dict = field(default_factory=dict)  # video tracking graphs and settings (engines/tracking.py), if any
    # The automatic generator's recommended defaults for this model (engines/automatic.Options names), taken
    # where a caller leaves a parameter unset: the tiny model's predicted IoUs sit below Meta's thresholds.
    generator: dict = field(default_factory=dict)
    # The concept head (SAM 3): its text and detector graphs, the tokenizer's vocabulary, and their sizes
    # (engines/concepts.py); empty where the model has none.
    concepts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.embedding_layout:
            self.embedding_layout = [{"name": "image_embeddings", "shape": list(self.embedding_shape),
                                      "dtype": self.embedding_dtype}]
        self.embedding_layout = [{"name": str(a["name"]), "shape": [int(n) for n in a["shape"]],
                                  "dtype": str(a["dtype"])} for a in self.embedding_layout]

    @property
    def array_names(self) -> list[str]:
        """The embedding's arrays, in the layout's order."""
        return [a["name"] for a in self.embedding_layout]

    def array_shapes(self) -> dict[str, tuple[int, ...]]:
        """name → per-image shape (no batch axis)."""
        return {a["name"]: tuple(a["shape"]) for a in self.embedding_layout}

    def embedding_nbytes(self, dtype: str | None = None) -> int:
        """Bytes of one image's embedding: every array of the layout, in `dtype` if given (the store's
        float16), else in each array's own."""
        import numpy as np

        return sum(int(np.prod(a["shape"])) * np.dtype(dtype or a["dtype"]).itemsize for a in self.embedding_layout)

    def derive_model_version(self) -> str:
        """`{model_type}-{12 hex}`, as the family keys its checkpoint and embedding layout (never the backend)."""
        return families.of(self).model_version(self.model_type, self.checkpoint_sha256, self.embedding_layout)

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
        if m.family not in families.names():
            raise ModelDirError(f"{path}: model family {m.family!r} is not one this maskserve runs "
                                f"({', '.join(families.names())}); upgrade maskserve")
        if m.array_names[0] != "image_embeddings" or tuple(m.embedding_layout[0]["shape"]) != m.embedding_shape:
            raise ModelDirError(f"{path}: malformed manifest (embedding_layout must begin with the "
                                f"image_embeddings array of embedding_shape {list(m.embedding_shape)})")
        from .automatic import Options  # noqa: PLC0415 (automatic imports this module)

        unknown = set(m.generator) - {f.name for f in fields(Options)} | ({"point_grids"} & set(m.generator))
        if unknown:
            raise ModelDirError(f"{path}: malformed manifest (generator: {sorted(unknown)} are not generator "
                                "parameters)")
        for part in (m.encoder, m.decoder, m.tracking, m.concepts):
            for key in ("file", "image_file", "points_file", "decoder_file", "memory_attention_file",
                        "memory_encoder_file", "constants_file", "text_file", "detector_file", "vocabulary_file"):
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
