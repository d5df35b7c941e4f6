"""Prompts → decoder batches → masks: the one path that the Predictor and the decoder service share.

Prompts with the same number of sparse points run as one decoder batch. Prompts are never padded to a
common length: every padding point is a token the decoder attends to, and the reference pads with exactly
one, so grouping keeps every answer identical to the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import transforms
from .model_dir import Manifest

MAX_POINTS = 64


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
    decoder, manifest: Manifest, embedding: np.ndarray, original_size: tuple[int, int],
    prompts: list[Prompt], multimask_output: bool = True, max_points: int = MAX_POINTS,
    features: dict | None = None, full_logits: bool = True,
) -> list[Answer]:
    """Answer each prompt (validated here) against one image embedding (1, C, E, E); `features` is what
    `decoder.prepare(embedding)` returned, if the caller keeps it. Without `full_logits` the low-res
    logits may cover only what `full_resolution_logits` reads (the decoder skips the padding's masks)."""
    size, m = manifest.image_size, manifest.mask_input_size
    prepared = []
    for i, p in enumerate(prompts):
        try:
            p = validate(p, original_size, m, max_points)
        except PromptError as exc:
            exc.field = f"prompts[{i}]" + (f".{exc.field}" if exc.field else "")
            raise
        coords = None if p.point_coords is None else transforms.transform_coords(p.point_coords, original_size, size)
        corners = None if p.box is None else transforms.transform_boxes(p.box, original_size, size)[0]
        pts, lbl = transforms.prompt_points(coords, p.point_labels, corners)
        prepared.append((pts, lbl, p.mask_input))

    groups: dict[tuple[int, bool], list[int]] = {}  # by point count, and mask input or not
    for i, (pts, _, mask) in enumerate(prepared):
        groups.setdefault((len(pts), mask is not None), []).append(i)
    answers: list[Answer | None] = [None] * len(prepared)
    token_slice = slice(1, None) if multimask_output else slice(0, 1)
    embedding = np.ascontiguousarray(embedding, np.float32).reshape(1, *manifest.embedding_shape)
    extent = None if full_logits else mask_extent(manifest, original_size)
    for idx in groups.values():
        coords = np.stack([prepared[i][0] for i in idx])
        labels = np.stack([prepared[i][1] for i in idx])
        masks_in = np.zeros((len(idx), 1, m, m), np.float32)
        has_mask = np.zeros((len(idx),), np.float32)
        for row, i in enumerate(idx):
            if prepared[i][2] is not None:
                masks_in[row] = prepared[i][2]
                has_mask[row] = 1.0
        iou, low = decoder.decode(embedding, coords, labels, masks_in, has_mask, features, extent)
        for row, i in enumerate(idx):
            answers[i] = Answer(iou[row, token_slice].copy(), low[row, token_slice].copy())
    return answers  # type: ignore[return-value]


def full_resolution_logits(answer_logits: np.ndarray, manifest: Manifest, original_size: tuple[int, int]) -> np.ndarray:
    input_size = transforms.resized_shape(*original_size, manifest.image_size)
    return transforms.upscale_logits(answer_logits, input_size, original_size, manifest.image_size,
                                     manifest.mask_input_size)


def full_resolution_map(logits: np.ndarray, manifest: Manifest, original_size: tuple[int, int]) -> np.ndarray:
    """One mask's (M, M) low-res logits → (H, W) logits (`upscale_map`)."""
    input_size = transforms.resized_shape(*original_size, manifest.image_size)
    return transforms.upscale_map(logits, input_size, original_size, manifest.image_size, manifest.mask_input_size)


def mask_extent(manifest: Manifest, original_size: tuple[int, int]) -> tuple[int, int] | None:
    """The embedding cells whose masks `full_resolution_logits` reads for an image of `original_size`."""
    input_size = transforms.resized_shape(*original_size, manifest.image_size)
    return transforms.mask_extent(input_size, manifest.image_size, manifest.mask_input_size)
