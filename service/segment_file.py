"""`maskserve segment` and the demo: one image file through the service, mask and overlay written as PNG."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from maskserve.client import Client

# Eileen Collins, NASA portrait (public domain), as bundled with scikit-image.
# Package data, found as the installed package has it (a wheel, an editable install or the source tree).
BUNDLED_PHOTO = Path(str(importlib.resources.files("maskserve") / "data" / "astronaut.jpg"))


def _upright(path: Path) -> np.ndarray:
    """The file's pixels as viewers show them (EXIF orientation applied), as the service decodes them."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:  # what Pillow raises for what it cannot read
        raise ValueError(f"{path} is not an image file that can be read (JPEG, PNG or WebP): {exc}") from None


def segment_file(target: str, image_path: Path, points, box, out: Path, **client_options) -> str:
    image_path = Path(image_path)
    if not points and box is None:
        raise ValueError("give at least one --point X,Y or a --box")
    rgb = _upright(image_path)
    coords = np.array([p[:2] for p in points], np.float64).reshape(-1, 2) if points else None
    labels = np.array([int(p[2]) if len(p) > 2 else 1 for p in points]) if points else None
    with Client(target, **client_options) as client:
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


def overlay_masks(rgb: np.ndarray, masks_in_order) -> np.ndarray:
    """Each mask in its own colour at half opacity, the largest painted first so small ones stay visible."""
    rng = np.random.default_rng(0)
    out = rgb.astype(np.float32)
    for mask in sorted(masks_in_order, key=lambda m: -int(m.sum())):
        out[mask] = 0.5 * out[mask] + 0.5 * rng.integers(40, 256, 3)
    return out.astype(np.uint8)


def segment_everything_file(image_path: Path, out: Path, options, target: str | None = None,
                            model_dir: str | None = None, progress=None, **client_options) -> str:
    """The automatic generator on an image file, through the service at `target` or in process on
    `model_dir`; writes `<name>.json` (SA-1B's annotation fields, COCO RLE) and `<name>_overlay.png`."""
    import json

    from maskserve.engines import automatic

    image_path = Path(image_path)
    rgb = _upright(image_path)
    if target is not None:
        with Client(target, **client_options) as client:
            found = client.segment_everything(image_path.read_bytes(), options, progress=progress)
    else:
        generator = automatic.AutomaticMaskGenerator(model_dir, **{**vars(options), "output_mode": "coco_rle"})
        found = generator.generate_masks(rgb)
    records = automatic.records(found, "coco_rle")
    h, w = found.image_size
    doc = {"image": {"file_name": image_path.name, "width": w, "height": h},
           "annotations": [{"id": i, **r} for i, r in enumerate(records)]}
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{image_path.stem}.json", out / f"{image_path.stem}_overlay.png"
    json_path.write_text(json.dumps(doc))
    from maskserve.engines.masks import decode_rle

    Image.fromarray(overlay_masks(rgb, (decode_rle(c, h, w) for c in found.rles))).save(png_path)
    return f"{image_path.name}: {len(records)} masks → {json_path}, {png_path}"
