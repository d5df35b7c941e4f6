"""Export a loaded SAM model to two ONNX graphs: the image encoder and a batched prompt decoder.

Encoder: `images` (B, 3, S, S) normalised and padded → `image_embeddings` (B, C, E, E).

Decoder (`decoder.onnx`, the general graph), for B prompts against one image embedding, each a run of N points:
  inputs  `image_embeddings` (1, C, E, E), `point_coords` (B, N, 2) in the resized input frame,
          `point_labels` (B, N) with 1 = foreground, 0 = background, 2/3 = box corners, −1 = padding,
          `mask_input` (B, 1, 4E, 4E) previous low-res logits, `has_mask_input` (B,) 1 or 0;
  outputs `iou_predictions` (B, 4) and `low_res_masks` (B, 4, 4E, 4E) for all four mask tokens
          (token 0 is the single-mask answer, tokens 1–3 the multimask ones).
Two more graphs split the decoder's work on prompts without a mask input, the common case: in the first
transformer block the image tokens have not yet seen a prompt, so their layout and projections depend on
the image alone. `decoder_image.onnx` computes them once per image (`image_embeddings` → `image_tokens`
(1, E·E, C), and `image_keys`, `image_values`, `image_queries`, each (1, heads, E·E, d));
`decoder_points.onnx` takes them with `point_coords` and `point_labels` and returns the same two outputs,
broadcasting the image side over the batch instead of repeating it per prompt. Its `mask_extent` (2,) int64
input, (rows, columns) of embedding cells, limits the mask head to that top-left part of the grid: the
padding below and right of a non-square image costs transformer work (it is attended to) but its masks are
never shown, so `low_res_masks` is then (B, 4, 4·rows, 4·columns), the full answer's top-left corner.

The arithmetic is the reference's; only its order differs where that saves work (the cross-attention,
see `attend_image_to_tokens`) or lets the runtime fuse it (`upscale_masks`), so ONNX Runtime matches
PyTorch to float noise.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskserve.engines import families
from maskserve.engines.interface import DECODER_OUTPUTS, ENCODER_INPUTS, IMAGE_FEATURES, POINTS_INPUTS
from maskserve.engines.model_dir import Manifest

from .checkpoint import load_sam_model as load_model  # noqa: F401 - the family's loader (checkpoint.load_model)

FAMILY = families.get("sam")

OPSET = 17
PROMPT_AXES = {"point_coords": {0: "batch", 1: "points"}, "point_labels": {0: "batch", 1: "points"},
               "iou_predictions": {0: "batch"}, "low_res_masks": {0: "batch"}}
POINTS_AXES = {**PROMPT_AXES, "low_res_masks": {0: "batch", 2: "mask_rows", 3: "mask_columns"}}


class PromptDecoder(nn.Module):
    """SAM's prompt encoder and mask decoder as one graph over a batch of prompts for one image."""

    def __init__(self, sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.image_size = sam.image_encoder.img_size
        # The dense positional encoding depends only on the model: computed once, stored as a constant,
        # channels last like the image tokens it is added to.
        dense_pe = sam.prompt_encoder.get_dense_pe().detach()
        self.side = dense_pe.shape[-1]
        self.register_buffer("token_pe", dense_pe.flatten(2).transpose(1, 2).contiguous())

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
        keys = (image_embeddings + dense).flatten(2).transpose(1, 2)
        prompt = self.prompt_tokens(sparse)
        return self.outputs(*two_way_transformer(self.mask_decoder.transformer, prompt, keys, self.token_pe))

    def prompt_tokens(self, sparse: torch.Tensor) -> torch.Tensor:
        """The output tokens (IoU, then the four masks') followed by the prompt's point embeddings."""
        decoder = self.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        return torch.cat([tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)

    def image_tokens(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image as (1, E·E, C) tokens with no mask input added, and its positional encoding likewise."""
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return (image_embeddings + no_mask).flatten(2).transpose(1, 2), self.token_pe

    def outputs(self, queries: torch.Tensor, keys: torch.Tensor,
                extent: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's outputs → (IoU predictions (B, 4), low-res mask logits (B, 4, 4E, 4E)); with
        `extent` (rows, columns), the masks of that top-left part of the E×E grid only."""
        decoder = self.mask_decoder
        mask_tokens_out = queries[:, 1 : 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )
        if extent is None:
            rows = cols = self.side
        else:  # each mask pixel comes from one image token: crop the tokens, not the masks
            rows, cols = extent[0], extent[1]
            keys = keys.reshape(keys.shape[0], self.side, self.side, -1)[:, :rows, :cols].flatten(1, 2)
        masks = upscale_masks(decoder.output_upscaling, keys, hyper_in, rows, cols)
        return decoder.iou_prediction_head(queries[:, 0, :]), masks


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N, C) → (B, n, N, C/n), as SAM's Attention separates heads."""
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's Attention after its input projections: q, k, v already projected and split into heads."""
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = weights @ v
    b, n, t, d = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, n * d))


# SAM's cross-attention between a few prompt tokens (T ≈ 7) and thousands of image tokens (N = E·E) projects
# every image token into each head (N × C × C/2 multiply-adds, four times per block). Attention is bilinear,
# so the projections can move to the token side instead: a head's scores q·k = x·(W_qᵀ k) take a product
# of x with T vectors of width C, and its output Σ a·v then W_o takes T vectors v·W_o. Per image token that
# is heads × T ≈ 56 columns instead of C/2 = 128 twice — the same arithmetic, reassociated.


def attend_image_to_tokens(attn, image_q: torch.Tensor, token_k: torch.Tensor, token_v: torch.Tensor,
                           projected_q: torch.Tensor | None = None) -> torch.Tensor:
    """`attn(q=image_q, k=token_k, v=token_v)` → (B, N, C). image_q: (B|1, N, C) image tokens with their
    positional encoding, or `projected_q` (1, heads, N, d) when the image side's projection is precomputed."""
    h = attn.num_heads
    k = _heads(attn.k_proj(token_k), h)  # (B, h, T, d)
    v = _heads(attn.v_proj(token_v), h)
    b, _, t, d = k.shape
    w_out = attn.out_proj.weight.reshape(-1, h, d).permute(1, 2, 0)  # (h, d, C)
    # Each token's value already through out_proj, with 1/h of its bias: a head's weights sum to one, so
    # the h heads together add the bias once, and the image-sized Add after the MatMul goes away.
    values = (v @ w_out + attn.out_proj.bias / h).reshape(b, h * t, -1)
    if projected_q is not None:
        scores = k @ projected_q.transpose(-1, -2) / math.sqrt(d)  # (B, h, T, N)
    else:
        w_q = attn.q_proj.weight.reshape(h, d, -1)  # (h, d, C)
        keys = (k @ w_q).reshape(b, h * t, -1) / math.sqrt(d)
        bias = (k @ attn.q_proj.bias.reshape(h, d, 1)).reshape(b, h * t, 1) / math.sqrt(d)
        scores = (keys @ image_q.transpose(1, 2) + bias).reshape(b, h, t, -1)
    # Softmax over the few tokens, written out: with tokens on the second-last axis each step is a
    # vectorised pass over the image tokens, where a Softmax node over a last axis of length T is not.
    weights = torch.exp(scores - scores.amax(dim=2, keepdim=True))
    weights = weights / weights.sum(dim=2, keepdim=True)
    return weights.reshape(b, h * t, -1).transpose(1, 2) @ values


def attend_tokens_to_image(attn, token_q: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor) -> torch.Tensor:
    """`attn(q=token_q, k=image_k, v=image_v)` → (B, T, C). image_k, image_v: (B|1, N, C).
    k_proj's bias adds the same q·b to all of a query's scores, which softmax ignores; v_proj's bias passes
    through unchanged because each query's weights sum to one."""
    h = attn.num_heads
    q = _heads(attn.q_proj(token_q), h)  # (B, h, T, d)
    b, _, t, d = q.shape
    queries = (q @ attn.k_proj.weight.reshape(h, d, -1)).reshape(b, h * t, -1) / math.sqrt(d)
    weights = torch.softmax(queries @ image_k.transpose(1, 2), dim=-1)  # (B, h·T, N)
    mixed = (weights @ image_v).reshape(b, h, t, -1)  # (B, h, T, C)
    out = mixed @ attn.v_proj.weight.reshape(h, d, -1).transpose(1, 2) + attn.v_proj.bias.reshape(h, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, h * d))


def two_way_transformer(transformer, prompt: torch.Tensor, keys: torch.Tensor, pe: torch.Tensor,
                        first_block: tuple[torch.Tensor, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's TwoWayTransformer on (B, T, C) prompt tokens and (B|1, N, C) image tokens with their (1, N, C)
    positional encoding, its cross-attention reassociated as above. `first_block`: `DecoderImagePart`'s
    projections, valid when the image tokens carry no mask input. Returns (queries, keys)."""
    queries = prompt
    for i, block in enumerate(transformer.layers):
        if block.skip_first_layer_pe:
            queries = block.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + prompt
            queries = queries + block.self_attn(q=q, k=q, v=queries)
        queries = block.norm1(queries)
        to_image, to_token = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        if i == 0 and first_block is not None:
            image_keys, image_values, image_queries = first_block
            q = _heads(to_image.q_proj(queries + prompt), to_image.num_heads)
            queries = block.norm2(queries + _attend(to_image, q, image_keys, image_values))
            queries = block.norm3(queries + block.mlp(queries))
            update = attend_image_to_tokens(to_token, None, queries + prompt, queries, projected_q=image_queries)
        else:
            keys_pe = keys + pe  # both cross-attentions of a block see the same image tokens
            queries = block.norm2(queries + attend_tokens_to_image(to_image, queries + prompt, keys_pe, keys))
            queries = block.norm3(queries + block.mlp(queries))
            update = attend_image_to_tokens(to_token, keys_pe, queries + prompt, queries)
        keys = block.norm4(keys + update)
    final = attend_tokens_to_image(transformer.final_attn_token_to_image, queries + prompt, keys + pe, keys)
    return transformer.norm_final_attn(queries + final), keys


class DecoderImagePart(nn.Module):
    """The image tokens (channels last) and the first block's projections of them: they depend on the image
    only (given no mask input)."""

    def __init__(self, sam) -> None:
        super().__init__()
        self.decoder = PromptDecoder(sam)

    def forward(self, image_embeddings):
        d = self.decoder
        block = d.mask_decoder.transformer.layers[0]
        tokens, pe = d.image_tokens(image_embeddings)
        to_image, to_token = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        return (tokens, _heads(to_image.k_proj(tokens + pe), to_image.num_heads),
                _heads(to_image.v_proj(tokens), to_image.num_heads),
                _heads(to_token.q_proj(tokens + pe), to_token.num_heads))


class PointsDecoder(nn.Module):
    """The decoder for prompts without a mask input, given `DecoderImagePart`'s outputs, which the batch shares."""

    def __init__(self, sam) -> None:
        super().__init__()
        self.decoder = PromptDecoder(sam)

    def forward(self, image_tokens, image_keys, image_values, image_queries, point_coords, point_labels, mask_extent):
        d = self.decoder
        prompt = d.prompt_tokens(d._embed_points(point_coords, point_labels))
        first_block = (image_keys, image_values, image_queries)
        queries, keys = two_way_transformer(d.mask_decoder.transformer, prompt, image_tokens, d.token_pe, first_block)
        return d.outputs(queries, keys, mask_extent)


def upscale_masks(upscaling: nn.Sequential, tokens: torch.Tensor, hyper_in: torch.Tensor, rows, cols) -> torch.Tensor:
    """SAM's mask head (two 2×2 stride-2 transposed convolutions with LayerNorm2d and GELU, then the dot
    product with each mask token's hypernetwork output) computed on channels-last tokens.

    A k2/s2 transposed convolution is a GEMM from C to 4·C' channels followed by depth-to-space. Here each
    convolution is split by its kernel row: the row offset becomes a batch axis of the MatMul and the column
    offset stays in the GEMM's columns, so rows of pixels come out whole and in order. Both convolutions are
    then plain MatMuls, LayerNorm2d a LayerNormalization over the last axis, and depth-to-space one reorder
    of whole mask rows at the end. tokens: (B, rows·cols, C) image tokens from the two-way transformer, row
    by row; rows and cols are ints, or 0-d tensors for a graph that crops at run time."""
    up1, norm, act1, up2, act2 = upscaling
    c1, c2 = up1.out_channels, up2.out_channels
    n, k = rows * cols, hyper_in.shape[1]
    w1 = up1.weight.permute(2, 0, 3, 1).reshape(2, up1.in_channels, 2 * c1)  # (di, C, (dj, c1))
    x = tokens.unsqueeze(1) @ w1  # (B, di, (i, j), (dj, c1))
    x = act1(F.layer_norm(x.reshape(-1, 2, 2 * n, c1) + up1.bias, (c1,), norm.weight, norm.bias, norm.eps))
    w2 = up2.weight.permute(2, 0, 3, 1).reshape(2, c1, 2 * c2)  # (ei, c1, (ej, c2))
    x = act2(x.unsqueeze(2) @ w2 + up2.bias.repeat(2))  # (B, di, ei, (i, j, dj), (ej, c2)); GELU after the bias
    masks = hyper_in[:, None, None] @ x.reshape(-1, 2, 2, 4 * n, c2).transpose(-1, -2)  # (B, di, ei, K, (i, j, dj, ej))
    masks = masks.reshape(-1, 4, k, rows, 4 * cols).permute(0, 2, 3, 1, 4)  # (B, K, i, (di, ei), (j, dj, ej))
    return masks.reshape(-1, k, 4 * rows, 4 * cols)


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
            sam.image_encoder, (torch.zeros(1, 3, size, size),), staged, ENCODER_INPUTS, list(FAMILY.arrays),
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
    """The general decoder graph; with `export_points_decoder`, `path`'s `_image` and `_points` siblings."""
    _export(PromptDecoder(sam).eval(), decoder_example_inputs(sam), path, FAMILY.decoder_inputs, DECODER_OUTPUTS,
            {**PROMPT_AXES, "mask_input": {0: "batch"}, "has_mask_input": {0: "batch"}})


@torch.no_grad()
def export_points_decoder(sam, image_path: Path, points_path: Path) -> None:
    """The split decoder for prompts without a mask input: `DecoderImagePart` and `PointsDecoder`."""
    embeddings, coords, labels = decoder_example_inputs(sam)[:3]
    image_part = DecoderImagePart(sam).eval()
    _export(image_part, (embeddings,), image_path, ["image_embeddings"], IMAGE_FEATURES, None)
    side = embeddings.shape[-1]
    extent = torch.tensor([side - 1, side - 2])  # traced as a crop of any size
    _export(PointsDecoder(sam).eval(), (*image_part(embeddings), coords, labels, extent), points_path,
            POINTS_INPUTS, DECODER_OUTPUTS, POINTS_AXES)


def reference_image_encoder(model) -> nn.Module:
    """The official module that computes what the encoder graph does (the GPU check's fp32 reference)."""
    return model.image_encoder


def save_torch_encoder(sam, path: Path) -> tuple[dict, dict]:
    """The image encoder's weights for the torch backend → (its architecture, the manifest's encoder options)."""
    from maskserve.engines import torch_backend

    return torch_backend.save_encoder(sam.image_encoder.state_dict(), path), {"attention": "bias"}


def write_model_dir(sam, spec, checkpoint, model_type, staging, backend, precision,
                    max_encoder_batch, max_decoder_batch, max_points, save_torch_encoder=save_torch_encoder
                    ) -> Manifest:
    """A SAM model directory in `staging`: the general and split decoder graphs, the encoder (a graph, or for the
    torch backend the checkpoint's encoder weights, as `save_torch_encoder` writes them), the manifest, then
    TensorRT engines if asked."""
    from .builder import onnx_manifest, save_and_compile, torch_encoder

    if backend != "torch":  # the torch backend runs the checkpoint's own encoder weights, not a graph
        export_encoder(sam, staging / "encoder.onnx")
    export_decoder(sam, staging / "decoder.onnx")
    export_points_decoder(sam, staging / "decoder_image.onnx", staging / "decoder_points.onnx")
    manifest = onnx_manifest(spec, model_type, checkpoint, {"file": "decoder.onnx", "image_file": "decoder_image.onnx",
                                                           "points_file": "decoder_points.onnx"})
    if backend == "torch":
        from maskserve.engines.torch_backend import ENCODER_FILE

        architecture, options = save_torch_encoder(sam, staging / ENCODER_FILE)
        torch_encoder(manifest, precision, max_encoder_batch, architecture, **options)
    return save_and_compile(staging, manifest, backend, precision, max_encoder_batch, max_decoder_batch, max_points)
