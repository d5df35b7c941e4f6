"""Shared, expensive fixtures: the shipped tiny model, a seeded random full-size vit_b in Meta's format."""

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
