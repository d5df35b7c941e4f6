"""MobileSAM → a model directory: `mobile_sam`'s own `vit_t` network loaded strictly from the authors'
checkpoint (a whole-model state dict, SAM's key names), then SAM's graphs: the same decoder graphs key for key,
and TinyViT as the encoder graph."""

from __future__ import annotations

import warnings
from pathlib import Path

from maskserve.engines import families

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


def write_model_dir(sam, spec, checkpoint, model_type, staging, backend, precision,
                    max_encoder_batch, max_decoder_batch, max_points):
    """SAM's decoder graphs and TinyViT's encoder graph (or, for the torch backend, its weights), the manifest
    naming the family, then TensorRT engines if asked."""
    from .builder import onnx_manifest, save_and_compile, torch_encoder

    if backend != "torch":
        export.export_encoder(sam, staging / "encoder.onnx")
    export.export_decoder(sam, staging / "decoder.onnx")
    export.export_points_decoder(sam, staging / "decoder_image.onnx", staging / "decoder_points.onnx")
    layout = [{"name": n, "shape": list(s), "dtype": d} for n, s, d in spec.embedding_layout]
    manifest = onnx_manifest(spec, model_type, checkpoint, {"file": "decoder.onnx", "image_file": "decoder_image.onnx",
                                                           "points_file": "decoder_points.onnx"}, layout)
    if backend == "torch":
        import torch

        from maskserve.engines import torch_backend

        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sam.image_encoder.state_dict().items()}
        torch.save(state, staging / torch_backend.ENCODER_FILE)
        torch_encoder(manifest, precision, max_encoder_batch, {"network": "mobile_sam vit_t (TinyViT)"})
    return save_and_compile(staging, manifest, backend, precision, max_encoder_batch, max_decoder_batch, max_points)


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
