"""Procedural scenes for training and evaluating the tiny model: overlapping textured shapes on textured ground.

Each scene is an RGB uint8 image plus the visible mask of every shape (later shapes occlude earlier ones).
NumPy and OpenCV only, so the evaluation runs on the serving stack without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: list[np.ndarray]  # visible part of each object, (H, W) bool, only objects large enough to prompt


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A float32 (H, W, 3) texture: flat, gradient, stripes, checks or smooth noise between two colours."""
    a, b = _colour(rng), _colour(rng)
    kind = rng.integers(0, 5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        t = np.zeros((h, w), np.float32)
    elif kind == 1:
        angle = rng.uniform(0, np.pi)
        t = (xx * np.cos(angle) + yy * np.sin(angle))
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    elif kind == 2:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif kind == 3:
        cell = int(rng.integers(4, 20))
        t = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
    else:
        small = rng.random((max(2, h // 16), max(2, w // 16)), dtype=np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    strength = rng.uniform(0.2, 1.0) if kind else 0.0
    t = t * strength
    out = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    noise = rng.normal(0, rng.uniform(0, 12), size=(h, w, 1)).astype(np.float32)
    return out + noise


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    short = min(h, w)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    r = rng.uniform(0.08, 0.3) * short
    kind = rng.integers(0, 4)
    if kind == 0:
        axes = (int(r), int(r * rng.uniform(0.4, 1.0)))
        cv2.ellipse(m, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        box = ((float(cx), float(cy)), (float(2 * r), float(2 * r * rng.uniform(0.3, 1.0))), float(rng.uniform(0, 90)))
        cv2.fillPoly(m, [cv2.boxPoints(box).astype(np.int32)], 1)
    elif kind == 2:
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = r * rng.uniform(0.6, 1.2, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(m, [pts.astype(np.int32)], 1)
    else:
        n = int(rng.integers(5, 8))
        angles = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + rng.uniform(0, np.pi)
        radii = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.4, 0.7))
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(m, [pts.astype(np.int32)], 1)
    return m.astype(bool)


def make_scene(rng: np.random.Generator, h: int, w: int, min_area_fraction: float = 0.01) -> Scene:
    image = _texture(rng, h, w)
    owner = np.full((h, w), -1, np.int32)
    n = int(rng.integers(3, 7))
    for i in range(n):
        m = _shape_mask(rng, h, w)
        image[m] = _texture(rng, h, w)[m]
        owner[m] = i
    image = np.clip(image, 0, 255).astype(np.uint8)
    min_area = min_area_fraction * h * w
    masks = []
    for i in range(n):
        m = owner == i
        # Keep objects that are large enough and of one piece: a point prompt names a connected region.
        if m.sum() < min_area:
            continue
        count, labels = cv2.connectedComponents(m.astype(np.uint8))
        if count > 2:
            sizes = np.bincount(labels.ravel())[1:]
            m = labels == (1 + int(sizes.argmax()))
            if m.sum() < min_area:
                continue
        masks.append(m)
    return Scene(image, masks)


def centre_point(mask: np.ndarray) -> np.ndarray:
    """The pixel of the mask farthest from its border, as (x, y): the natural single click for an object."""
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return np.array([x, y], np.float32)


def random_size(rng: np.random.Generator, long_side: int, min_ratio: float = 0.6) -> tuple[int, int]:
    short = int(long_side * rng.uniform(min_ratio, 1.0))
    return (long_side, short) if rng.random() < 0.5 else (short, long_side)
