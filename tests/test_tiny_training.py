"""The tiny model's trainer: its recipe's stages change the input size, and its loss reads coverage maps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from maskserve.build.checkpoint import build_model  # noqa: E402
from maskserve.build.specs import get_spec  # noqa: E402
from maskserve.build.tiny import train  # noqa: E402

SPEC = get_spec("tiny")
SMALL = replace(SPEC, image_size=SPEC.image_size // 2)  # the recipe's early stages


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny-training") / "small.pth"
    torch.save(build_model(SMALL).state_dict(), path)
    return path


def test_a_checkpoint_of_another_input_size_is_resampled(small_checkpoint):
    state = torch.load(small_checkpoint, weights_only=True)
    model = build_model(SPEC)
    resized = train._resized(state, model.state_dict())
    model.load_state_dict(resized)  # strictly
    grid = SPEC.embedding_size
    assert resized["image_encoder.pos_embed"].shape == (1, grid, grid, SPEC.encoder_embed_dim)
    # A constant embedding stays constant: resampling moves positions, it does not invent content.
    flat = {**state, "image_encoder.pos_embed": torch.full_like(state["image_encoder.pos_embed"], 0.25)}
    assert torch.allclose(train._resized(flat, model.state_dict())["image_encoder.pos_embed"], torch.tensor(0.25))
    state["mask_decoder.iou_token.weight"] = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="iou_token"):
        train._resized(state, model.state_dict())


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bfloat16-autocast"])
def test_training_steps_write_a_loadable_checkpoint(small_checkpoint, tmp_path, bf16):
    out = tmp_path / "grown.pth"
    # Scenes drawn in this process: forking a worker from pytest, which runs gRPC and ONNX Runtime
    # threads by now, can hang the child.
    train.train(2, str(out), images_per_batch=1, prompts_per_image=2, init=str(small_checkpoint), workers=0,
                bf16=bf16)
    state = torch.load(out, weights_only=True)
    build_model(SPEC).load_state_dict(state)  # the shipped spec, strictly
    # Autocast computes in bfloat16 but the checkpoint stays in Meta's float32 format.
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert all(np.isfinite(v.numpy()).all() for v in state.values())
    start = torch.load(small_checkpoint, weights_only=True)
    assert not torch.equal(state["mask_decoder.iou_token.weight"], start["mask_decoder.iou_token.weight"])


def test_loss_targets_are_cell_coverage_at_the_decoders_resolution():
    cell = SPEC.image_size // SPEC.mask_input_size
    mask = np.zeros((SPEC.image_size, SPEC.image_size), np.float32)
    mask[:, : cell // 2] = 1  # half of the first column of cells
    mask[:, cell: 3 * cell] = 1  # the next two columns whole
    target = train._low_res(mask, SPEC)
    assert target.shape == (SPEC.mask_input_size, SPEC.mask_input_size)
    assert np.allclose(target[:, 0], 0.5) and np.allclose(target[:, 1:3], 1) and np.allclose(target[:, 3:], 0)
