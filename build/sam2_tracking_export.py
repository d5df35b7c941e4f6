"""Export SAM 2.1's video tracking step (what `SAM2VideoPredictor` runs per frame and object) to three ONNX
graphs and a file of constants, for the torch-free tracker in engines/tracking.py.

`track_decoder.onnx` — the prompt encoder and mask decoder on B objects' memory-conditioned features:
  inputs  `pix_feat` (B, 256, 64, 64), the image's `high_res_feats_0`/`_1` (batch 1), `point_coords` (B, N, 2),
          `point_labels` (B, N), `mask_input` (B, 1, 256, 256), `has_mask_input` (B,);
  outputs `iou_predictions` (B, 4), `low_res_masks` (B, 4, 256, 256) for all four mask tokens,
          `object_score_logits` (B, 1) and `obj_ptrs` (B, 4, 256): each token through `obj_ptr_proj`.
  Which token answers, the no-object masking and pointer, are chosen in NumPy as `_forward_sam_heads` does.
`memory_attention.onnx` — `_prepare_memory_conditioned_features`'s transformer:
  inputs  `curr` (1, 4096, 256) the frame's raw stride-16 level (channels last), `memory` (B, S·4096, 64) and
          `memory_pos` (B, S·4096, 64) for S spatial memories, `obj_ptrs` / `obj_pos` (B, P, 64) pointer tokens;
  output  `pix_feat` (B, 256, 64, 64).
  Rotary encodings are written with cos/sin (the reference's complex numbers do not export); the spatial keys
  are rotated, the pointer tokens are not (the reference's `num_k_exclude_rope`).
`memory_encoder.onnx` — `_encode_new_memory` on low-res logits:
  inputs  `pix_feat` (1, 256, 64, 64) raw, `low_res_masks` (B, 1, 256, 256), `object_score_logits` (B, 1),
          `binarize` (B,) 1 for masks from prompts (the video predictor's `binarize_mask_from_pts_for_mem_enc`);
  output  `maskmem_features` (B, 64, 64, 64) (the reference stores them in bfloat16; the tracker rounds).
`tracking.npz` — `no_mem_embed`, `no_obj_ptr`, `maskmem_tpos_enc`, the memory's spatial position encoding,
  `obj_ptr_tpos_proj` and `mask_downsample` weights.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .export import OPSET, _export
from .sam2_export import Sam2PromptDecoder

FILES = {"decoder_file": "track_decoder.onnx", "memory_attention_file": "memory_attention.onnx",
         "memory_encoder_file": "memory_encoder.onnx", "constants_file": "tracking.npz"}
# SAM2VideoPredictor's settings the tracker implements as fixed behaviour (every SAM 2.1 config has them);
# a model that differs is refused at build time rather than tracked differently.
FIXED = {"directly_add_no_mem_embed": True, "pred_obj_scores": True, "fixed_no_obj_ptr": True,
         "soft_no_obj_ptr": False, "use_obj_ptrs_in_encoder": True, "add_tpos_enc_to_obj_ptrs": True,
         "proj_tpos_enc_in_obj_ptrs": True, "use_signed_tpos_enc_to_obj_ptrs": True,
         "only_obj_ptrs_in_the_past_for_eval": True, "use_mask_input_as_output_without_sam": True,
         "multimask_output_in_sam": True, "multimask_output_for_tracking": True,
         "use_multimask_token_for_obj_ptr": True, "use_high_res_features_in_sam": True,
         "non_overlap_masks_for_mem_enc": False}


class TrackDecoder(Sam2PromptDecoder):
    def forward(self, pix_feat, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
                has_mask_input):
        queries, iou, masks = self.decode(pix_feat, high_res_feats_0, high_res_feats_1, point_coords,
                                          point_labels, mask_input, has_mask_input)
        decoder = self.mask_decoder
        tokens = queries[:, 2:2 + decoder.num_mask_tokens, :]
        return iou, masks, decoder.pred_obj_score_head(queries[:, 0, :]), self.obj_ptr_proj(tokens)

    def __init__(self, model) -> None:
        super().__init__(model)
        self.obj_ptr_proj = model.obj_ptr_proj


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The reference's `apply_rotary_enc` on real numbers: consecutive channel pairs as complex numbers."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _attend(attn, q, k, v) -> torch.Tensor:
    weights = torch.softmax(q @ k.transpose(-1, -2) / float(q.shape[-1]) ** 0.5, dim=-1)
    out = weights @ v
    b, n, t, d = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, n * d))


class _Attention(torch.autograd.Function):
    """Single-head scaled dot-product attention, exported as ONNX Runtime's `MultiHeadAttention` (its CPU kernel
    tiles the scores instead of writing the 4096 × 28 k matrix out: about a quarter faster here)."""

    @staticmethod
    def forward(ctx, q, k, v):  # (B, N, D), (B, M, D), (B, M, Dv)
        return torch.softmax(q @ k.transpose(-1, -2) / float(q.shape[-1]) ** 0.5, dim=-1) @ v

    @staticmethod
    def symbolic(g, q, k, v):
        return g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=1)


def _single_head(attn, q, k, v) -> torch.Tensor:
    """q, k, v split into one head each (B, 1, T, D) → the attention's output (before out_proj), (B, T, Dv)."""
    return _Attention.apply(q[:, 0], k[:, 0], v[:, 0])


# The memories are 64 wide and the values 256: a head's output Σ a·(W_v m + b) is computed as (Σ a·m) W_vᵀ + b
# (its weights sum to 1), a quarter of the multiply-adds of projecting every memory token — the same arithmetic,
# reassociated (as build/export.py does for SAM's cross-attention).
def _attend_projecting_values(attn, q, k, inputs) -> torch.Tensor:
    if attn.num_heads == 1:
        mixed = _single_head(attn, q, k, inputs.unsqueeze(1))
        return attn.out_proj(mixed @ attn.v_proj.weight.T + attn.v_proj.bias)
    weights = torch.softmax(q @ k.transpose(-1, -2) / float(q.shape[-1]) ** 0.5, dim=-1)  # (B, n, N, M)
    mixed = weights @ inputs.unsqueeze(1)  # (B, n, N, 64)
    n, d = attn.num_heads, attn.internal_dim // attn.num_heads
    w = attn.v_proj.weight.reshape(n, d, -1)  # head h's rows
    out = mixed @ w.transpose(1, 2).unsqueeze(0) + attn.v_proj.bias.reshape(1, n, 1, d)
    b, _, t, _ = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, n * d))


class MemoryAttention(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        from sam2.modeling.position_encoding import compute_axial_cis

        attention = model.memory_attention
        self.layers, self.norm = attention.layers, attention.norm
        self.pos_at_input = attention.pos_enc_at_input
        self.side = side = model.sam_image_embedding_size
        c = model.hidden_dim
        pos = model.image_encoder.neck.position_encoding(torch.zeros(1, c, side, side))
        self.register_buffer("curr_pos", pos.flatten(2).transpose(1, 2).contiguous())
        first = self.layers[0]
        for layer in self.layers:
            assert not layer.pos_enc_at_attn and layer.pos_enc_at_cross_attn_keys
            assert not layer.pos_enc_at_cross_attn_queries and layer.activation_str == "relu"
        head_dim = first.self_attn.internal_dim // first.self_attn.num_heads
        cis = compute_axial_cis(head_dim, side, side, theta=10000.0)
        self.register_buffer("cos", cis.real.float().contiguous())
        self.register_buffer("sin", cis.imag.float().contiguous())

    def forward(self, curr, memory, memory_pos, obj_ptrs, obj_pos):
        x = curr + 0.1 * self.curr_pos if self.pos_at_input else curr
        x = x.expand(memory.shape[0], -1, -1)
        hw = self.side * self.side
        for layer in self.layers:
            sa = layer.self_attn
            t = layer.norm1(x)
            q = _rotate(_heads(sa.q_proj(t), sa.num_heads), self.cos, self.sin)
            k = _rotate(_heads(sa.k_proj(t), sa.num_heads), self.cos, self.sin)
            v = _heads(sa.v_proj(t), sa.num_heads)
            x = x + (sa.out_proj(_single_head(sa, q, k, v)) if sa.num_heads == 1 else _attend(sa, q, k, v))
            ca = layer.cross_attn_image
            t = layer.norm2(x)
            q = _rotate(_heads(ca.q_proj(t), ca.num_heads), self.cos, self.sin)
            k = _heads(ca.k_proj(memory + memory_pos), ca.num_heads)
            b, n, m, d = k.shape
            k = _rotate(k.reshape(b, n, -1, hw, d), self.cos, self.sin).reshape(b, n, m, d)
            k = torch.cat([k, _heads(ca.k_proj(obj_ptrs + obj_pos), ca.num_heads)], dim=2)
            x = x + _attend_projecting_values(ca, q, k, torch.cat([memory, obj_ptrs], dim=1))
            t = layer.norm3(x)
            x = x + layer.linear2(F.relu(layer.linear1(t)))
        out = self.norm(x)
        return out.transpose(1, 2).reshape(out.shape[0], -1, self.side, self.side)


class MemoryEncoder(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.memory_encoder = model.memory_encoder
        self.image_size = model.image_size
        self.scale, self.bias = float(model.sigmoid_scale_for_mem_enc), float(model.sigmoid_bias_for_mem_enc)
        self.register_buffer("no_obj_embed_spatial", model.no_obj_embed_spatial.detach().reshape(1, -1, 1, 1))

    def forward(self, pix_feat, low_res_masks, object_score_logits, binarize):
        high = F.interpolate(low_res_masks, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)
        hard = binarize.reshape(-1, 1, 1, 1)
        mask = hard * (high > 0).float() + (1 - hard) * torch.sigmoid(high)
        mask = mask * self.scale + self.bias
        feats = self.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)["vision_features"]
        absent = (object_score_logits <= 0).float().reshape(-1, 1, 1, 1)
        return feats + absent * self.no_obj_embed_spatial


def check_supported(model) -> None:
    for name, value in FIXED.items():
        have = getattr(model, name, None)
        if bool(have) != value:
            raise ValueError(f"tracking export: this model has {name}={have}; the tracker implements {value}")
    if model.no_obj_embed_spatial is None or model.num_maskmem < 2:
        raise ValueError("tracking export: the model needs no_obj_embed_spatial and a memory (num_maskmem ≥ 2)")


@torch.no_grad()
def constants(model) -> dict[str, np.ndarray]:
    side = model.sam_image_embedding_size
    mem_dim = model.mem_dim
    pos = model.memory_encoder.position_encoding(torch.zeros(1, mem_dim, side, side))
    return {
        "no_mem_embed": model.no_mem_embed.reshape(-1).numpy(),
        "no_obj_ptr": model.no_obj_ptr.reshape(-1).numpy(),
        "maskmem_tpos_enc": model.maskmem_tpos_enc.reshape(model.num_maskmem, -1).numpy(),
        "maskmem_pos_enc": pos.flatten(2).transpose(1, 2)[0].contiguous().numpy(),
        "obj_ptr_tpos_proj_weight": model.obj_ptr_tpos_proj.weight.numpy(),
        "obj_ptr_tpos_proj_bias": model.obj_ptr_tpos_proj.bias.numpy(),
        "mask_downsample_weight": model.mask_downsample.weight.reshape(4, 4).numpy(),
        "mask_downsample_bias": model.mask_downsample.bias.reshape(()).numpy(),
    }


def settings(model) -> dict:
    """What the tracker reads besides the graphs: the memory's sizes, as the config sets them, and the video
    predictor's post-processing (`build_sam2_video_predictor`: holes up to 8 low-res cells filled)."""
    return {"num_maskmem": int(model.num_maskmem), "max_obj_ptrs_in_encoder": int(model.max_obj_ptrs_in_encoder),
            "max_cond_frames_in_attn": int(model.max_cond_frames_in_attn),
            "memory_temporal_stride": int(model.memory_temporal_stride_for_eval),
            "mem_dim": int(model.mem_dim), "hidden_dim": int(model.hidden_dim), "fill_hole_area": 8,
            "multimask_max_pt_num": int(model.multimask_max_pt_num),
            "multimask_min_pt_num": int(model.multimask_min_pt_num)}


@torch.no_grad()
def export_tracking(model, staging) -> dict:
    """Write the three graphs and the constants into `staging`; the manifest's `tracking` entry."""
    check_supported(model)
    model = model.eval()
    c, e = model.hidden_dim, model.sam_image_embedding_size
    m = model.mem_dim
    g = torch.Generator().manual_seed(0)
    decoder_args = (
        torch.randn(2, c, e, e, generator=g), torch.randn(1, c // 8, 4 * e, 4 * e, generator=g),
        torch.randn(1, c // 4, 2 * e, 2 * e, generator=g), torch.rand(2, 3, 2, generator=g) * model.image_size,
        torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, 1.0]]), torch.randn(2, 1, 4 * e, 4 * e, generator=g),
        torch.tensor([1.0, 0.0]))
    inputs = ["pix_feat", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "mask_input",
              "has_mask_input"]
    outputs = ["iou_predictions", "low_res_masks", "object_score_logits", "obj_ptrs"]
    axes = {"pix_feat": {0: "batch"}, "point_coords": {0: "batch", 1: "points"},
            "point_labels": {0: "batch", 1: "points"}, "mask_input": {0: "batch"}, "has_mask_input": {0: "batch"},
            **{name: {0: "batch"} for name in outputs}}
    _export(TrackDecoder(model).eval(), decoder_args, staging / FILES["decoder_file"], inputs, outputs, axes)

    attention_args = (torch.randn(1, e * e, c, generator=g), torch.randn(2, 2 * e * e, m, generator=g),
                      torch.randn(2, 2 * e * e, m, generator=g), torch.randn(2, 8, m, generator=g),
                      torch.randn(2, 8, m, generator=g))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(MemoryAttention(model).eval(), attention_args, str(staging / FILES["memory_attention_file"]),
                          input_names=["curr", "memory", "memory_pos", "obj_ptrs", "obj_pos"], output_names=["pix_feat"],
                          dynamic_axes={"memory": {0: "batch", 1: "memories"}, "memory_pos": {0: "batch", 1: "memories"},
                                        "obj_ptrs": {0: "batch", 1: "pointers"}, "obj_pos": {0: "batch", 1: "pointers"},
                                        "pix_feat": {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False,
                          custom_opsets={"com.microsoft": 1})

    encoder_args = (torch.randn(1, c, e, e, generator=g), torch.randn(2, 1, 4 * e, 4 * e, generator=g),
                    torch.tensor([[1.0], [-1.0]]), torch.tensor([1.0, 0.0]))
    _export(MemoryEncoder(model).eval(), encoder_args, staging / FILES["memory_encoder_file"],
            ["pix_feat", "low_res_masks", "object_score_logits", "binarize"], ["maskmem_features"],
            {"low_res_masks": {0: "batch"}, "object_score_logits": {0: "batch"}, "binarize": {0: "batch"},
             "maskmem_features": {0: "batch"}})
    np.savez(staging / FILES["constants_file"], **constants(model))
    return {**FILES, **settings(model)}
