"""Prompts → decoder batches → masks: the one path that the Predictor and the decoder service share.

Prompts with the same number of sparse points run as one decoder batch. Prompts are never padded to a
common length: every padding point is a token the decoder attends to, and the reference pads with exactly
one, so grouping keeps every answer identical to the reference's.

What differs by model family (pre-processing, prompt order, which masks answer, upscaling) the manifest's
family object says (`families`); the functions here take the manifest and ask it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from maskserve.limits import MAX_POINTS

from . import families
from .interface import EmbeddingArrays
from .model_dir import Manifest


class PromptError(ValueError):
    """A prompt the model cannot take; the message says what to change, `field` where (e.g. prompts[2].box)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Prompt:
    point_coords: np.ndarray | None = None  # (N, 2) x, y in original image pixels
    point_labels: np.ndarray | None = None  # (N,) 1 foreground, 0 background
    box: np.ndarray | None = None  # (4,) x0, y0, x1, y1 in original image pixels
    mask_input: np.ndarray | None = None  # (1, M, M) low-res logits from an earlier answer


@dataclass
class Answer:
    iou_predictions: np.ndarray  # (C,) float32
    low_res_logits: np.ndarray  # (C, M, M) float32; its top-left part when decoded with an extent
    # The logits the full-resolution masks come from where they differ from `low_res_logits`: SAM 2.1 returns
    # (and takes back as mask_input) its logits clamped to ±32 but upscales the unclamped ones. None: the same.
    unclamped_logits: np.ndarray | None = None

    @property
    def mask_logits(self) -> np.ndarray:
        """(C, M, M): what `full_resolution_logits` / `full_resolution_map` upscale for this answer's masks."""
        return self.low_res_logits if self.unclamped_logits is None else self.unclamped_logits


def prepare_image(image: np.ndarray, manifest: Manifest) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image → the encoder's (3, S, S) float32 input, as the model's family prepares it."""
    return families.of(manifest).prepare_image(image, manifest.image_size, manifest.pixel_mean, manifest.pixel_std)


def embedding_arrays(embedding: EmbeddingArrays, manifest: Manifest) -> dict[str, np.ndarray]:
    """One image's embedding, a mapping of the layout's named arrays → {name: (1, *shape) float32 contiguous}
    for every array of the manifest's layout; a missing array is an error."""
    shapes = manifest.array_shapes()
    if not isinstance(embedding, Mapping):
        raise TypeError(f"an embedding is a mapping of its named arrays ({', '.join(shapes)}), not "
                        f"{type(embedding).__name__}")
    missing = [n for n in shapes if n not in embedding]
    if missing:
        raise ValueError(f"the embedding lacks {', '.join(missing)} (a {manifest.model_type} embedding is "
                         f"{', '.join(shapes)})")
    return {n: np.ascontiguousarray(embedding[n], np.float32).reshape(1, *shape) for n, shape in shapes.items()}


def _finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise PromptError(f"{name} contains NaN or infinity", {"point_coords": "points"}.get(name, name))


def validate(prompt: Prompt, original_size: tuple[int, int], mask_input_size: int, max_points: int = MAX_POINTS) -> Prompt:
    """Check a prompt against the image it addresses and return it with NumPy arrays of the right dtypes."""
    h, w = original_size
    coords = labels = box = mask = None
    if prompt.point_coords is not None or prompt.point_labels is not None:
        if prompt.point_coords is None or prompt.point_labels is None:
            raise PromptError("point_coords and point_labels must be given together", "points")
        coords = np.asarray(prompt.point_coords, np.float64)
        labels = np.asarray(prompt.point_labels)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise PromptError(f"point_coords must have shape (N, 2), got {coords.shape}", "points")
        if labels.shape != (coords.shape[0],):
            raise PromptError(f"point_labels must have shape ({coords.shape[0]},) to match point_coords, "
                              f"got {labels.shape}", "points")
        if coords.shape[0] == 0:
            coords = labels = None
        else:
            _finite("point_coords", coords)
            if coords.shape[0] > max_points:
                raise PromptError(f"{coords.shape[0]} points in one prompt; at most {max_points} are allowed", "points")
            if not np.isin(labels, (0, 1)).all():
                raise PromptError("point_labels must be 1 (foreground) or 0 (background), got "
                                  f"{sorted(set(labels.tolist()))}", "points")
            outside = (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
            if outside.any():
                x, y = coords[outside][0]
                raise PromptError(f"point ({x:g}, {y:g}) lies outside the {w}x{h} image", "points")
            labels = labels.astype(np.float32)
    if prompt.box is not None:
        box = np.asarray(prompt.box, np.float64)
        if box.shape not in ((4,), (1, 4)):
            raise PromptError(f"box must be 4 numbers x0, y0, x1, y1, got shape {box.shape}", "box")
        box = box.reshape(4)
        _finite("box", box)
        if box[0] > box[2] or box[1] > box[3]:
            raise PromptError(f"box {box.tolist()} has x0 > x1 or y0 > y1 (expected x0, y0, x1, y1)", "box")
        if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
            raise PromptError(f"box {box.tolist()} extends outside the {w}x{h} image", "box")
    if prompt.mask_input is not None:
        mask = np.asarray(prompt.mask_input, np.float32)
        m = mask_input_size
        if mask.shape not in ((m, m), (1, m, m)):
            raise PromptError(f"mask_input must have shape (1, {m}, {m}) (the low_res_logits of an earlier answer), "
                              f"got {mask.shape}", "mask_input")
        mask = mask.reshape(1, m, m)
        _finite("mask_input", mask)
    if coords is None and box is None:
        raise PromptError("a prompt needs at least one point or a box", "points")
    return Prompt(coords, labels, box, mask)


def decode(
    decoder, manifest: Manifest, embedding: EmbeddingArrays, original_size: tuple[int, int],
    prompts: list[Prompt], multimask_output: bool = True, max_points: int = MAX_POINTS,
    prepared: dict | None = None, full_logits: bool = True,
) -> list[Answer]:
    """Answer each prompt (validated here) against one image's embedding (its named arrays); `prepared` is
    what `decoder.prepare(embedding)` returned, if the caller keeps it. Without `full_logits` the low-res
    logits may cover only what `full_resolution_logits` reads (the decoder skips the padding's masks)."""
    family = families.of(manifest)
    size, m = manifest.image_size, manifest.mask_input_size
    inputs = []
    for i, p in enumerate(prompts):
        try:
            p = validate(p, original_size, m, max_points)
        except PromptError as exc:
            exc.field = f"prompts[{i}]" + (f".{exc.field}" if exc.field else "")
            raise
        pts, lbl = family.prompt_points(p.point_coords, p.point_labels, original_size, size, p.box)
        inputs.append((pts, lbl, p.mask_input))

    groups: dict[tuple[int, bool], list[int]] = {}  # by point count, and mask input or not
    for i, (pts, _, mask) in enumerate(inputs):
        groups.setdefault((len(pts), mask is not None), []).append(i)
    answers: list[Answer | None] = [None] * len(inputs)
    embedding = embedding_arrays(embedding, manifest)
    extent = None if full_logits else mask_extent(manifest, original_size)
    for idx in groups.values():
        coords = np.stack([inputs[i][0] for i in idx])
        labels = np.stack([inputs[i][1] for i in idx])
        masks_in = np.zeros((len(idx), 1, m, m), np.float32)
        has_mask = np.zeros((len(idx),), np.float32)
        for row, i in enumerate(idx):
            if inputs[i][2] is not None:
                masks_in[row] = inputs[i][2]
                has_mask[row] = 1.0
        iou, low = decoder.decode(embedding, coords, labels, masks_in, has_mask, prepared, extent)
        iou, low = family.choose(iou, low, multimask_output)
        returned = family.returned_logits(low)
        for row, i in enumerate(idx):
            answers[i] = Answer(iou[row].copy(), returned[row].copy(),
                                None if returned is low else low[row].copy())
    return answers  # type: ignore[return-value]


def full_resolution_logits(answer_logits: np.ndarray, manifest: Manifest, original_size: tuple[int, int]) -> np.ndarray:
    """(C, M, M) low-res logits (an answer's `mask_logits`) → (C, H, W) logits at the original size."""
    return families.of(manifest).upscale_logits(answer_logits, original_size, manifest.image_size,
                                                manifest.mask_input_size)


def full_resolution_map(logits: np.ndarray, manifest: Manifest, original_size: tuple[int, int]) -> np.ndarray:
    """One mask's (M, M) low-res logits → (H, W) logits."""
    return families.of(manifest).upscale_map(logits, original_size, manifest.image_size, manifest.mask_input_size)


def mask_extent(manifest: Manifest, original_size: tuple[int, int]) -> tuple[int, int] | None:
    """The embedding cells whose masks `full_resolution_logits` reads for an image of `original_size` (None: all)."""
    return families.of(manifest).mask_extent(original_size, manifest.image_size, manifest.mask_input_size)
