"""Automatic mask generation ("segment everything"): the paper's grid generator, without torch.

The same records as `segment_anything.SamAutomaticMaskGenerator` for a SAM model, and as
`sam2.SAM2AutomaticMaskGenerator` for a SAM 2.1 one (the model family says how they differ), for the same image: per crop
(the whole image, then `crop_n_layers` levels of overlapping zoomed-in crops) a grid of single-point
prompts, three masks each, kept if predicted IoU and stability pass, masks touching a crop's inner edge
dropped, duplicates removed by box NMS within each crop and across crops, then optionally small holes and
islands removed. SAM 2.1's generator differs in its model's pre- and post-processing, its default
`pred_iou_thresh` (0.8), three options of its own (`mask_threshold`, `multimask_output`, `use_m2m`: each grid
mask decoded once more with its own low-res logits as mask input), and, when `min_mask_region_area` is set,
holes and specks of up to that many low-res cells removed from every mask before it is upscaled in place of
SAM's clean-up of the full-size masks: the family object (`families`) holds each of these. What differs from the references is only
where and when the work happens:
- the grid runs as large decoder batches against the crop's embedding and the split decoder's per-image
  tensors, computing only the mask cells the crop shows (`mask_extent`);
- predicted IoU is filtered on the decoder's output, before anything is upscaled; each survivor is then
  upscaled, scored, thresholded and RLE-encoded alone, in the transposed frame COCO's RLE reads, so memory
  holds RLEs, never thousands of full-size masks.
NMS and comparisons follow torchvision's and torch's float32 arithmetic, ties broken by order as theirs.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
import warnings
from dataclasses import dataclass, field, fields
from itertools import product
from typing import Callable

import numpy as np

from . import families, masks, prompts
from .families import Family
from .model_dir import Manifest

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
EDGE_TOLERANCE = 20.0  # pixels: a mask box this close to a crop's inner edge is cut off by the crop


class ParameterError(ValueError):
    """A generator parameter out of range; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class Cancelled(Exception):
    """The caller stopped waiting (a cancelled RPC); the work in hand was abandoned."""


def _option(reference, help: str, cli: bool = True, flag: str | None = None):
    """A generator parameter: the reference's default and its description, declared here once; the CLI's
    flags, the proto's defaults check and the docs' table (docs/python.md) are derived from them. Unset (None) until
    `validate` fills it: a model directory's recommendation, else the family's default, else the reference's."""
    return field(default=None, metadata={"reference": reference, "help": help, "cli": cli, "flag": flag})


def reference_default(name: str):
    return next(f for f in fields(Options) if f.name == name).metadata["reference"]


@dataclass
class Options:
    """The reference generators' parameters, names and defaults (`SamAutomaticMaskGenerator.__init__`, and
    `SAM2AutomaticMaskGenerator.__init__` for the last three). None: unset, filled by `validate`."""

    points_per_side: int | None = _option(32, "points per side of the grid (exclusive with point_grids)")
    points_per_batch: int | None = _option(64, "accepted for compatibility; the answer does not depend on it", cli=False)
    pred_iou_thresh: float | None = _option(None, "keep masks whose predicted IoU is above this")
    stability_score_thresh: float | None = _option(0.95, "keep masks whose stability score is at least this")
    stability_score_offset: float | None = _option(1.0, "logit offset of the stability score")
    box_nms_thresh: float | None = _option(0.7, "box IoU above which NMS drops a mask within a crop")
    crop_n_layers: int | None = _option(0, "layers of zoomed-in crops (layer i: 4^i crops)")
    crop_nms_thresh: float | None = _option(0.7, "box IoU above which NMS drops a mask across crops")
    crop_overlap_ratio: float | None = _option(512 / 1500, "overlap of neighbouring crops, as a fraction of the crop")
    crop_n_points_downscale_factor: int | None = _option(1, "each crop layer's grid has this many times fewer points a side")
    point_grids: list[np.ndarray] | None = _option(None, "one grid per crop layer, points as fractions of the crop",
                                                   cli=False)
    min_mask_region_area: int | None = _option(0, "remove holes and islands up to this area (SAM: pixels; SAM 2.1: low-res "
                                           "cells)")
    output_mode: str | None = _option("binary_mask", "binary_mask, uncompressed_rle or coco_rle", cli=False)
    mask_threshold: float | None = _option(0.0, "where the mask logits are cut (stability: ± the offset)")
    multimask_output: bool | None = _option(True, "three masks per grid point, or the family's single-mask choice",
                                     flag="--multimask-output/--single-mask-output")
    use_m2m: bool | None = _option(False, "refine each mask once with its own low-res logits", flag="--use-m2m")

    @staticmethod
    def describe(name: str) -> tuple[str, str]:
        """(default, description) of a parameter as people read them: a family's default or own option named."""
        f = next(f for f in fields(Options) if f.name == name)
        known = [families.get(n) for n in families.names()]
        default = "512 / 1500" if name == "crop_overlap_ratio" else repr(f.metadata["reference"])
        by_family = [f"{fam.generator_defaults[name]} ({fam.name})" for fam in known if name in fam.generator_defaults]
        if by_family:
            default = "the model family's: " + ", ".join(by_family)
        owners = [fam.name for fam in known if name in fam.generator_options]
        return default, (f"{' and '.join(owners)} only: " if owners else "") + f.metadata["help"]

    @staticmethod
    def table() -> str:
        """The table of the generator's parameters in docs/python.md."""
        rows = ["| parameter | default | |", "|---|---|---|"]
        for f in fields(Options):
            default, help = Options.describe(f.name)
            rows.append(f"| `{f.name}` | {default} | {help} |")
        return "\n".join(rows) + "\n"

    def validate(self, max_crop_layers: int = 3, max_points: int = 65536, family: Family | None = None,
                 recommended: dict | None = None) -> "Options":
        """Check every parameter (one clear error naming it) and return the options with grids as arrays and
        every unset one filled: the model directory's `recommended` value (its manifest's `generator`), else
        the model `family`'s default, else the reference's; another family's own options are refused."""
        defaults = {f.name: f.metadata["reference"] for f in fields(self)}
        defaults.update(family.generator_defaults if family is not None else {})
        defaults.update(recommended or {})
        if self.point_grids is not None:
            defaults["points_per_side"] = None
        self = Options(**{**defaults, **{f.name: getattr(self, f.name) for f in fields(self)
                                         if getattr(self, f.name) is not None}})

        def integer(name, low, high=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ParameterError(name, f"must be an integer, got {v!r}")
            if v < low or (high is not None and v > high):
                bound = f"from {low} to {high}" if high is not None else f"at least {low}"
                raise ParameterError(name, f"must be {bound}, got {v}")

        def number(name, low, high, high_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v):
                raise ParameterError(name, f"must be a finite number, got {v!r}")
            if v < low or v > high or (high_open and v == high):
                raise ParameterError(name, f"must lie in [{low}, {high}{')' if high_open else ']'}, got {v}")

        if (self.points_per_side is None) == (self.point_grids is None):
            raise ParameterError("points_per_side", "give exactly one of points_per_side and point_grids")
        integer("crop_n_layers", 0, max_crop_layers)
        if self.points_per_side is not None:
            integer("points_per_side", 1, int(math.isqrt(max_points)))
        integer("points_per_batch", 1)
        for name in ("stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            number(name, 0.0, 1.0)
        number("stability_score_offset", 0.0, 1e6)
        number("crop_overlap_ratio", 0.0, 1.0, high_open=True)
        integer("crop_n_points_downscale_factor", 1)
        integer("min_mask_region_area", 0)
        if self.pred_iou_thresh is not None:
            number("pred_iou_thresh", 0.0, 1.0)
        number("mask_threshold", -1e6, 1e6)
        for name in ("multimask_output", "use_m2m"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ParameterError(name, f"must be true or false, got {getattr(self, name)!r}")
        if family is not None:
            for other in map(families.get, families.names()):
                for name, neutral in other.generator_options.items():
                    if name not in family.generator_options and getattr(self, name) != neutral:
                        raise ParameterError(name, f"is an option of the {other.name} generator; this model is "
                                                   f"{family.name} (leave it at {neutral})")
        if self.output_mode not in OUTPUT_MODES:
            raise ParameterError("output_mode", f"must be one of {', '.join(OUTPUT_MODES)}, got {self.output_mode!r}")
        grids = self.point_grids
        if grids is not None:
            grids = [np.asarray(g, np.float64) for g in grids]
            if len(grids) < self.crop_n_layers + 1:
                raise ParameterError("point_grids", f"needs one grid per crop layer: {self.crop_n_layers + 1} "
                                                    f"for crop_n_layers={self.crop_n_layers}, got {len(grids)}")
            for i, g in enumerate(grids):
                if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
                    raise ParameterError("point_grids", f"grid {i} must have shape (N, 2) with N ≥ 1, got {g.shape}")
                if not np.all(np.isfinite(g)) or g.min() < 0 or g.max() > 1:
                    raise ParameterError("point_grids", f"grid {i} must hold coordinates in [0, 1] (fractions of "
                                                        "the crop's width and height)")
        checked = Options(**{**{f.name: getattr(self, f.name) for f in fields(self)}, "point_grids": grids})
        total = checked.total_points()
        if total > max_points:
            raise ParameterError("points_per_side" if grids is None else "point_grids",
                                 f"{total} point prompts over all crops; at most {max_points} are allowed")
        return checked

    def layer_grids(self) -> list[np.ndarray]:
        """One normalised (N, 2) grid per crop layer."""
        if self.point_grids is not None:
            return self.point_grids
        return [point_grid(int(self.points_per_side / self.crop_n_points_downscale_factor ** i))
                for i in range(self.crop_n_layers + 1)]

    def total_points(self) -> int:
        grids = self.layer_grids()
        return sum(len(grids[i]) * 4 ** i for i in range(self.crop_n_layers + 1))


def point_grid(n_per_side: int) -> np.ndarray:
    """n × n points at the centres of a regular grid over [0, 1]², x varying fastest."""
    offset = 1 / (2 * n_per_side) if n_per_side else 0.0
    side = np.linspace(offset, 1 - offset, n_per_side)
    return np.stack([np.tile(side[None, :], (n_per_side, 1)), np.tile(side[:, None], (1, n_per_side))],
                    axis=-1).reshape(-1, 2)


def crop_boxes(image_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> list[tuple[list[int], int]]:
    """(XYXY box, layer) of every crop: the whole image, then 2^i × 2^i overlapping crops in layer i."""
    h, w = image_size
    out = [([0, 0, w, h], 0)]
    for layer in range(1, n_layers + 1):
        n = 2 ** layer
        overlap = int(overlap_ratio * min(h, w) * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + h) / n))
        xs = [int((crop_w - overlap) * i) for i in range(n)]
        ys = [int((crop_h - overlap) * i) for i in range(n)]
        out += [([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)], layer) for x0, y0 in product(xs, ys)]
    return out


@dataclass
class MaskSet:
    """Masks in the whole image's frame: COCO RLE counts plus the reference's per-mask fields."""

    image_size: tuple[int, int]
    rles: list[bytes] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # XYXY, inclusive
    iou_preds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    stability: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    crop_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))  # XYXY
    filtered: dict = field(default_factory=dict)  # the candidates and how many each filter removed

    def __len__(self) -> int:
        return len(self.rles)

    def take(self, idx) -> "MaskSet":
        idx = np.asarray(idx, np.int64)
        return MaskSet(self.image_size, [self.rles[i] for i in idx], self.boxes[idx], self.iou_preds[idx],
                       self.stability[idx], self.points[idx], self.crop_boxes[idx])

    @staticmethod
    def concat(sets: list["MaskSet"], image_size: tuple[int, int]) -> "MaskSet":
        if not sets:
            return MaskSet(image_size)
        return MaskSet(image_size, [r for s in sets for r in s.rles],
                       *(np.concatenate([getattr(s, k) for s in sets])
                         for k in ("boxes", "iou_preds", "stability", "points", "crop_boxes")))


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS, highest score first (ties in input order), as torchvision's `nms`:
    float32 boxes, area (x1 − x0)·(y1 − y0), a box suppressed when its IoU with a kept one exceeds
    `threshold`."""
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    b = np.asarray(boxes, np.float32)[order]
    x0, y0, x1, y1 = b.T
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(len(b), bool)
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(len(b)):
            if suppressed[i]:
                continue
            keep.append(i)
            rest = slice(i + 1, None)
            w = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), np.float32(0))
            h = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), np.float32(0))
            inter = w * h
            suppressed[rest] |= inter / (areas[i] + areas[rest] - inter) > np.float32(threshold)
    return order[np.asarray(keep, np.int64)]


def _stability(logits: np.ndarray, offset: float, threshold: float = 0.0) -> np.float32:
    """The references' stability score: pixels above threshold + offset over pixels above threshold − offset,
    in float32."""
    inner = np.count_nonzero(logits > np.float32(threshold + offset))
    outer = np.count_nonzero(logits > np.float32(threshold - offset))
    return np.float32(inner) / np.float32(outer) if outer else np.float32(np.nan)


def _near_crop_edge(box: np.ndarray, crop_box: list[int], image_size: tuple[int, int]) -> bool:
    """A box (image frame) within EDGE_TOLERANCE of an edge of its crop that is not an edge of the image."""
    h, w = image_size
    b = box.astype(np.float32)
    near_crop = np.abs(b - np.asarray(crop_box, np.float32)) <= EDGE_TOLERANCE
    near_image = np.abs(b - np.array([0, 0, w, h], np.float32)) <= EDGE_TOLERANCE
    return bool(np.any(near_crop & ~near_image))


def _box_of_transposed(mask_t: np.ndarray) -> np.ndarray:
    """XYXY box (inclusive) of a mask given transposed, (W, H); zeros for an empty mask."""
    y0, x0, h, w = masks.bbox_xywh(mask_t)  # the transposed frame's (x, y, width, height)
    if h == 0:
        return np.zeros(4, np.int64)
    return np.array([x0, y0, x0 + w - 1, y0 + h - 1], np.int64)


def _grid_masks(decoder, family: Family, manifest: Manifest, embedding, prepared, coords: np.ndarray, extent,
                options: Options) -> tuple[np.ndarray, np.ndarray, int]:
    """(predicted IoU (R,), low-res logits (R, M', M'), masks per point) of one batch of single-point
    prompts, point-major (each point's masks together, in token order), as the reference generators flatten
    them."""
    n, m = len(coords), manifest.mask_input_size
    labels = np.tile(np.array([[1, -1]], np.float32), (n, 1))
    iou, low = decoder.decode(embedding, coords, labels, np.zeros((n, 1, m, m), np.float32),
                              np.zeros(n, np.float32), prepared, extent)
    iou, low = family.choose(iou, low, options.multimask_output)
    k = iou.shape[1]
    iou, low = iou.reshape(-1), low.reshape(-1, *low.shape[2:])
    if options.use_m2m:  # SAM 2: each mask once more, its own clamped low-res logits as the mask input
        iou, low = decoder.decode(embedding, np.repeat(coords, k, axis=0), np.repeat(labels, k, axis=0),
                                  family.returned_logits(low)[:, None], np.ones(len(low), np.float32),
                                  prepared, extent)
        iou, low = family.choose(iou, low, multimask=False)
        iou, low = iou[:, 0], low[:, 0]
    return iou, low, k


def process_crop(
    decoder, manifest: Manifest, embedding, prepared: dict | None, crop_box: list[int],
    grid: np.ndarray, image_size: tuple[int, int], options: Options, *, batch: int | None = None,
    cancel: threading.Event | None = None, progress: Callable[[int], None] | None = None,
    timings: dict | None = None,
) -> MaskSet:
    """The masks of one crop's point grid, filtered and de-duplicated (NMS within the crop) as the reference
    does, in the whole image's frame. `options` are validated for the model's family (its defaults filled in).
    Prompts go `batch` at a time (default: the decoder's `prompt_batch`, chosen by measurement for its
    runtime). `progress(n)` is told of each batch of n points; `cancel` is checked between batches. `timings`
    accumulates seconds per stage (grid_decode, filter, nms). The result's `filtered` counts the candidate
    masks and how many each filter removed."""
    import cv2  # here, not at the top: a client imports this module for Options and MaskSet only

    timings = timings if timings is not None else {}
    filtered: dict[str, int] = {}
    removed = count_filtered(filtered)
    x0, y0, x1, y1 = crop_box
    crop_size = (y1 - y0, x1 - x0)
    ch, cw = crop_size
    points = grid * np.array([[cw, ch]], np.float64)
    size = manifest.image_size
    family = families.of(manifest)
    points = points.astype(family.generator_grid_dtype)  # as the reference holds it (and its records' point_coords)
    offset = np.array([x0, y0], points.dtype)
    embedding = prompts.embedding_arrays(embedding, manifest)
    extent = prompts.mask_extent(manifest, crop_size)
    iou_thresh, stab_thresh = np.float32(options.pred_iou_thresh), np.float32(options.stability_score_thresh)
    cut = np.float32(options.mask_threshold)
    whole = crop_size == tuple(image_size)
    canvas = None if whole else np.zeros((image_size[1], image_size[0]), bool)  # the image, transposed
    kept: list[tuple] = []
    batch = batch or decoder.prompt_batch
    for start in range(0, len(points), batch):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        t = time.perf_counter()
        chunk = points[start:start + batch]
        n = len(chunk)
        coords = np.zeros((n, 2, 2), np.float32)
        coords[:, 0] = family.transform_coords(chunk, crop_size, size)
        iou, low, per_point = _grid_masks(decoder, family, manifest, embedding, prepared, coords, extent, options)
        t2 = time.perf_counter()
        timings["grid_decode"] = timings.get("grid_decode", 0.0) + t2 - t
        survivors = np.flatnonzero(iou > iou_thresh) if options.pred_iou_thresh > 0 else range(len(iou))
        removed("candidates", len(iou))
        removed("pred_iou_thresh", len(iou) - len(survivors))
        for r in survivors:
            logits = family.low_res_cleanup(low[r], options.min_mask_region_area)
            lt = prompts.full_resolution_map(cv2.transpose(logits), manifest, (cw, ch))
            stability = _stability(lt, options.stability_score_offset, cut)
            if options.stability_score_thresh > 0 and not stability >= stab_thresh:
                removed("stability_score_thresh")
                continue
            binary_t = lt > cut
            box = _box_of_transposed(binary_t) + np.array([x0, y0, x0, y0], np.int64)
            if _near_crop_edge(box, crop_box, image_size):
                removed("crop_edge")
                continue
            if whole:
                rle = masks.encode_rle_transposed(binary_t)
            else:
                canvas[x0:x1, y0:y1] = binary_t
                rle = masks.encode_rle_transposed(canvas)
                canvas[x0:x1, y0:y1] = False
            kept.append((rle, box, iou[r], stability, chunk[r // per_point] + offset))
        timings["filter"] = timings.get("filter", 0.0) + time.perf_counter() - t2
        if progress is not None:
            progress(n)
    t = time.perf_counter()
    found = MaskSet(image_size)
    if kept:
        rles, boxes, ious, stab, pts = zip(*kept)
        found = MaskSet(image_size, list(rles), np.stack(boxes), np.array(ious, np.float32),
                        np.array(stab, np.float32), np.stack(pts), np.tile(np.array(crop_box, np.int64), (len(rles), 1)))
        found = found.take(box_nms(found.boxes, found.iou_preds, options.box_nms_thresh))
        removed("box_nms_thresh", len(kept) - len(found))
    timings["nms"] = timings.get("nms", 0.0) + time.perf_counter() - t
    found.filtered = filtered
    return found


def merge_crops(sets: list[MaskSet], image_size: tuple[int, int], options: Options) -> MaskSet:
    """All crops' masks, duplicates across crops removed by NMS that prefers the smaller crop."""
    merged = MaskSet.concat(sets, image_size)
    if len(sets) > 1 and len(merged):
        cb = merged.crop_boxes
        area = ((cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1])).astype(np.float32)
        merged = merged.take(box_nms(merged.boxes, np.float32(1) / area, options.crop_nms_thresh))
    return merged


def finish(sets: list[MaskSet], image_size: tuple[int, int], options: Options, family: Family,
           timings: dict) -> MaskSet:
    """The crops' masks in one set (`merge_crops`), then, for a family that does so (SAM), small holes and
    islands of the full-size masks removed (`clean_up`); SAM 2's generator removes them from the low-res
    logits instead, in `process_crop`. `timings` gets crop_merge and cleanup seconds."""
    filtered: dict[str, int] = {}
    removed = count_filtered(filtered)
    for s in sets:
        for name, n in s.filtered.items():
            removed(name, n)
    t = time.perf_counter()
    found = merge_crops(sets, image_size, options)
    removed("crop_nms_thresh", sum(map(len, sets)) - len(found))
    timings["crop_merge"] = time.perf_counter() - t
    if options.min_mask_region_area > 0 and family.full_size_cleanup:
        t = time.perf_counter()
        before = len(found)
        found = clean_up(found, options.min_mask_region_area, max(options.box_nms_thresh, options.crop_nms_thresh))
        removed("min_mask_region_area", before - len(found))
        timings["cleanup"] = time.perf_counter() - t
    found.filtered = filtered
    return found


FILTERS = ("pred_iou_thresh", "stability_score_thresh", "crop_edge", "box_nms_thresh", "crop_nms_thresh",
           "min_mask_region_area")  # in the order they apply; "crop_edge": masks cut off by a crop's inner edge


def count_filtered(filtered: dict) -> Callable[..., None]:
    """`removed(name, n=1)`: `filtered["candidates"]` counts the grid's masks, and each filter's name the masks
    it removed."""
    def removed(name: str, n: int = 1) -> None:
        if n:
            filtered[name] = filtered.get(name, 0) + int(n)
    return removed


def explain_filtered(filtered: dict) -> str:
    """Where the candidates went, for an answer with few or no masks: which filter to loosen."""
    parts = [f"{filtered[name]} by {name}" for name in FILTERS if filtered.get(name)]
    text = f"{filtered.get('candidates', 0)} candidate masks" + (f", removed {', '.join(parts)}" if parts else "")
    worst = max(FILTERS, key=lambda name: filtered.get(name, 0))
    if filtered.get(worst) and worst in ("pred_iou_thresh", "stability_score_thresh"):
        text += f"; a lower {worst} keeps more"
    return text


def remove_small_regions(mask: np.ndarray, area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (mode "holes") or drop islands ("islands") smaller than `area` pixels, 8-connected, as
    the reference does (an all-small mask keeps its largest island); returns (mask, changed)."""
    import cv2

    holes = mode == "holes"
    working = (holes ^ mask).astype(np.uint8)
    n, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[1:, -1]
    small = [i + 1 for i, s in enumerate(sizes) if s < area]
    if not small:
        return mask, False
    fill = [0] + small
    if not holes:
        fill = [i for i in range(n) if i not in fill] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def clean_up(found: MaskSet, min_area: int, nms_thresh: float) -> MaskSet:
    """Small holes and islands removed from every mask, then NMS again, unchanged masks preferred."""
    if not len(found):
        return found
    h, w = found.image_size
    scores = np.zeros(len(found), np.float32)
    new_boxes = np.zeros((len(found), 4), np.int64)
    new_rles: dict[int, bytes] = {}
    for i, counts in enumerate(found.rles):
        mask = masks.decode_rle(counts, h, w)
        mask, changed_holes = remove_small_regions(mask, min_area, "holes")
        mask, changed_islands = remove_small_regions(mask, min_area, "islands")
        scores[i] = float(not (changed_holes or changed_islands))
        new_boxes[i] = _box_of_transposed(mask.T)
        if scores[i] == 0.0:
            new_rles[i] = masks.encode_rle_transposed(np.ascontiguousarray(mask.T))
    keep = box_nms(new_boxes, scores, nms_thresh)
    boxes = found.boxes.copy()
    rles = list(found.rles)
    for i, counts in new_rles.items():
        rles[i], boxes[i] = counts, new_boxes[i]
    return MaskSet(found.image_size, rles, boxes, found.iou_preds, found.stability, found.points,
                   found.crop_boxes).take(keep)


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """The reference's uncompressed RLE counts of an (H, W) mask: column-major runs, zeros first."""
    flat = np.asarray(mask, bool).T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return runs if not flat[0] else [0] + runs


def records(found: MaskSet, output_mode: str = "binary_mask") -> list[dict]:
    """The reference generator's list of dicts, in its output mode."""
    h, w = found.image_size
    out = []
    for i, counts in enumerate(found.rles):
        rle = {"size": [h, w], "counts": counts}
        if output_mode == "coco_rle":
            segmentation = {"size": [h, w], "counts": counts.decode()}
        else:
            mask = masks.decode_rle(counts, h, w)
            segmentation = mask if output_mode == "binary_mask" else {"size": [h, w], "counts": uncompressed_counts(mask)}
        x0, y0, x1, y1 = (int(v) for v in found.boxes[i])
        cx0, cy0, cx1, cy1 = (int(v) for v in found.crop_boxes[i])
        out.append({
            "segmentation": segmentation,
            "area": masks.rle_area(rle),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "predicted_iou": float(found.iou_preds[i]),
            "point_coords": [[float(found.points[i][0]), float(found.points[i][1])]],
            "stability_score": float(found.stability[i]),
            "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
        })
    return out


class AutomaticMaskGenerator:
    """Drop-in for `segment_anything.SamAutomaticMaskGenerator` and, on a SAM 2.1 model,
    `sam2.SAM2AutomaticMaskGenerator`: the same parameters and defaults (`pred_iou_thresh` None: the model's,
    0.88 or 0.8; the last three are SAM 2's), and `generate(image)` returns the same records. A parameter
    left unset takes the model directory's recommendation where its manifest has one (the shipped tiny model:
    lower thresholds than Meta's models need), else the reference's default; `filtered` says, after a call,
    how many candidate masks each filter removed.

    `model` is a model directory or a `Predictor` (runs in this process; None = the shipped tiny model),
    or a `maskserve.Client` (runs on the service: crops go through its encoder pool and embedding store)."""

    def __init__(self, model=None, **options) -> None:
        unknown = set(options) - {f.name for f in fields(Options)}
        if unknown:
            raise TypeError(f"unknown generator parameters {sorted(unknown)}; see Options")
        self.client = model if hasattr(model, "segment_everything") else None
        family = recommended = None  # the service's model: its defaults and checks are the service's
        if self.client is None:
            from .predictor import Predictor

            self.predictor = model if isinstance(model, Predictor) else Predictor(model)
            family, recommended = self.predictor.family, self.predictor.manifest.generator
        self.given = Options(**options)  # what a service is sent: it fills the rest from its own model
        self.options = self.given.validate(max_crop_layers=8, max_points=2**24, family=family,
                                           recommended=recommended)
        self.timings: dict[str, float] = {}
        self.filtered: dict[str, int] = {}

    def generate(self, image) -> list[dict]:
        """The records for an (H, W, 3) uint8 image, or an image file's bytes or path."""
        if self.client is not None:
            found = self.client.segment_everything(image, self.given)
        else:
            from .predictor import read_image

            found = self.generate_masks(read_image(image))
        self.filtered = found.filtered
        if not len(found) and self.filtered:
            warnings.warn(f"no masks: {explain_filtered(self.filtered)}", stacklevel=2)
        return records(found, self.options.output_mode)

    def generate_masks(self, image: np.ndarray) -> MaskSet:
        """The masks as RLEs with their fields (`MaskSet`), in this process; `timings` holds seconds per stage."""
        o, p = self.options, self.predictor
        size = image.shape[:2]
        grids = o.layer_grids()
        self.timings = {}
        sets = []
        for box, layer in crop_boxes(size, o.crop_n_layers, o.crop_overlap_ratio):
            t = time.perf_counter()
            p.set_image(image[box[1]:box[3], box[0]:box[2]])
            self.timings["encode"] = self.timings.get("encode", 0.0) + time.perf_counter() - t
            sets.append(process_crop(p.model.decoder, p.manifest, p.embedding, p.prepared, box,
                                     grids[layer], size, o, timings=self.timings))
        return finish(sets, size, o, p.family, self.timings)


# help() and editors show the reference's keyword parameters, declared once in Options.
AutomaticMaskGenerator.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
     *(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in fields(Options))])
