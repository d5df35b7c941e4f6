"""Export a loaded SAM 2.1 model (the `sam2` package's SAM2Base) to two ONNX graphs, and write its model directory.

Encoder (`encoder.onnx`): `images` (B, 3, 1024, 1024), resized and normalised (engines/sam2_transforms.py) →
  `image_embeddings` (B, 256, 64, 64): the backbone's stride-16 level plus `no_mem_embed`;
  `high_res_feats_0` (B, 32, 256, 256) and `high_res_feats_1` (B, 64, 128, 128): its stride-4 and stride-8
  levels through the mask decoder's conv_s0 and conv_s1 —
  what SAM2ImagePredictor.set_image keeps as `image_embed` and `high_res_feats`.

Decoder (`decoder.onnx`), B prompts against one image, each a run of N points:
  inputs  the image's three arrays (batch 1), `point_coords` (B, N, 2) in the 1024² input frame,
          `point_labels` (B, N) (1 foreground, 0 background, 2/3 box corners, −1 padding), `mask_input`
          (B, 1, 256, 256) previous low-res logits, `has_mask_input` (B,) 1 or 0;
  outputs `iou_predictions` (B, 4) (sigmoid, as SAM 2.1 predicts them) and `low_res_masks` (B, 4, 256, 256)
          for all four mask tokens: token 0 is the single-mask answer, 1–3 the multimask ones. SAM 2.1 falls
          back from token 0 to the best multimask token when token 0 is unstable; that choice is made on
          these outputs in NumPy (engines/sam2_transforms.select_single_mask), like the clamp of the
          returned logits to ±32.

The decoder is SAM's two-way transformer (shared with build/export.py, reassociated cross-attention) after
SAM 2.1's output tokens (object score, IoU, four masks); its mask head adds the high-resolution maps after
each transposed convolution as the reference does. The object-score token runs through the transformer (it
attends and is attended to) but its head is not exported: the image predictor does not use it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from maskserve.engines import families
from maskserve.engines.interface import DECODER_OUTPUTS, ENCODER_INPUTS
from maskserve.engines.model_dir import Manifest

from .export import PROMPT_AXES, _export, two_way_transformer
from .sam2_checkpoint import load_sam2_model as load_model  # noqa: F401 - the family's loader (checkpoint.load_model)

FAMILY = families.get("sam2.1")


class Sam2ImageEncoder(nn.Module):
    """SAM2ImagePredictor.set_image's features: the image embedding and the two projected high-res maps."""

    def __init__(self, model) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.conv_s0 = model.sam_mask_decoder.conv_s0
        self.conv_s1 = model.sam_mask_decoder.conv_s1
        self.no_mem_embed = model.no_mem_embed  # (1, 1, C), added to the lowest-resolution level
        self.add_no_mem_embed = bool(model.directly_add_no_mem_embed)
        self.levels = model.num_feature_levels

    def forward(self, images):
        fpn = self.image_encoder(images)["backbone_fpn"][-self.levels:]
        embedding = fpn[-1]
        if self.add_no_mem_embed:
            embedding = embedding + self.no_mem_embed.reshape(1, -1, 1, 1)
        return embedding, self.conv_s0(fpn[0]), self.conv_s1(fpn[1])


class Sam2PromptDecoder(nn.Module):
    """SAM 2.1's prompt encoder and mask decoder as one graph over a batch of prompts for one image."""

    def __init__(self, model) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.image_size = model.image_size
        dense_pe = self.prompt_encoder.get_dense_pe().detach()
        self.side = dense_pe.shape[-1]
        self.register_buffer("token_pe", dense_pe.flatten(2).transpose(1, 2).contiguous())

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SAM 2.1's PromptEncoder._embed_points on already padded points: +0.5, normalised by the input side."""
        pe = self.prompt_encoder.pe_layer._pe_encoding((coords + 0.5) / self.image_size)
        labels = labels.unsqueeze(-1)
        pe = pe * (labels != -1) + self.prompt_encoder.not_a_point_embed.weight * (labels == -1)
        for i, embedding in enumerate(self.prompt_encoder.point_embeddings):
            pe = pe + embedding.weight * (labels == i)
        return pe

    def forward(self, image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels,
                mask_input, has_mask_input):
        _, iou, masks = self.decode(image_embeddings, high_res_feats_0, high_res_feats_1, point_coords,
                                    point_labels, mask_input, has_mask_input)
        return iou, masks

    def decode(self, image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels,
               mask_input, has_mask_input):
        """(the transformer's output tokens, iou_predictions, low_res_masks); the tracking decoder reads more
        of the tokens (build/sam2_tracking_export.py)."""
        decoder = self.mask_decoder
        sparse = self._embed_points(point_coords, point_labels)
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has_mask * self.prompt_encoder.mask_downscaling(mask_input) + (
            1 - has_mask
        ) * self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        keys = (image_embeddings + dense).flatten(2).transpose(1, 2)
        heads = [decoder.iou_token.weight, decoder.mask_tokens.weight]
        if decoder.pred_obj_scores:
            heads.insert(0, decoder.obj_score_token.weight)
        s = 1 if decoder.pred_obj_scores else 0
        tokens = torch.cat(heads, dim=0)
        prompt = torch.cat([tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        queries, keys = two_way_transformer(decoder.transformer, prompt, keys, self.token_pe)
        mask_tokens_out = queries[:, s + 1: s + 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        b, c = keys.shape[0], keys.shape[-1]
        src = keys.transpose(1, 2).reshape(b, c, self.side, self.side)
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        upscaled = act1(ln1(dc1(src) + high_res_feats_1))
        upscaled = act2(dc2(upscaled) + high_res_feats_0)
        _, c2, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c2, h * w)).reshape(b, -1, h, w)
        return queries, decoder.iou_prediction_head(queries[:, s, :]), masks


def decoder_example_inputs(model, batch: int = 2, points: int = 3) -> tuple[torch.Tensor, ...]:
    c = model.sam_prompt_encoder.embed_dim
    e = model.sam_prompt_encoder.image_embedding_size[0]
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, c, e, e, generator=g),
        torch.randn(1, c // 8, 4 * e, 4 * e, generator=g),
        torch.randn(1, c // 4, 2 * e, 2 * e, generator=g),
        torch.rand(batch, points, 2, generator=g) * model.image_size,
        torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]])[:batch, :points],
        torch.randn(batch, 1, 4 * e, 4 * e, generator=g),
        torch.tensor([1.0, 0.0])[:batch],
    )


@torch.no_grad()
def export_encoder(model, path: Path) -> None:
    """Hiera-L's encoder is about 0.9 GB, under protobuf's 2 GB limit: one file."""
    size = model.image_size
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        _export(Sam2ImageEncoder(model).eval(), (torch.zeros(1, 3, size, size),), staged, ENCODER_INPUTS,
                list(FAMILY.arrays), {"images": {0: "batch"}, **{name: {0: "batch"} for name in FAMILY.arrays}})
        staged.replace(path)


@torch.no_grad()
def export_decoder(model, path: Path) -> None:
    _export(Sam2PromptDecoder(model).eval(), decoder_example_inputs(model), path, FAMILY.decoder_inputs,
            DECODER_OUTPUTS, {**PROMPT_AXES, "mask_input": {0: "batch"}, "has_mask_input": {0: "batch"}})


def reference_image_encoder(model) -> nn.Module:
    """The official modules that compute what the encoder graph does (the GPU check's fp32 reference)."""
    return Sam2ImageEncoder(model).eval()


def export_tracking(model, staging):
    from .sam2_tracking_export import export_tracking

    return export_tracking(model, staging)


def write_model_dir(model, spec, checkpoint, model_type, staging, backend, precision,
                    max_encoder_batch, max_decoder_batch, max_points) -> Manifest:
    """A SAM 2.1 model directory in `staging`: the decoder graph, the encoder (a graph, or for the torch backend
    the checkpoint's encoder weights), the manifest, then TensorRT engines if asked."""
    from .builder import onnx_manifest, save_and_compile, torch_encoder

    if backend != "torch":
        export_encoder(model, staging / "encoder.onnx")
    export_decoder(model, staging / "decoder.onnx")
    tracking = export_tracking(model, staging)
    manifest = onnx_manifest(spec, model_type, checkpoint, {"file": "decoder.onnx"})
    manifest.tracking = tracking
    if backend == "torch":
        from maskserve.engines import torch_backend, torch_hiera

        architecture = torch_hiera.save_encoder(model, staging / torch_backend.ENCODER_FILE)
        torch_encoder(manifest, precision, max_encoder_batch, architecture)
    return save_and_compile(staging, manifest, backend, precision, max_encoder_batch, max_decoder_batch, max_points)
