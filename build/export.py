"""Export a loaded SAM model to two ONNX graphs: the image encoder and a batched prompt decoder.

Encoder: `images` (B, 3, S, S) normalised and padded → `image_embeddings` (B, C, E, E).

Decoder, for B prompts against one image embedding, each prompt a run of N points:
  inputs  `image_embeddings` (1, C, E, E), `point_coords` (B, N, 2) in the resized input frame,
          `point_labels` (B, N) with 1 = foreground, 0 = background, 2/3 = box corners, −1 = padding,
          `mask_input` (B, 1, 4E, 4E) previous low-res logits, `has_mask_input` (B,) 1 or 0;
  outputs `iou_predictions` (B, 4) and `low_res_masks` (B, 4, 4E, 4E) for all four mask tokens
          (token 0 is the single-mask answer, tokens 1–3 the multimask ones).
The arithmetic is the reference's; only its order differs where that lets the runtime fuse work (see
`upscale_masks`), so ONNX Runtime matches PyTorch to float noise.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

OPSET = 17
ENCODER_INPUTS = ["images"]
ENCODER_OUTPUTS = ["image_embeddings"]
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["iou_predictions", "low_res_masks"]


class PromptDecoder(nn.Module):
    """SAM's prompt encoder and mask decoder as one graph over a batch of prompts for one image."""

    def __init__(self, sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.image_size = sam.image_encoder.img_size
        # The dense positional encoding depends only on the model: computed once, stored as a constant.
        self.register_buffer("image_pe", sam.prompt_encoder.get_dense_pe().detach())

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder.pe_layer._pe_encoding((coords + 0.5) / self.image_size)
        labels = labels.unsqueeze(-1)
        pe = pe * (labels != -1) + self.prompt_encoder.not_a_point_embed.weight * (labels == -1)
        for i, embedding in enumerate(self.prompt_encoder.point_embeddings):
            pe = pe + embedding.weight * (labels == i)
        return pe

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        sparse = self._embed_points(point_coords, point_labels)
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has_mask * self.prompt_encoder.mask_downscaling(mask_input) + (
            1 - has_mask
        ) * self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)

        decoder = self.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        src = image_embeddings + dense
        pos_src = self.image_pe.expand(src.shape[0], -1, -1, -1)
        hs, src = decoder.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        side = self.image_pe.shape[-1]
        return decoder.iou_prediction_head(iou_token_out), upscale_masks(decoder.output_upscaling, src, hyper_in, side)


def upscale_masks(upscaling: nn.Sequential, tokens: torch.Tensor, hyper_in: torch.Tensor, side: int) -> torch.Tensor:
    """SAM's mask head (two 2×2 stride-2 transposed convolutions with LayerNorm2d and GELU, then the dot
    product with each mask token's hypernetwork output) computed on channels-last tokens.

    A k2/s2 transposed convolution is a GEMM from C to 4·C' channels followed by depth-to-space, and the
    depth-to-space can wait: keeping each output pixel's row in "sub-pixel" order (i, j, di, dj, ei, ej)
    turns both convolutions into plain MatMuls, LayerNorm2d into a LayerNormalization over the last axis,
    and leaves one small reorder of the final (B, 4, 4E, 4E) masks instead of transposes of the 64- and
    32-channel feature maps. tokens: (B, E·E, C) image tokens from the two-way transformer."""
    up1, norm, act1, up2, act2 = upscaling
    b = tokens.shape[0]
    c1, c2 = up1.out_channels, up2.out_channels
    x = tokens @ up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, 4 * c1)
    x = act1(F.layer_norm(x.reshape(b, -1, c1) + up1.bias, (c1,), norm.weight, norm.bias, norm.eps))
    x = x @ up2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    x = act2(x.reshape(b, -1, c2) + up2.bias)
    masks = x @ hyper_in.transpose(1, 2)  # (B, E·E·16, K) rows in (i, j, di, dj, ei, ej) order
    k = hyper_in.shape[1]
    masks = masks.reshape(b, side, side, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, k, 4 * side, 4 * side)


def decoder_example_inputs(sam, batch: int = 2, points: int = 3) -> tuple[torch.Tensor, ...]:
    c = sam.prompt_encoder.embed_dim
    e = sam.prompt_encoder.image_embedding_size[0]
    m = 4 * e
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, c, e, e, generator=g),
        torch.rand(batch, points, 2, generator=g) * sam.image_encoder.img_size,
        torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]])[:batch, :points],
        torch.randn(batch, 1, m, m, generator=g),
        torch.tensor([1.0, 0.0])[:batch],
    )


def _export(module: nn.Module, args: tuple, path: Path, inputs, outputs, dynamic_axes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic_axes,
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


@torch.no_grad()
def export_encoder(sam, path: Path) -> None:
    """ViT-H's encoder is over protobuf's 2 GB limit; then its weights go to one file beside it, `<name>.data`."""
    import onnx

    size = sam.image_encoder.img_size
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        _export(
            sam.image_encoder, (torch.zeros(1, 3, size, size),), staged, ENCODER_INPUTS, ENCODER_OUTPUTS,
            {"images": {0: "batch"}, "image_embeddings": {0: "batch"}},
        )
        if len(list(Path(tmp).iterdir())) == 1:
            staged.replace(path)
        else:  # the exporter wrote one file per tensor: gather them
            model = onnx.load(str(staged), load_external_data=True)
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)


@torch.no_grad()
def export_decoder(sam, path: Path) -> None:
    _export(
        PromptDecoder(sam).eval(), decoder_example_inputs(sam), path, DECODER_INPUTS, DECODER_OUTPUTS,
        {
            "point_coords": {0: "batch", 1: "points"},
            "point_labels": {0: "batch", 1: "points"},
            "mask_input": {0: "batch"},
            "has_mask_input": {0: "batch"},
            "iou_predictions": {0: "batch"},
            "low_res_masks": {0: "batch"},
        },
    )
