"""Shared, expensive fixtures: the shipped tiny model; seeded random full-size vit_b, vit_t and SAM 2.1 in their
publishers' formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_CHECKPOINT = REPO / "maskserve" / "models" / "sam_tiny.pth"
TINY_MODEL_DIR = REPO / "maskserve" / "models" / "tiny"

_report: list[str] = []


def report(line: str) -> None:
    """A line for the end-of-run summary (parity worst cases and other measured figures)."""
    _report.append(line)


def metric(port: int, name: str) -> float:
    """The sum of a process's /metrics samples whose line starts with `name` (a name, or name{labels})."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def pytest_terminal_summary(terminalreporter):
    if _report:
        terminalreporter.section("maskserve measurements")
        for line in _report:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return TINY_MODEL_DIR


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return TINY_CHECKPOINT


@pytest.fixture(scope="session")
def vit_b_random(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, ONNX model directory) of a full-size vit_b with seeded random weights."""
    import torch

    from maskserve.build.builder import build_model_dir
    from maskserve.build.checkpoint import build_model
    from maskserve.build.specs import get_spec

    root = tmp_path_factory.mktemp("vit_b")
    torch.manual_seed(0)
    checkpoint = root / "sam_vit_b_random.pth"
    torch.save(build_model(get_spec("vit_b")).state_dict(), checkpoint)
    model_dir = root / "model"
    build_model_dir(checkpoint, "vit_b", model_dir)
    return checkpoint, model_dir


@pytest.fixture(scope="session")
def vit_t_random(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, ONNX model directory) of MobileSAM's vit_t with seeded random weights
    (`mobile_sam_export.seeded_random_model`) in its authors' format, a whole-model state dict, built with
    `maskserve build`."""
    import subprocess
    import sys

    import torch

    from maskserve.build.mobile_sam_export import seeded_random_model

    root = tmp_path_factory.mktemp("vit_t")
    checkpoint = root / "mobile_sam_random.pt"
    torch.save(seeded_random_model().state_dict(), checkpoint)
    model_dir = root / "model"
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "build", "--model-type", "vit_t",
                          "--checkpoint", str(checkpoint), "--out", str(model_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return checkpoint, model_dir


# SAM 3 scaled down for the fast suite: the package's own design with a 256-wide, 4-block ViT (every block global,
# as the quarter rule gives: build/sam3_export.Sam3Architecture), a 2-layer text encoder, and a detector with one
# fusion-encoder layer and two decoder layers (Meta's: 6 and 6; the decoder's box refinement runs between
# layers, so two exercise it). The full-size case in test_sam3 runs Meta's architecture.
SAM3_SMALL = dict(vit_dim=256, vit_depth=4, vit_mlp=1184, text_width=256, text_layers=2, fusion_layers=1,
                  decoder_layers=2)


@pytest.fixture(scope="session")
def sam3_random(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, ONNX model directory) of a scaled-down SAM 3 with seeded random weights in Meta's format
    (`sam3_export.seeded_random_checkpoint`), built with `maskserve build`."""
    import subprocess
    import sys

    from maskserve.build.sam3_export import Sam3Architecture, seeded_random_checkpoint

    root = tmp_path_factory.mktemp("sam3")
    checkpoint = seeded_random_checkpoint(root / "sam3_small.pt", Sam3Architecture(**SAM3_SMALL))
    model_dir = root / "model"
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "build", "--model-type", "sam3",
                          "--checkpoint", str(checkpoint), "--out", str(model_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return checkpoint, model_dir


# SAM 2.1's seeded random checkpoint: two mask tokens' hypernetwork outputs are scaled so that its masks' logits
# exercise what the reference does with them. At init scale token 0's logits are all within a few tenths of
# zero, so every single-mask answer would be unstable and fall back to a multimask token; ×30 puts its
# stability on both sides of the 0.98 threshold across prompts. ×400 on token 3 takes its logits past ±32,
# where the returned low-res logits are clamped but the masks are not.
SAM2_TOKEN_SCALES = {0: 30.0, 3: 400.0}
# Its object-score head (read by video tracking only) at init scale answers about +0.1…0.2 everywhere: every
# object always visible. Scaled ×40 about 0.19, the scores fall on both sides of 0 across objects and frames,
# so tracking exercises what the reference does with absent objects (masks, pointers, memories).
SAM2_OBJECT_SCORE = (40.0, 0.19)


def sam2_random(tmp_path_factory, model_type: str) -> tuple[Path, Path]:
    """(checkpoint, ONNX model directory) of a SAM 2.1 model type with seeded random weights, saved in Meta's
    format {"model": state_dict} and built with `maskserve build`."""
    import subprocess
    import sys

    import torch

    from maskserve.build.sam2_checkpoint import INSTALL, build_sam2_model
    from maskserve.build.specs import get_spec

    try:
        import sam2  # noqa: F401
    except ImportError:
        pytest.fail(f"the SAM 2.1 tests need Meta's sam2 package: {INSTALL} (make setup installs it)")
    root = tmp_path_factory.mktemp("sam2")
    torch.manual_seed(0)
    state = build_sam2_model(get_spec(model_type)).state_dict()
    for token, scale in SAM2_TOKEN_SCALES.items():
        for part in ("weight", "bias"):
            state[f"sam_mask_decoder.output_hypernetworks_mlps.{token}.layers.2.{part}"] *= scale
    scale, centre = SAM2_OBJECT_SCORE
    state["sam_mask_decoder.pred_obj_score_head.layers.2.weight"] *= scale
    state["sam_mask_decoder.pred_obj_score_head.layers.2.bias"] = (
        state["sam_mask_decoder.pred_obj_score_head.layers.2.bias"] - centre) * scale
    checkpoint = root / f"{model_type}_random.pt"
    torch.save({"model": state}, checkpoint)
    model_dir = root / "model"
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "build", "--model-type", model_type,
                          "--checkpoint", str(checkpoint), "--out", str(model_dir)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return checkpoint, model_dir


@pytest.fixture(scope="session")
def sam2_tiny_random(tmp_path_factory) -> tuple[Path, Path]:
    """sam2.1_hiera_tiny with seeded random weights (`sam2_random`)."""
    return sam2_random(tmp_path_factory, "sam2.1_hiera_tiny")


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photographs bundled with scikit-image, in several non-square, small and elongated shapes."""
    from skimage import data

    coffee, chelsea, rocket, astronaut = data.coffee(), data.chelsea(), data.rocket(), data.astronaut()
    return {
        "coffee_400x600": coffee,
        "chelsea_300x451": chelsea,
        "rocket_427x640": rocket,
        "astronaut_512x512": astronaut,
        "small_23x41": np.ascontiguousarray(chelsea[100:123, 200:241]),
        "wide_18x600": np.ascontiguousarray(coffee[200:218]),
        "tall_640x25": np.ascontiguousarray(rocket[:, 300:325]),
    }


@pytest.fixture(scope="session")
def video_frames() -> list[np.ndarray]:
    """tests/video.py's clip: moving, occluding and leaving objects, 8 JPEG-decoded frames of 320×240."""
    from video import clip

    return clip()


@pytest.fixture(scope="session")
def video_reference(sam2_tiny_random, video_frames, tmp_path_factory) -> dict:
    """SAM2VideoPredictor's answers through tests/video.py's scenario, on the SAM 2.1 random weights."""
    from maskserve.build.specs import get_spec
    from maskserve.engines.model_dir import Manifest
    from video import SCENARIO, run_reference

    checkpoint, model_dir = sam2_tiny_random
    m = Manifest.load(model_dir)
    return run_reference(checkpoint, get_spec("sam2.1_hiera_tiny").config, video_frames, SCENARIO,
                         tmp_path_factory.mktemp("clip"), m.pixel_mean, m.pixel_std)
