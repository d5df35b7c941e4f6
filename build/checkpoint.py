"""SAM checkpoints: construct the architecture for a model type and load a state dict into it.

Checkpoints are raw state dicts (`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`) exactly as Meta
publishes them. Anything else is refused with a message that names what is wrong. SAM 2.1's checkpoints
(`{"model": state dict}`) load through `sam2_checkpoint`; `load_model` takes either by model type.
"""

from __future__ import annotations

import hashlib
import zipfile
from functools import partial
from pathlib import Path

import torch

from .specs import MODEL_SPECS, ModelSpec, get_spec


class CheckpointError(ValueError):
    pass


def build_model(spec: ModelSpec):
    """An untrained `segment_anything.modeling.Sam` with the architecture of `spec`."""
    from segment_anything.modeling import (
        ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer,
    )

    emb = spec.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=spec.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=spec.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes,
            window_size=spec.window_size,
            out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(spec.image_size, spec.image_size),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=spec.decoder_depth,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=list(spec.pixel_mean),
        pixel_std=list(spec.pixel_std),
    )
    return sam.eval()


def read_checkpoint_file(path: str | Path):
    """The object a PyTorch checkpoint file holds, loaded as data only (never running code from it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise CheckpointError(f"checkpoint {path} is not a PyTorch file, or is truncated (no zip directory and no pickle header)")
    try:
        # weights_only: a checkpoint is data; never execute pickled code from it.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        if "Weights only load failed" in detail:
            detail = "it holds Python objects other than tensors, and loading it would run code from the file"
        raise CheckpointError(f"checkpoint {path} could not be read: {detail}") from exc


def is_state_dict(state) -> bool:
    return isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    state = read_checkpoint_file(path)
    if not is_state_dict(state):
        hint = ""
        if isinstance(state, dict) and is_state_dict(state.get("model")):
            hint = ("; it holds {\"model\": state dict}, the SAM 2.1 format: build it with a "
                    "--model-type sam2.1_hiera_*")
        raise CheckpointError(
            f"checkpoint {path} is not a SAM state dict (expected a flat mapping of parameter names to tensors){hint}"
        )
    return state


def guess_model_type(state: dict[str, torch.Tensor]) -> str | None:
    """The published model type whose encoder width and depth match this state dict, if any."""
    if any(k.startswith("image_encoder.layers.") for k in state):
        return "vit_t"  # TinyViT's stages: MobileSAM
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, spec in MODEL_SPECS.items():
        if (weight.shape[0], weight.shape[2], depth) == (spec.encoder_embed_dim, spec.patch_size, spec.encoder_depth):
            return name
    return None


def load_model(path: str | Path, model_type: str):
    """Build `model_type` and load the checkpoint at `path` into it, strictly: a
    `segment_anything.modeling.Sam`, or for a SAM 2.1 type the `sam2` package's SAM2Base."""
    import importlib

    from maskserve.engines import families

    exporter = importlib.import_module(families.get(get_spec(model_type).family).export_module)
    return exporter.load_model(path, model_type)


def load_sam_model(path: str | Path, model_type: str):
    """A SAM-family checkpoint into `segment_anything.modeling.Sam`, strictly."""
    state = read_state_dict(path)
    return load_strictly(build_model(get_spec(model_type)), state, path, model_type, guess_model_type)


def load_strictly(model, state: dict, path, model_type: str, guess) -> torch.nn.Module:
    """`state` into `model` with every key and shape checked first; a misfit names its problems and, through
    `guess(state)`, the model type the checkpoint looks like."""
    problems = key_problems(state, model.state_dict())
    if problems:
        guessed = guess(state)
        hint = f"; it looks like a {guessed} checkpoint" if guessed and guessed != model_type else ""
        raise CheckpointError(f"checkpoint {path} does not fit model type {model_type}: " + "; ".join(problems) + hint)
    model.load_state_dict(state, strict=True)
    return model.eval()


def key_problems(state: dict, expected: dict) -> list[str]:
    """What keeps `state` from loading strictly into a model whose state dict is `expected`."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if misshaped:
        problems.append(f"{len(misshaped)} keys with the wrong shape ({_few(misshaped)})")
    return problems


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", …" if len(items) > n else "")
