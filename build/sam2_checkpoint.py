"""Meta's SAM 2.1 checkpoints into the official `sam2` model, strictly, or a message naming what is wrong.

A SAM 2.1 checkpoint is `{"model": state_dict}` exactly as Meta publishes it (`sam2.1_hiera_*.pt`): the
whole video model (image encoder, prompt encoder and mask decoder, memory attention and encoder, object
pointers). The image path uses only part of it, but the file must load into the full architecture of its
config as `sam2.build_sam.build_sam2` would load it, with no key missing, extra or of another shape.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, is_state_dict, load_strictly, read_checkpoint_file
from .specs import SAM2_SPECS, Sam2Spec, get_spec

INSTALL = "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0 hydra-core iopath"
PATCH_EMBED = "image_encoder.trunk.patch_embed.proj.weight"
BLOCKS = "image_encoder.trunk.blocks."


def build_sam2_model(spec: Sam2Spec):
    """An untrained SAM2Base of `spec`'s config, on the CPU, in eval mode, built as `build_sam2` builds the
    image predictor's model (its default post-processing: single-mask answers fall back to the best multimask
    one when unstable)."""
    try:
        from sam2.build_sam import build_sam2
    except ImportError as exc:
        raise CheckpointError(f"SAM 2.1 models need Meta's `sam2` package ({INSTALL}): {exc}") from exc
    return build_sam2(spec.config, ckpt_path=None, device="cpu", mode="eval")


def read_sam2_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a `{"model": state_dict}` checkpoint."""
    checkpoint = read_checkpoint_file(path)
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        state = checkpoint["model"]
        if not is_state_dict(state):
            raise CheckpointError(f"checkpoint {path} is not a SAM 2.1 checkpoint: its \"model\" entry is not a "
                                  f"mapping of parameter names to tensors")
        return state
    if is_state_dict(checkpoint):
        looks_like_sam = any(k.startswith("image_encoder.patch_embed.") for k in checkpoint)
        hint = "; it looks like a SAM checkpoint (a raw state dict): build it with --model-type vit_b, vit_l or vit_h" \
            if looks_like_sam else ""
        raise CheckpointError(f"checkpoint {path} is not a SAM 2.1 checkpoint: expected {{\"model\": state dict}} "
                              f"as Meta publishes it, found a bare state dict{hint}")
    keys = f" (its keys: {', '.join(map(str, list(checkpoint)[:5]))})" if isinstance(checkpoint, dict) else ""
    raise CheckpointError(f"checkpoint {path} is not a SAM 2.1 checkpoint: expected {{\"model\": state dict}}, "
                          f"found a {type(checkpoint).__name__}{keys}")


def guess_sam2_model_type(state: dict[str, torch.Tensor]) -> str | None:
    """The SAM 2.1 model type whose Hiera width and depth match this state dict, if any."""
    weight = state.get(PATCH_EMBED)
    if weight is None:
        return None
    depth = len({k[len(BLOCKS):].split(".")[0] for k in state if k.startswith(BLOCKS)})
    for name, spec in SAM2_SPECS.items():
        if (weight.shape[0], depth) == (spec.trunk_embed_dim, spec.trunk_depth):
            return name
    return None


def load_sam2_model(path: str | Path, model_type: str):
    """Build `model_type` (a SAM 2.1 type) and load the checkpoint at `path` into it, strictly."""
    spec = get_spec(model_type)
    if spec.family != "sam2.1":
        raise CheckpointError(f"{model_type} is not a SAM 2.1 model type")
    state = read_sam2_state_dict(path)
    return load_strictly(build_sam2_model(spec), state, path, model_type, guess_sam2_model_type)
