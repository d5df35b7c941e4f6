"""`maskserve segment` and the demo: one image file through the service, mask and overlay written as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .client import Client

# Eileen Collins, NASA portrait (public domain), as bundled with scikit-image.
BUNDLED_PHOTO = Path(__file__).resolve().parent.parent / "maskserve" / "data" / "astronaut.jpg"


def segment_file(target: str, image_path: Path, points, box, out: Path) -> str:
    image_path = Path(image_path)
    if not image_path.is_file():
        raise ValueError(f"{image_path} does not exist")
    if not points and box is None:
        raise ValueError("give at least one --point X,Y or a --box")
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    coords = np.array([p[:2] for p in points], np.float64).reshape(-1, 2) if points else None
    labels = np.array([int(p[2]) if len(p) > 2 else 1 for p in points]) if points else None
    with Client(target) as client:
        client.set_image(image_path.read_bytes())
        masks, scores, _ = client.predict(coords, labels, np.array(box) if box is not None else None)
    best = int(np.argmax(scores))
    mask = masks[best]
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(out / "mask.png")
    overlay = rgb.astype(np.float32)
    overlay[mask] = 0.5 * overlay[mask] + 0.5 * np.array([30, 144, 255])
    for x, y in (coords if coords is not None else []):
        yy, xx = int(y), int(x)
        overlay[max(0, yy - 3):yy + 4, max(0, xx - 3):xx + 4] = (255, 40, 40)
    Image.fromarray(overlay.astype(np.uint8)).save(out / "overlay.png")
    return (f"{image_path.name}: mask {best} of {len(scores)} (predicted IoU {scores[best]:.3f}, "
            f"{int(mask.sum())} pixels) → {out / 'mask.png'}, {out / 'overlay.png'}")
