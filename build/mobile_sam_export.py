"""MobileSAM → a model directory: `mobile_sam`'s own `vit_t` network loaded strictly from the authors'
checkpoint (a whole-model state dict, SAM's key names), then SAM's graphs: the same decoder graphs key for key,
and TinyViT as the encoder graph."""

from __future__ import annotations

import warnings
from pathlib import Path

from maskserve.engines import families
from maskserve.engines.model_dir import Manifest

from . import export
from .checkpoint import guess_model_type, load_strictly, read_state_dict

with warnings.catch_warnings():  # timm's deprecations and registry overwrites
    warnings.simplefilter("ignore")
    import mobile_sam  # noqa: F401 - the export extra's; without it a build stops here, before any download


def load_model(path: str | Path, model_type: str):
    """The checkpoint into `mobile_sam`'s `Sam` with TinyViT; `eval()` after loading, as the authors' README does:
    TinyViT's attention gathers its biases into a buffer at `eval()`, so one built before loading keeps zeros."""
    return load_strictly(families.get("mobile_sam").network(), read_state_dict(path), path, model_type,
                         guess_model_type)


reference_image_encoder = export.reference_image_encoder


def save_torch_encoder(sam, path: Path) -> tuple[dict, dict]:
    """TinyViT's weights as they are: the torch backend runs mobile_sam's own module on them."""
    import torch

    torch.save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sam.image_encoder.state_dict().items()},
               path)
    return {"network": "mobile_sam vit_t (TinyViT)"}, {}


def write_model_dir(*args) -> Manifest:
    """SAM's model directory (decoder graphs, encoder graph, manifest, engines) with TinyViT as its encoder."""
    return export.write_model_dir(*args, save_torch_encoder=save_torch_encoder)


def seeded_random_model(seed: int = 0):
    """`vit_t` with seeded random weights, for tests and the GPU check: PyTorch's initialisation, then what TinyViT
    initialises to constants drawn too — its attention biases (zero) and every BatchNorm's scale, shift and
    statistics (the last one of each conv block scales by zero: the block an identity) — so that every path of
    the encoder carries signal."""
    import torch

    torch.manual_seed(seed)
    model = families.get("mobile_sam").network()
    state = model.state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    for key, value in state.items():
        if not key.startswith("image_encoder."):
            continue
        if key.endswith("attention_biases"):
            state[key] = torch.randn(value.shape, generator=g)
        elif ".bn." in key and key.endswith(("weight", "running_var")):
            state[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif ".bn." in key and key.endswith(("bias", "running_mean")):
            state[key] = 0.1 * torch.randn(value.shape, generator=g)
    model.load_state_dict(state)
    return model.eval()
