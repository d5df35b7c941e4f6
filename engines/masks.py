"""Masks as the API returns them: COCO RLE, PNG or packed bits, with area, box and stability score."""

from __future__ import annotations

import io

import numpy as np
from pycocotools import mask as coco_mask

STABILITY_OFFSET = 1.0


def stability_score(logits: np.ndarray, offset: float = STABILITY_OFFSET) -> float:
    """IoU of the mask at threshold +offset with the mask at −offset (SAM's stability score)."""
    inner = np.count_nonzero(logits > offset)
    outer = np.count_nonzero(logits > -offset)
    return float(inner / outer) if outer else 0.0


def bbox_xywh(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0, 0, 0, 0
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def encode_rle_transposed(mask_t: np.ndarray) -> bytes:
    """COCO compressed RLE counts (pycocotools) of an (H, W) mask given transposed, (W, H): its memory
    already is the column-major layout that pycocotools reads, so no copy is made."""
    column_major = np.ascontiguousarray(mask_t).view(np.uint8).T[:, :, None]
    return coco_mask.encode(column_major)[0]["counts"]


def rle_area(rle: dict) -> int:
    """Pixels in a COCO RLE ({"size": [h, w], "counts": bytes})."""
    return int(coco_mask.area(rle))


def decode_rle(counts: bytes, height: int, width: int) -> np.ndarray:
    return coco_mask.decode({"size": [height, width], "counts": counts}).astype(bool)


def encode_png(mask: np.ndarray) -> bytes:
    from PIL import Image  # PNG masks only: the client needs no Pillow for RLE or bits

    out = io.BytesIO()
    Image.fromarray(mask).convert("1").save(out, format="PNG", optimize=False)
    return out.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 0


def encode_bitmap(mask: np.ndarray) -> bytes:
    return np.packbits(mask, axis=None).tobytes()


def decode_bitmap(data: bytes, height: int, width: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, np.uint8), count=height * width).reshape(height, width).view(bool)
