"""`maskserve segment` and the demo: one image file through the service; the best mask, an overlay that shows
the prompt, optionally every candidate mask, and a JSON summary, written to a folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from maskserve.bundled import demo_photo
from maskserve.client import Client, decode_mask, prompt_message
from maskserve.v1 import maskserve_pb2 as pb

# Eileen Collins, NASA portrait (public domain), as bundled with scikit-image: the source tree's, else the
# `maskserve-tiny` distribution's that the `server` extra installs (maskserve/bundled.py).
BUNDLED_PHOTO = demo_photo()

# The overlay's colours (RGB), as SAM's notebooks draw prompts: foreground clicks and the box green,
# background clicks red; the mask blue at half opacity.
MASK_COLOUR = (30, 144, 255)
FOREGROUND = (40, 220, 40)
BACKGROUND = (255, 40, 40)
BOX_COLOUR = (40, 220, 40)


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


def draw_overlay(rgb: np.ndarray, mask: np.ndarray, points=(), box=None) -> Image.Image:
    """The mask blended over the photo, then the prompt on top, so a wrong click or box is visible at once."""
    blended = rgb.astype(np.float32)
    blended[mask] = 0.5 * blended[mask] + 0.5 * np.array(MASK_COLOUR, np.float32)
    image = Image.fromarray(blended.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if box is not None:
        draw.rectangle([round(v) for v in box], outline=BOX_COLOUR, width=2)
    for p in points:
        x, y = p[0], p[1]
        colour = BACKGROUND if len(p) > 2 and int(p[2]) == 0 else FOREGROUND
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour, outline=(255, 255, 255), width=2)
    return image


def segment_file(target: str, image_path: Path, points, box, out: Path, *, all_masks: bool = False,
                 summary_path: Path | str | None = None, **client_options) -> str:
    """Writes mask.png (the best candidate), overlay.png and summary.json (or `summary_path`; "-" prints it);
    with `all_masks`, mask_1.png ... for every candidate. Returns what a person reads: masks counted from 1."""
    image_path, out = Path(image_path), Path(out)
    if not points and box is None:
        raise ValueError("give at least one --point X,Y or a --box")
    rgb = _upright(image_path)
    coords = np.array([p[:2] for p in points], np.float64).reshape(-1, 2) if points else None
    labels = np.array([int(p[2]) if len(p) > 2 else 1 for p in points]) if points else None
    with Client(target, **client_options) as client:
        client.set_image(image_path.read_bytes())
        # The call itself rather than `predict`: the answer's stability scores, boxes, areas and model version
        # are the summary's, and `predict` (SamPredictor's three arrays) has no place for them.
        request = pb.SegmentPromptRequest(image_id=client.image_id,
                                          prompts=[prompt_message(coords, labels, box)],
                                          options=pb.OutputOptions(mask_format=client.mask_format))
        response = client.stub.SegmentPrompt(request, timeout=client.timeout, metadata=client.metadata)
    found = list(response.results[0].masks)
    masks = [decode_mask(m) for m in found]
    best = int(np.argmax([m.predicted_iou for m in found]))

    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(masks[best]).save(out / "mask.png")
    draw_overlay(rgb, masks[best], points, box).save(out / "overlay.png")
    written = [out / "mask.png", out / "overlay.png"]
    records = []
    for n, (m, pixels) in enumerate(zip(found, masks), 1):
        name = None
        if all_masks:
            name = f"mask_{n}.png"
            Image.fromarray(pixels).save(out / name)
            written.append(out / name)
        records.append({"mask": n, "output_index": m.output_index, "best": n == best + 1,
                        "predicted_iou": round(float(m.predicted_iou), 6),
                        "stability_score": round(float(m.stability_score), 6),
                        "bbox_xywh": [m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height], "area": int(m.area),
                        "file": name or ("mask.png" if n == best + 1 else None)})
    summary = {"image": image_path.name, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
               "image_id": response.image_id or client.image_id, "model_version": response.model_version,
               "prompt": {"points": [[float(v) for v in p[:2]] + [int(p[2]) if len(p) > 2 else 1] for p in points],
                          "box": [float(v) for v in box] if box is not None else None},
               "best_mask": best + 1, "masks": records, "folder": str(out),
               "files": {"mask": "mask.png", "overlay": "overlay.png"}}
    # Indented for people, with each list of numbers (a point, a box) kept on one line.
    text = re.sub(r"\[\s+([-\d.,\s]+?)\s+\]", lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]",
                  json.dumps(summary, indent=2)) + "\n"
    if summary_path == "-":
        print(text, end="")
    else:
        summary_path = Path(summary_path) if summary_path else out / "summary.json"
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(text)
        written.append(summary_path)

    b = found[best]
    lines = [f"{image_path.name}: mask {best + 1} of {len(found)} is the best (predicted IoU {b.predicted_iou:.3f}, "
             f"stability {b.stability_score:.3f}, {int(b.area)} pixels) → {', '.join(map(str, written))}"]
    if all_masks:
        lines += [f"  mask {r['mask']} of {len(found)}: predicted IoU {r['predicted_iou']:.3f}, stability "
                  f"{r['stability_score']:.3f}, {r['area']} pixels, box {r['bbox_xywh']} (XYWH) → {out / r['file']}"
                  for r in records]
    return "\n".join(lines)


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
    from maskserve.engines import automatic

    image_path = Path(image_path)
    rgb = _upright(image_path)
    if target is not None:
        with Client(target, **client_options) as client:
            found = client.segment_everything(image_path.read_bytes(), options, progress=progress)
    else:
        given = {k: v for k, v in vars(options).items() if v is not None}
        generator = automatic.AutomaticMaskGenerator(model_dir, **{**given, "output_mode": "coco_rle"})
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
    why = f" ({automatic.explain_filtered(found.filtered)})" if not records and found.filtered else ""
    return f"{image_path.name}: {len(records)} masks{why} → {json_path}, {png_path}"


def segment_concept_file(image_path: Path, phrases: list[str], exemplars: list, out: Path, threshold=None,
                         target: str | None = None, model_dir: str | None = None, **client_options) -> str:
    """SegmentConcept on an image file, through the service at `target` or in process on `model_dir`; writes
    `<name>.json` (COCO: one category per phrase, RLE masks, XYWH boxes, scores) and `<name>_overlay.png`."""
    from maskserve.engines import masks as codec

    image_path = Path(image_path)
    rgb = _upright(image_path)
    h, w = rgb.shape[:2]
    if target is not None:
        with Client(target, **client_options) as client:
            answers = [(a.phrase, a.boxes, a.scores, a.masks) for a in client.segment_concept(
                phrases, exemplars, image=image_path.read_bytes(), confidence_threshold=threshold)]
    else:
        from maskserve.concepts import ConceptSegmenter
        from maskserve.engines.concepts import Exemplar

        segmenter = ConceptSegmenter(model_dir, confidence_threshold=threshold)
        predictor = segmenter.predictor
        predictor.set_image(rgb)
        found = segmenter.model.segment(predictor.get_image_arrays(), (h, w), phrases or [None],
                                        [Exemplar(np.asarray(b, np.float64), p) for b, p in exemplars],
                                        segmenter.confidence_threshold)
        answers = [(p, f.boxes, f.scores, f.masks((h, w))) for p, f in zip(phrases or [None], found)]
    categories, annotations, lines, drawn = [], [], [], []
    for c, (phrase, boxes, scores, found_masks) in enumerate(answers, start=1):
        name = phrase or "exemplars"
        categories.append({"id": c, "name": name})
        for box, score, mask in zip(boxes, scores, found_masks):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": 1, "category_id": c,
                                "segmentation": {"size": [h, w], "counts": codec.encode_rle_transposed(
                                    np.ascontiguousarray(mask.T)).decode()},
                                "area": int(mask.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score),
                                "iscrowd": 0})
            drawn.append(mask)
        lines.append(f"  {name}: {len(scores)} instances" + (f", scores {float(scores.max()):.3f} best"
                                                               if len(scores) else ""))
    doc = {"images": [{"id": 1, "file_name": image_path.name, "width": w, "height": h}],
           "categories": categories, "annotations": annotations}
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{image_path.stem}.json", out / f"{image_path.stem}_overlay.png"
    json_path.write_text(json.dumps(doc))
    overlay = Image.fromarray(overlay_masks(rgb, drawn))
    draw = ImageDraw.Draw(overlay)
    for box, positive in exemplars:
        draw.rectangle([round(v) for v in box], outline=BOX_COLOUR if positive else BACKGROUND, width=2)
    overlay.save(png_path)
    return "\n".join([f"{image_path.name} → {json_path}, {png_path}", *lines])
