"""SAM 2.1's pre- and post-processing in NumPy, as the official `SAM2ImagePredictor` does them.

- images: to [0, 1] floats (`ToTensor`), resized straight to the model's square (1024²) whatever the aspect
  ratio, with torchvision's antialiased bilinear resize on the float image (`Resize` on a tensor antialiases
  by default; Pillow's float-mode bilinear filter computes the same thing), normalised by ImageNet's mean and
  std; no padding;
- prompts: x / W and y / H of the original image, ×1024, in float32; a box's two corners come first (labels 2
  and 3), then the points, then always one padding point (0, 0) with label −1;
- single-mask answers: token 0, unless its stability (the IoU of its low-res logits thresholded at ±0.05) is
  under 0.98, then the multimask token with the highest predicted IoU (`select_single_mask`);
- masks: the 256² low-res logits bilinearly resized straight to the original size (half-pixel centres, no
  antialiasing), > 0; the returned low-res logits are clamped to ±32, the masks come from the unclamped ones.
  The predictor's default `max_hole_area` and `max_sprinkle_area` are 0: no hole filling, no sprinkle removal;
  SAM 2's automatic generator sets both to its `min_mask_region_area` (`fill_holes_and_sprinkles`).
"""

from __future__ import annotations

import numpy as np

STABILITY_DELTA = 0.05  # build_sam2's dynamic_multimask_stability_delta
STABILITY_THRESHOLD = 0.98  # dynamic_multimask_stability_thresh
LOGITS_LIMIT = 32.0  # SAM2ImagePredictor clamps the low-res logits it returns to ±32


def resize_image(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (3, side, side) float32 in [0, 1]: ToTensor, then an antialiased bilinear
    resize of each channel (per axis: a triangle filter widened by the scale when shrinking)."""
    from PIL import Image

    x = np.asarray(image, np.float32) / np.float32(255.0)
    if x.shape[:2] == (side, side):
        return np.ascontiguousarray(x.transpose(2, 0, 1))
    out = np.empty((3, side, side), np.float32)
    for c in range(3):
        channel = Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F")
        out[c] = np.asarray(channel.resize((side, side), Image.BILINEAR))
    return out


def normalize(resized: np.ndarray, mean, std) -> np.ndarray:
    """(3, S, S) in [0, 1] → (x − mean) / std, with mean and std given ×255 (as the manifest holds them)."""
    mean = (np.asarray(mean, np.float64) / 255.0).astype(np.float32).reshape(3, 1, 1)
    std = (np.asarray(std, np.float64) / 255.0).astype(np.float32).reshape(3, 1, 1)
    return (resized - mean) / std


def preprocess(image: np.ndarray, side: int, mean, std) -> np.ndarray:
    """The encoder input for one (H, W, 3) uint8 RGB image: (3, side, side) float32."""
    return normalize(resize_image(image, side), mean, std)


def transform_coords(coords: np.ndarray, original_size: tuple[int, int], side: int) -> np.ndarray:
    """Pixel (x, y) coordinates of the original image → the input frame: float32 x / W · side, y / H · side."""
    h, w = original_size
    c = np.array(coords, dtype=np.float32, copy=True)
    c[..., 0] = c[..., 0] / np.float32(w)
    c[..., 1] = c[..., 1] / np.float32(h)
    return c * np.float32(side)


def transform_boxes(boxes: np.ndarray, original_size: tuple[int, int], side: int) -> np.ndarray:
    """XYXY boxes → (N, 2, 2) corner points in the input frame."""
    return transform_coords(np.asarray(boxes, np.float32).reshape(-1, 2, 2), original_size, side)


def prompt_points(coords: np.ndarray | None, labels: np.ndarray | None,
                  box_corners: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's sparse prompt: the box's corners first (labels 2, 3), the points, one padding point."""
    pts, lbl = [], []
    if box_corners is not None:
        pts.append(np.asarray(box_corners, np.float32).reshape(2, 2))
        lbl.append(np.array([2, 3], np.float32))
    if coords is not None:
        pts.append(np.asarray(coords, np.float32).reshape(-1, 2))
        lbl.append(np.asarray(labels, np.float32).reshape(-1))
    pts.append(np.zeros((1, 2), np.float32))
    lbl.append(np.array([-1], np.float32))
    return np.concatenate(pts), np.concatenate(lbl)


def stability_scores(logits: np.ndarray, delta: float = STABILITY_DELTA) -> np.ndarray:
    """(..., M, M) logits → (...) float32: pixels > delta over pixels > −delta (1 where none is > −delta)."""
    flat = logits.reshape(*logits.shape[:-2], -1)
    inter = np.count_nonzero(flat > np.float32(delta), axis=-1).astype(np.float32)
    union = np.count_nonzero(flat > np.float32(-delta), axis=-1).astype(np.float32)
    return np.where(union > 0, inter / np.maximum(union, np.float32(1)), np.float32(1.0)).astype(np.float32)


def single_mask_tokens(iou: np.ndarray, low_res: np.ndarray) -> np.ndarray:
    """(B,) the mask token SAM 2.1 answers a single-mask prompt with: 0 where token 0's logits are stable,
    else the multimask token (1–3) of the highest predicted IoU (the first of equals). iou: (B, 4),
    low_res: (B, 4, M, M)."""
    stable = stability_scores(low_res[:, 0]) >= np.float32(STABILITY_THRESHOLD)
    return np.where(stable, 0, 1 + np.argmax(iou[:, 1:], axis=-1))


def select_single_mask(iou: np.ndarray, low_res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All four tokens' (iou (B, 4), low_res (B, 4, M, M)) → the single-mask answer's (B, 1), (B, 1, M, M)."""
    token = single_mask_tokens(iou, low_res)
    rows = np.arange(len(token))
    return iou[rows, token][:, None], low_res[rows, token][:, None]


def clamp_logits(low_res: np.ndarray) -> np.ndarray:
    """The low-res logits as SAM2ImagePredictor returns them (and takes back as mask_input): within ±32."""
    return np.clip(low_res, -LOGITS_LIMIT, LOGITS_LIMIT)


def fill_holes_and_sprinkles(low_res: np.ndarray, max_area: int, max_sprinkle_area: int | None = None) -> np.ndarray:
    """One (M, M) low-res logit map with its holes (8-connected regions ≤ 0) of at most `max_area` cells and
    its sprinkles (8-connected regions > 0) of at most `max_sprinkle_area` (None: `max_area`; 0: none) set to
    +10 and −10, as `SAM2Transforms.postprocess_masks` does before upscaling when the predictor has
    `max_hole_area` / `max_sprinkle_area` (both found on the map as given). Its CUDA labelling is 8-connected;
    without sam2's CUDA extension the reference skips this step."""
    import cv2

    def small(region: np.ndarray, area: int) -> np.ndarray:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
        is_small = stats[:, cv2.CC_STAT_AREA] <= area
        is_small[0] = False  # the other side
        return is_small[labels]

    low_res = np.asarray(low_res, np.float32)
    sprinkle_area = max_area if max_sprinkle_area is None else max_sprinkle_area
    holes = small(low_res <= 0.0, max_area) if max_area > 0 else np.zeros(low_res.shape, bool)
    sprinkles = small(low_res > 0.0, sprinkle_area) if sprinkle_area > 0 else np.zeros(low_res.shape, bool)
    if not holes.any() and not sprinkles.any():
        return low_res
    return np.where(holes, np.float32(10.0), np.where(sprinkles, np.float32(-10.0), low_res))


def upscale_map(low_res: np.ndarray, original_size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """One (M, M) low-res logit map → (H, W) logits: bilinear, half-pixel centres, no antialiasing (torch's
    `F.interpolate(mode="bilinear", align_corners=False)`), by SAM's resize in `transforms` (OpenCV, or its
    matrix form on a client-only install)."""
    from .transforms import _resize_bilinear

    return _resize_bilinear(np.ascontiguousarray(low_res, np.float32), *original_size, out=out)


def upscale_logits(low_res: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """(C, M, M) low-res logits → (C, H, W) logits at the original image size."""
    low_res = np.asarray(low_res, np.float32)
    out = np.empty((low_res.shape[0], *original_size), np.float32)
    for x, o in zip(low_res, out):
        upscale_map(x, original_size, out=o)
    return out
