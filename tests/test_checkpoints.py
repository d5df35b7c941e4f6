"""Loading Meta-format checkpoints: what is accepted, and the message for each way a file can be wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from maskserve.build.checkpoint import CheckpointError, load_model, read_state_dict
from maskserve.build.specs import UnknownModelType, get_spec


@pytest.fixture(scope="module")
def state(tiny_checkpoint):
    return read_state_dict(tiny_checkpoint)


def test_shipped_checkpoint_is_a_raw_meta_state_dict(state):
    assert all(k.split(".")[0] in ("image_encoder", "prompt_encoder", "mask_decoder") for k in state)
    assert not any("pixel_mean" in k for k in state)


def test_loads_strictly(tiny_checkpoint):
    sam = load_model(tiny_checkpoint, "tiny")
    assert sam.image_encoder.img_size == get_spec("tiny").image_size


def test_missing_keys_are_named(state, tmp_path):
    broken = dict(state)
    del broken["mask_decoder.iou_token.weight"]
    path = tmp_path / "missing.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \(mask_decoder.iou_token.weight\)"):
        load_model(path, "tiny")


def test_misshaped_and_unexpected_keys_are_named(state, tmp_path):
    broken = dict(state)
    broken["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 3)
    broken["extra.thing"] = torch.zeros(1)
    path = tmp_path / "misshaped.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path, "tiny")
    message = str(info.value)
    assert "prompt_encoder.no_mask_embed.weight (1, 3) (expected (1, 64))" in message
    assert "unexpected keys (extra.thing)" in message


def test_wrong_model_type_hints_the_right_one(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="does not fit model type vit_b.*looks like a tiny checkpoint"):
        load_model(tiny_checkpoint, "vit_b")


def test_corrupt_and_truncated_files(tiny_checkpoint, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        load_model(garbage, "tiny")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(truncated, "tiny")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pth", "tiny")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="not a SAM state dict"):
        load_model(path, "tiny")


def test_unknown_model_type(tiny_checkpoint):
    with pytest.raises(UnknownModelType, match="unknown model type 'vit_x'; known types: vit_b, vit_l, vit_h"):
        load_model(tiny_checkpoint, "vit_x")


def test_cli_reports_the_problem(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"nonsense")
    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "build", "--out", str(tmp_path / "m"),
                          "--model-type", "vit_b", "--checkpoint", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "not a PyTorch file" in out.stderr
    assert not (tmp_path / "m").exists()
