"""The client's messages: images and prompts into requests, masks out of answers."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from maskserve.engines import masks as mask_codec
from maskserve.limits import IMAGE_ID
from maskserve.v1 import maskserve_pb2 as pb

from .remote_logits import RemoteLogits


def image_input(image):
    """What every image argument takes: an (H, W, 3) uint8 array, an image file's bytes (JPEG, PNG, WebP), or
    a file's path (str or os.PathLike) → the array or the bytes."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image file {str(image)!r}" + (
                " (an image_id names an image only where the call takes one)" if is_image_id(image) else ""))
        return path.read_bytes()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"expected an (H, W, 3) uint8 image array, an image file's bytes or its path; got an "
                         f"array of shape {image.shape} dtype {image.dtype}")
    return image


def is_image_id(value) -> bool:
    return isinstance(value, str) and re.fullmatch(IMAGE_ID, value) is not None


def image_message(image, image_format: str = "RGB") -> pb.Image:
    """An (H, W, 3) uint8 array as raw pixels, or a file's bytes (given, or read from its path) as they are."""
    image = image_input(image)
    if isinstance(image, bytes):
        return pb.Image(encoded=image)
    image = np.ascontiguousarray(image)
    fmt = pb.PIXEL_FORMAT_BGR8 if image_format == "BGR" else pb.PIXEL_FORMAT_RGB8
    return pb.Image(raw=pb.RawImage(width=image.shape[1], height=image.shape[0], format=fmt, data=image.tobytes()))


def prompt_message(point_coords=None, point_labels=None, box=None, mask_input=None) -> pb.Prompt:
    p = pb.Prompt()
    if point_coords is not None:
        coords = np.asarray(point_coords, np.float64)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise ValueError(f"point_coords must have shape (N, 2): x, y pixels per point; got shape {coords.shape}")
        labels = np.asarray(point_labels).reshape(-1) if point_labels is not None else None
        if labels is None or len(labels) != len(coords):
            raise ValueError(f"point_labels must be given, one per point ({len(coords)}): 1 foreground, 0 "
                             "background")
        for (x, y), label in zip(coords, labels):
            p.points.add(x=float(x), y=float(y), label=int(label))
    if box is not None:
        box = np.asarray(box, np.float64)
        if box.size != 4:
            raise ValueError(f"box must be 4 numbers x0, y0, x1, y1; got shape {box.shape}")
        x0, y0, x1, y1 = box.reshape(4)
        p.box.x0, p.box.y0, p.box.x1, p.box.y1 = x0, y0, x1, y1
    index = mask_input.mask_index() if isinstance(mask_input, RemoteLogits) else None
    if index is not None:
        p.mask_from.handle, p.mask_from.output_index = mask_input.handle, index
    elif mask_input is not None:
        m = np.asarray(mask_input, "<f4")
        p.mask_input.side = m.shape[-1]
        p.mask_input.data = m.tobytes()
    return p


def decode_mask(m: pb.Mask) -> np.ndarray:
    kind = m.WhichOneof("data")
    if kind == "rle":
        return mask_codec.decode_rle(m.rle.counts, m.height, m.width)
    if kind == "png":
        return mask_codec.decode_png(m.png)
    if kind == "bitmap":
        return mask_codec.decode_bitmap(m.bitmap, m.height, m.width)
    raise ValueError("this mask was returned without pixels (MASK_FORMAT_NONE)")
