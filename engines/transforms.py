"""SAM's pre- and post-processing in NumPy, exactly as the reference implementation does them.

One implementation serves the in-process Predictor, the encoder worker and the decoder service:
- images: longest side resized to the model input with Pillow's bilinear filter (what the reference gets
  through torchvision on a PIL image), normalised per channel, zero-padded right/bottom;
- prompts: coordinates scaled by new/old size per axis, in float64 as the reference does;
- masks: bilinear (half-pixel centres) up to the padded input, crop, bilinear to the original size.
"""

from __future__ import annotations

import numpy as np


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(new_h, new_w) with the longest side equal to `long_side`, rounded as the reference rounds."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 RGB image so its longest side is `long_side` (antialiased bilinear)."""
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], long_side)
    if (new_h, new_w) == image.shape[:2]:
        return np.ascontiguousarray(image)
    from PIL import Image  # the server's (and in-process Predictor's) only: a client never resizes images

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.BILINEAR))


def normalize_and_pad(resized: np.ndarray, long_side: int, mean, std) -> np.ndarray:
    """(h, w, 3) uint8 → (3, long_side, long_side) float32: (x − mean) / std, then zeros right and bottom."""
    h, w = resized.shape[:2]
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    out = np.zeros((3, long_side, long_side), np.float32)
    out[:, :h, :w] = ((resized.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    return out


def preprocess(image: np.ndarray, long_side: int, mean, std) -> tuple[np.ndarray, tuple[int, int]]:
    """The encoder input for one image and the resized (h, w) it occupies inside the padded square."""
    resized = resize_image(image, long_side)
    return normalize_and_pad(resized, long_side, mean, std), resized.shape[:2]


def transform_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Pixel (x, y) coordinates of the original image → coordinates in the resized input frame (float32)."""
    old_h, old_w = original_size
    new_h, new_w = resized_shape(old_h, old_w, long_side)
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords.astype(np.float32)


def transform_boxes(boxes: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """XYXY boxes of the original image → (N, 2, 2) corner points in the resized input frame."""
    return transform_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size, long_side)


def prompt_points(
    coords: np.ndarray | None, labels: np.ndarray | None, box_corners: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's sparse prompt for one mask: points first, then the box's two corners (labels 2 and 3);
    without a box, one padding point (0, 0) with label −1, exactly as the reference prompt encoder pads."""
    pts = [np.zeros((0, 2), np.float32)] if coords is None else [np.asarray(coords, np.float32).reshape(-1, 2)]
    lbl = [np.zeros((0,), np.float32)] if labels is None else [np.asarray(labels, np.float32).reshape(-1)]
    if box_corners is not None:
        pts.append(np.asarray(box_corners, np.float32).reshape(2, 2))
        lbl.append(np.array([2, 3], np.float32))
    else:
        pts.append(np.zeros((1, 2), np.float32))
        lbl.append(np.array([-1], np.float32))
    return np.concatenate(pts), np.concatenate(lbl)


def _resize_bilinear(x: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Bilinear resize of a (h, w) float32 map with half-pixel centres and no antialiasing, i.e. torch's
    `F.interpolate(mode="bilinear", align_corners=False)`; OpenCV computes the same sample positions.
    Without OpenCV (a client-only install, for `return_logits=True`) the same as two matrix products."""
    if x.shape == (height, width):  # a contiguous copy of a cropped view: later passes over a view run slower
        if out is None:
            return np.ascontiguousarray(x)
        out[...] = x
        return out
    try:
        import cv2  # the server's: a client-only install has no OpenCV
    except ModuleNotFoundError:
        result = bilinear_weights(x.shape[0], height) @ x @ bilinear_weights(x.shape[1], width).T
        if out is None:
            return result
        out[...] = result
        return out
    return cv2.resize(x, (width, height), dst=out, interpolation=cv2.INTER_LINEAR)


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32: row i holds the two weights output sample i takes, at source position
    (i + 0.5)·n_in/n_out − 0.5 clamped to the edges, as torch and OpenCV place it."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = (src - low).astype(np.float32)
    weights = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    return weights


def _low_res_read(input_size: tuple[int, int], long_side: int, side: int) -> tuple[int, int] | None:
    """The low-res (rows, columns) the upscale reads for an image that fills `input_size` of the padded
    square, or None when the square is no integral multiple of the low-res side (then it reads all).

    Upscaling by an integral s, an output pixel above row n reads low-res samples only up to ceil(n / s),
    plus the one sample bilinear reads beyond."""
    scale = long_side // side
    if scale * side != long_side:
        return None
    (ih, iw) = input_size
    return min(side, -(-ih // scale) + 1), min(side, -(-iw // scale) + 1)


def mask_extent(input_size: tuple[int, int], long_side: int, side: int) -> tuple[int, int] | None:
    """The (rows, columns) of embedding cells whose masks the upscale reads (each cell makes 4×4 low-res
    pixels): what the decoder must compute to show an image's masks; None for all of them."""
    read = _low_res_read(input_size, long_side, side)
    return None if read is None else (-(-read[0] // 4), -(-read[1] // 4))


def upscale_logits(
    low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], long_side: int,
    side: int | None = None,
) -> np.ndarray:
    """(C, m, m) low-resolution logits, or their top-left part with `side` = m, → (C, H, W) logits at the
    original image size (`upscale_map` on each)."""
    low_res = np.asarray(low_res, np.float32)
    out = np.empty((low_res.shape[0], *original_size), np.float32)
    for x, o in zip(low_res, out):
        upscale_map(x, input_size, original_size, long_side, side, out=o)
    return out


def upscale_map(
    low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int], long_side: int,
    side: int | None = None, out: np.ndarray | None = None,
) -> np.ndarray:
    """One (m, m) low-resolution logit map, or its top-left part with `side` = m, → (H, W) logits at the
    original image size: the reference's upscale to the padded square, crop to the resized image, resize
    to the original size. Only the low-res samples the crop reads are upscaled (`_low_res_read`)."""
    side = side or low_res.shape[-1]
    (ih, iw), (h, w) = input_size, original_size
    read = _low_res_read(input_size, long_side, side)
    if read is None:  # upscale the whole square
        rows, cols, square = side, side, (long_side, long_side)
    else:
        (rows, cols), scale = read, long_side // side
        square = (rows * scale, cols * scale)
    if low_res.shape[0] < rows or low_res.shape[1] < cols:
        raise ValueError(f"low-res logits {low_res.shape} lack the {(rows, cols)} samples the upscale reads")
    up = _resize_bilinear(np.ascontiguousarray(low_res[:rows, :cols], np.float32), *square)
    return _resize_bilinear(up[:ih, :iw], h, w, out=out)
