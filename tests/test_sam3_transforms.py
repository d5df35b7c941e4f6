"""SAM 3's NumPy preprocessing against torchvision's (the reference `Sam3Processor.set_image`): the uint8
antialiased bilinear resize and the float pipeline, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskserve.engines import sam3_transforms

torch = pytest.importorskip("torch")
v2 = pytest.importorskip("torchvision.transforms.v2")

ASTRONAUT = Path(__file__).resolve().parent.parent / "maskserve" / "data" / "astronaut.jpg"
SIDE = 1008
MEAN = STD = (127.5, 127.5, 127.5)

SIZES = [
    (480, 640), (500, 700), (300, 1000),  # upscaling
    (1500, 2000), (1200, 1100), (2000, 999),  # downscaling
    (300, 2000),  # one side up, one down
    (1008, 1008),  # identity
    (1008, 500), (40, 1008),  # one axis kept: that pass is skipped
    (1, 1), (2, 3), (7, 5),  # tiny
]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _native_uint8_path():
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("torchvision resizes uint8 natively (the kernel reproduced here) only on AVX2/AVX-512")


def _random(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * 10007 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _photo(h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(ASTRONAUT).convert("RGB").resize((w, h), Image.BICUBIC))


def _torch_resize(image: np.ndarray, side: int) -> np.ndarray:
    out = v2.Resize(size=(side, side))(v2.functional.to_image(image))
    assert out.dtype == torch.uint8
    return out.permute(1, 2, 0).numpy()


def _torch_pipeline(image) -> np.ndarray:
    """Sam3Processor.set_image's transform."""
    transform = v2.Compose(
        [
            v2.ToDtype(torch.uint8, scale=True),
            v2.Resize(size=(SIDE, SIDE)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )
    return transform(v2.functional.to_image(image)).numpy()


def _mismatch(a: np.ndarray, b: np.ndarray) -> str:
    d = np.abs(a.astype(np.int64) - b.astype(np.int64))
    return f"max level difference {d.max()}, {np.mean(d > 0):.4%} of values"


@pytest.mark.parametrize("make", [_random, _photo], ids=["random", "photo"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_resize_uint8_matches_torchvision(make, size):
    image = make(*size)
    ours = sam3_transforms.resize_uint8(image, SIDE)
    ref = _torch_resize(image, SIDE)
    assert ours.shape == (SIDE, SIDE, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, ref), _mismatch(ours, ref)


@pytest.mark.parametrize("side", [2, 256, 644, 1024])  # side 1 trips an internal assert in torch 2.14's kernel
def test_resize_uint8_other_sides(side):
    for image in (_random(333, 517), _photo(900, 601)):
        ours = sam3_transforms.resize_uint8(image, side)
        ref = _torch_resize(image, side)
        assert np.array_equal(ours, ref), _mismatch(ours, ref)


@pytest.mark.parametrize("size", [(480, 640), (1500, 2000), (300, 2000), (1008, 1008), (2, 3)])
def test_preprocess_matches_reference_pipeline(size):
    from PIL import Image

    for image in (_random(*size), _photo(*size)):
        ours = sam3_transforms.preprocess(image, SIDE, MEAN, STD)
        assert ours.shape == (3, SIDE, SIDE) and ours.dtype == np.float32
        assert np.array_equal(ours, _torch_pipeline(image))
        assert np.array_equal(ours, _torch_pipeline(Image.fromarray(image)))  # set_image also takes PIL images


def test_to_float_is_a_multiplication():
    """ToDtype(float32, scale=True) is ×float32(1/255), which differs from /255 on about half the levels."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    ref = v2.ToDtype(torch.float32, scale=True)(v2.functional.to_image(levels)).numpy()
    ours = sam3_transforms.normalize(levels, (0.0,) * 3, (255.0,) * 3)
    assert np.array_equal(ours, ref)
