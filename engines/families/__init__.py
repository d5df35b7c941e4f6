"""Model families: what differs between SAM and SAM 2.1 (and the next ones), each in one object.

A family is resolved once — from a manifest (`of(manifest)`) or a name (`get(name)`: `ModelInfo.family`,
a spec's) — and then asked; code outside this package never compares family names. It owns image
preparation, coordinate transforms, prompt encoding, mask selection and upscaling, the embedding's named
arrays, the generator's defaults and clean-up, the model version's key and the export module.

Adding a family: a module in this package with a `Family` subclass, named in `_MODULES`.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import ClassVar

import numpy as np

_MODULES = ("sam", "mobile_sam", "sam2", "sam3")  # the families' modules, in this package
FORMAT = 1  # model directory format, part of every model version


class Family:
    name: ClassVar[str]  # as manifests and ModelInfo spell it
    arrays: ClassVar[tuple[str, ...]]  # the embedding's named arrays = the encoder graph's outputs, in order
    transforms: ClassVar  # its module of coordinate transforms: transform_coords, transform_boxes, prompt_points
    generator_defaults: ClassVar[dict] = {}  # automatic-generator defaults of this family's reference
    generator_options: ClassVar[dict] = {}  # generator options only this family's reference has: their neutral values
    generator_grid_dtype: ClassVar[type] = np.float64  # how the reference holds its point grid
    extra_prompt_points: ClassVar[int]  # decoder points beyond a prompt's own, at most (box corners, padding)
    export_module: ClassVar[str]  # maskserve.build module: load_model, write_model_dir, reference_image_encoder
    backends: ClassVar[tuple[str, ...]] = ("onnxruntime", "tensorrt", "torch")  # what `maskserve build` makes
    no_generator: ClassVar[str | None] = None  # why the family has no automatic generator, where it has none
    concept_arrays: ClassVar[tuple[str, ...]] = ()  # the concept detector's share of the embedding, if any

    @property
    def decoder_arrays(self) -> tuple[str, ...]:
        """The embedding's arrays the prompt decoder reads: all of them, unless another head shares the encoder."""
        return self.arrays

    @property
    def decoder_inputs(self) -> list[str]:
        """The general decoder graph's inputs: the embedding's arrays it reads, then the prompts'."""
        return [*self.decoder_arrays, "point_coords", "point_labels", "mask_input", "has_mask_input"]

    # -- images and prompts into the model's frame --------------------------------------------------------
    def prepare_image(self, image: np.ndarray, image_size: int, mean, std) -> np.ndarray:
        """(H, W, 3) uint8 RGB → the encoder's (3, S, S) float32 input."""
        raise NotImplementedError

    def input_size(self, original_size: tuple[int, int], image_size: int) -> tuple[int, int]:
        """Where the image lies inside the encoder's square, (h, w)."""
        raise NotImplementedError

    def transform_coords(self, coords: np.ndarray, original_size: tuple[int, int], image_size: int) -> np.ndarray:
        return self.transforms.transform_coords(coords, original_size, image_size)

    def prompt_points(self, coords, labels, original_size: tuple[int, int], image_size: int,
                      box: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A prompt's points and box (original pixels) → the decoder's (N, 2) coordinates and (N,) labels, in
        the family's order."""
        t = self.transforms
        coords = None if coords is None else t.transform_coords(coords, original_size, image_size)
        corners = None if box is None else t.transform_boxes(box, original_size, image_size)[0]
        return t.prompt_points(coords, labels, corners)

    # -- the decoder's four mask tokens → the answer ------------------------------------------------------
    def choose(self, iou: np.ndarray, low: np.ndarray, multimask: bool) -> tuple[np.ndarray, np.ndarray]:
        """(B, 4) scores and (B, 4, M, M) logits of the four mask tokens → the answer's (B, C) and
        (B, C, M, M): the three multimask tokens, or the family's single-mask choice."""
        raise NotImplementedError

    def returned_logits(self, low: np.ndarray) -> np.ndarray:
        """The low-res logits as the reference returns them (and takes them back as a mask input); the masks
        come from `low` itself. The same object where they do not differ."""
        return low

    def upscale_logits(self, logits: np.ndarray, original_size, image_size: int, mask_size: int) -> np.ndarray:
        """(C, M, M) low-res logits → (C, H, W) at the original size."""
        raise NotImplementedError

    def upscale_map(self, logits: np.ndarray, original_size, image_size: int, mask_size: int) -> np.ndarray:
        """One (M, M) map → (H, W)."""
        raise NotImplementedError

    def mask_extent(self, original_size, image_size: int, mask_size: int) -> tuple[int, int] | None:
        """The embedding cells whose masks the upscale reads (None: all)."""
        return None

    # -- the automatic generator --------------------------------------------------------------------------
    def low_res_cleanup(self, low: np.ndarray, min_area: int) -> np.ndarray:
        """The generator's clean-up on low-res logits before upscaling (SAM 2's), or the logits unchanged."""
        return low

    full_size_cleanup: ClassVar[bool] = False  # SAM's generator cleans the full-size masks after merging

    # -- the PyTorch encoder backend ----------------------------------------------------------------------
    def torch_encoder(self, model_dir, state: dict, part: dict, dtype, attention: str, device):
        """(the encoder network with `state` loaded, (input side, channels, grid)) for a torch model directory."""
        raise NotImplementedError(f"no PyTorch encoder for the {self.name} family")

    # -- identity -----------------------------------------------------------------------------------------
    def manifest_fields(self, layout) -> dict:
        """What a model directory's manifest records of the family: its name and the embedding layout
        ((name, shape, dtype) arrays), which the model version covers."""
        return {"family": self.name,
                "embedding_layout": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in layout]}

    def model_version(self, model_type: str, checkpoint_sha256: str, layout: list) -> str:
        """`{model_type}-{12 hex}` from the checkpoint's content and the embedding layout (never the backend)."""
        shapes = ";".join(f"{a['name']}{tuple(int(n) for n in a['shape'])}{a['dtype']}" for a in layout)
        key = f"{self.name}:{model_type}:{checkpoint_sha256}:{shapes}:{FORMAT}"
        return f"{model_type}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def __repr__(self) -> str:
        return f"<model family {self.name}>"


_REGISTRY: dict[str, Family] = {}


def _load() -> dict[str, Family]:
    if not _REGISTRY:
        for module in _MODULES:
            family = importlib.import_module(f"{__name__}.{module}").FAMILY
            _REGISTRY[family.name] = family
    return _REGISTRY


def names() -> tuple[str, ...]:
    return tuple(_load())


def get(name: str) -> Family:
    """The family of this name; KeyError naming the known ones."""
    found = _load().get(name or "sam")
    if found is None:
        raise KeyError(f"model family {name!r} is not one this maskserve runs ({', '.join(names())})")
    return found


def of(manifest) -> Family:
    return get(manifest.family)
