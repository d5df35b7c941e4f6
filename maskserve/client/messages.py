"""The client's messages: images and prompts into requests, masks out of answers."""

from __future__ import annotations

import numpy as np

from maskserve.engines import masks as mask_codec
from maskserve.v1 import maskserve_pb2 as pb

from .remote_logits import RemoteLogits


def image_message(image: np.ndarray | bytes, image_format: str = "RGB") -> pb.Image:
    """An (H, W, 3) uint8 array as raw pixels, or encoded file bytes as they are."""
    if isinstance(image, (bytes, bytearray)):
        return pb.Image(encoded=bytes(image))
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got shape {image.shape} dtype {image.dtype}")
    fmt = pb.PIXEL_FORMAT_BGR8 if image_format == "BGR" else pb.PIXEL_FORMAT_RGB8
    return pb.Image(raw=pb.RawImage(width=image.shape[1], height=image.shape[0], format=fmt, data=image.tobytes()))


def prompt_message(point_coords=None, point_labels=None, box=None, mask_input=None) -> pb.Prompt:
    p = pb.Prompt()
    if point_coords is not None:
        coords = np.asarray(point_coords, np.float64).reshape(-1, 2)
        labels = np.asarray(point_labels).reshape(-1) if point_labels is not None else None
        if labels is None or len(labels) != len(coords):
            raise ValueError("point_labels must be supplied, one per point")
        for (x, y), label in zip(coords, labels):
            p.points.add(x=float(x), y=float(y), label=int(label))
    if box is not None:
        x0, y0, x1, y1 = np.asarray(box, np.float64).reshape(4)
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
