"""Incoming images: decode, validate, and name them by content."""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskserve import limits
from maskserve.limits import MAX_IMAGE_PIXELS as MAX_PIXELS

FORMATS = {"JPEG", "PNG", "WEBP"}
CHANNELS = {1: 3, 2: 3, 3: 4, 4: 1}  # PixelFormat → channels (RGB8, BGR8, RGBA8, GRAY8)


class ImageError(ValueError):
    """An image we cannot take; the message says why."""


IMAGE_ID = re.compile(limits.IMAGE_ID)
MAX_ID_CHARS = 64  # an image_id longer than this is refused unread (INVALID_ARGUMENT), never echoed


def image_id(payload: bytes, model_version: str, tenant: str = "") -> str:
    """Content address of an image for one model and tenant: the same bytes always get the same id, and two
    tenants sending the same bytes get different ones."""
    scope = model_version.encode() + (b"\0" + tenant.encode() if tenant else b"")
    return hashlib.sha256(scope + b"\0" + payload).hexdigest()[:32]


def canonical_payload(image) -> bytes:
    """The bytes an image is identified and queued by: the encoded file, or a small header plus raw pixels."""
    kind = image.WhichOneof("source")
    if kind == "encoded":  # "E": turned upright by its EXIF orientation; "F": the pixels as stored
        return (b"F" if image.ignore_exif_orientation else b"E") + image.encoded
    if kind == "raw":
        r = image.raw
        return _raw_payload(r.width, r.height, r.format, r.data)
    raise ImageError("the image is empty: set `encoded` (JPEG/PNG/WebP bytes) or `raw` pixels")


def _raw_payload(width: int, height: int, pixel_format: int, data: bytes) -> bytes:
    return b"R" + f"{width}x{height}x{pixel_format}:".encode() + data


def rgb_payload(rgb: np.ndarray) -> bytes:
    """The payload of (H, W, 3) uint8 RGB pixels, the same bytes as a client sending them raw (RGB8)."""
    return _raw_payload(rgb.shape[1], rgb.shape[0], 1, np.ascontiguousarray(rgb).tobytes())


def decode_payload(payload: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """`canonical_payload` bytes → (H, W, 3) uint8 RGB."""
    if payload[:1] in (b"E", b"F"):
        return decode_file(payload[1:], max_pixels, upright=payload[:1] == b"E")
    if payload[:1] == b"R":
        header, _, data = payload[1:].partition(b":")
        w, h, fmt = (int(v) for v in header.decode().split("x"))
        return _decode_raw(w, h, fmt, data, max_pixels)
    raise ImageError("unrecognised image payload")


def _check_size(w: int, h: int, max_pixels: int) -> None:
    if w == 0 or h == 0:
        raise ImageError(f"the image has zero size ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"the image is {w}x{h} = {w * h} pixels; at most {max_pixels} are accepted")


def decode_file(data: bytes, max_pixels: int = MAX_PIXELS, upright: bool = True) -> np.ndarray:
    """JPEG, PNG or WebP bytes → (H, W, 3) uint8 RGB, turned upright by EXIF as the service does."""
    if not data:
        raise ImageError("the image is empty (zero bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("the image bytes are not a JPEG, PNG or WebP file") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ... for damaged headers
        raise ImageError(f"the image bytes are not a JPEG, PNG or WebP file that can be read ({exc})") from None
    if img.format not in FORMATS:
        raise ImageError(f"{img.format} images are not supported; send JPEG, PNG or WebP")
    _check_size(img.width, img.height, max_pixels)  # before decoding pixels: no decompression bombs
    try:
        img.load()
    except Exception as exc:
        raise ImageError(f"the {img.format} file is damaged ({exc})") from None
    if upright and _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    return np.asarray(img.convert("RGB"))


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))  # EXIF Orientation
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels as stored
        return 1


def _decode_raw(w: int, h: int, fmt: int, data: bytes, max_pixels: int) -> np.ndarray:
    if fmt not in CHANNELS:
        raise ImageError("raw pixels need a pixel format: RGB8, BGR8, RGBA8 or GRAY8")
    _check_size(w, h, max_pixels)
    c = CHANNELS[fmt]
    if len(data) != w * h * c:
        raise ImageError(f"raw {w}x{h} image with {c} channels needs {w * h * c} bytes, got {len(data)}")
    a = np.frombuffer(data, np.uint8).reshape(h, w, c)
    if fmt == 2:
        a = a[..., ::-1]
    elif fmt == 3:
        a = a[..., :3]
    elif fmt == 4:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def check_fits(height: int, width: int, long_side: int) -> None:
    """Refuse an image the model cannot take: resized to `long_side` on its long side, its short side must
    keep at least one pixel (a 2×2100 image has none at 512)."""
    from maskserve.engines.transforms import resized_shape

    if min(resized_shape(height, width, long_side)) < 1:
        limit = 2 * long_side
        raise ImageError(f"the image is {width}x{height}: too elongated for the model, whose {long_side}-pixel "
                         f"input would leave its short side under one pixel; aspect ratios up to {limit}:1 "
                         "are accepted")


def image_size(payload: bytes) -> tuple[int, int]:
    """(H, W) without decoding the pixels."""
    if payload[:1] == b"R":
        w, h, _ = (int(v) for v in payload[1:].partition(b":")[0].decode().split("x"))
        return h, w
    img = Image.open(io.BytesIO(payload[1:]))
    if payload[:1] == b"E" and _orientation(img) in (5, 6, 7, 8):  # turned by a quarter
        return img.width, img.height
    return img.height, img.width
