"""SAM 3's image preprocessing in NumPy, equal bit for bit to the reference `Sam3Processor.set_image`.

SAM 3 resizes the uint8 image itself (not a float copy), stretched straight to the model's square (1008²)
whatever the aspect ratio, with torchvision's antialiased bilinear `Resize`. On x86 CPUs with AVX2/AVX-512,
PyTorch runs that resize in its own fixed-point kernel: per axis, triangle-filter weights computed in float64,
rounded to int16 with a precision chosen from the largest weight; a horizontal pass, then a vertical pass,
each rounding and clamping back to uint8; an axis that keeps its size is not resampled. Pillow's bilinear
filter uses a fixed 22-bit precision and lands ±1 level away on some pixels, hence this reimplementation.
Then `ToDtype(float32, scale=True)` multiplies by float32(1/255) (not a division: the two differ on about
half of the 256 levels) and `Normalize` subtracts the mean and divides by the std, in float32.
"""

from __future__ import annotations

import math

import numpy as np


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-axis table of the resize from in_size to out_size: (out_size, K) source indices (clipped in range;
    their weight is 0 where clipped), (out_size, K) int32 weights, and their precision in bits."""
    scale = in_size / out_size  # align_corners=False, no explicit scale factor
    support = scale if scale >= 1.0 else 1.0  # bilinear: interp_size 2, widened by the scale when shrinking
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    k = int(math.ceil(support)) * 2 + 1

    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C++ casts truncate toward zero
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    xsize = np.clip(xmax - xmin, 0, k)

    j = np.arange(k, dtype=np.int64)
    idx = xmin[:, None] + j[None, :]
    x = np.abs((idx.astype(np.float64) - center[:, None] + 0.5) * invscale)
    w = np.where(x < 1.0, 1.0 - x, 0.0)
    w[j[None, :] >= xsize[:, None]] = 0.0

    total = np.zeros(out_size, np.float64)
    for c in range(k):  # summed in order, as the C++ loop does (np.sum would pair the terms differently)
        total += w[:, c]
    w = np.divide(w, total[:, None], out=w, where=total[:, None] != 0.0)

    wt_max = float(w.max())
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    wi = np.floor(0.5 + w * float(1 << precision)).astype(np.int32)  # weights are >= 0: (int)(0.5 + v)
    return np.minimum(idx, in_size - 1), wi, precision


def _resample(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One pass along axis 0 or 1 of an (H, W, C) uint8 array, as gathers on its (H, W·C) view. Sums stay
    within int32: at most 255 · 2^22 plus rounding."""
    h, w, ch = x.shape
    idx, wi, precision = _axis_weights(x.shape[axis], out_size)
    flat = x.reshape(h, w * ch)
    if axis == 1:  # tap c of output column o, channel k: flat column idx[o, c]·C + k
        idx = (idx[:, None, :] * ch + np.arange(ch)[None, :, None]).reshape(out_size * ch, -1)
        wi = np.repeat(wi, ch, axis=0)[None]
        shape = (h, out_size * ch)
    else:
        wi = wi[:, None]
        shape = (out_size, w * ch)
    acc = np.full(shape, 1 << (precision - 1), np.int32)
    tmp = np.empty(shape, np.int32)
    for c in range(idx.shape[1]):
        np.multiply(np.take(flat, idx[:, c], axis=axis), wi[..., c], out=tmp)
        acc += tmp
    acc >>= precision  # arithmetic shift: floors, as _mm_srai_epi32
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8).reshape(shape[0], -1, ch)


def resize_uint8(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (side, side, 3) uint8, equal to torchvision's `v2.Resize((side, side))`
    (bilinear, antialias=True) of the (3, H, W) uint8 tensor on an AVX2/AVX-512 CPU."""
    x = np.asarray(image)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"expected an (H, W, C) uint8 image, got {x.dtype} {x.shape}")
    if x.shape[1] != side:
        x = _resample(x, 1, side)  # horizontal first
    if x.shape[0] != side:
        x = _resample(x, 0, side)
    return np.ascontiguousarray(x)


def normalize(resized: np.ndarray, mean, std) -> np.ndarray:
    """(side, side, 3) uint8 → (3, side, side) float32: ×float32(1/255) as `ToDtype(float32, scale=True)`,
    then (x − mean) / std in float32, with mean and std given ×255 (as the manifest holds them)."""
    x = np.ascontiguousarray(resized.transpose(2, 0, 1)).astype(np.float32)
    x *= np.float32(1.0 / 255)
    mean = (np.asarray(mean, np.float64) / 255.0).astype(np.float32).reshape(-1, 1, 1)
    std = (np.asarray(std, np.float64) / 255.0).astype(np.float32).reshape(-1, 1, 1)
    x -= mean
    x /= std
    return x


def preprocess(image: np.ndarray, side: int, mean, std) -> np.ndarray:
    """The encoder input for one (H, W, 3) uint8 RGB image: (3, side, side) float32."""
    return normalize(resize_uint8(image, side), mean, std)
