"""SAM 2.1's image encoder for the torch backend: the Hiera trunk, the FPN neck, and what
SAM2ImagePredictor.set_image makes of them — the stride-16 level plus `no_mem_embed` (`image_embeddings`), the
stride-4 and stride-8 levels through the mask decoder's conv_s0 and conv_s1 (`high_res_feats_0`, `_1`).

The network is this module's own, not the `sam2` package's (which the serving side does not install), and
loads Meta's checkpoint weights under their names (`trunk.*`, `neck.*`, `conv_s0.*`, `conv_s1.*`,
`no_mem_embed`: the model directory's `encoder.pt`, written by `save_encoder`). Hiera's heads, windows and
global blocks cannot be read off the weights, so the build records them from the official model
(`architecture`, in the manifest) and the loader checks the weights against that record.

Precision as SAM's ViT in torch_backend: in bf16/fp16 the blocks' attention and MLP run in it, while the residual
stream, every LayerNorm, the patch embedding, the stage transitions' shortcut projections, the neck and the
high-resolution projections stay fp32. Hiera's attention has no relative-position term, so it is one plain
fused attention call per block (the flash kernel where the GPU has one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .torch_backend import layer_norm_fp32, load_recorded

EPS = 1e-6  # Hiera's LayerNorm
# The checkpoint's parts this encoder runs, under their names there → under encoder.pt's.
PARTS = {"image_encoder.": "", "sam_mask_decoder.conv_s0.": "conv_s0.", "sam_mask_decoder.conv_s1.": "conv_s1.",
         "no_mem_embed": "no_mem_embed"}


def _pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max pooling of a (B, H, W, C) grid by `stride`, as Hiera's q_pool (floor: a trailing odd row is dropped)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), stride, stride).permute(0, 2, 3, 1)


def _partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) → (B·tiles, window, window, C), zero-padded right and bottom to whole tiles."""
    b, h, w, c = x.shape
    ph, pw = -h % window, -w % window
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    tiles = x.reshape(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    return tiles.reshape(-1, window, window, c), (hp, wp)


def _unpartition(tiles: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = tiles.shape[0] // ((hp // window) * (wp // window))
    x = tiles.reshape(b, hp // window, wp // window, window, window, -1).transpose(2, 3).reshape(b, hp, wp, -1)
    return x[:, :size[0], :size[1]]


class _Attention(nn.Module):
    """Hiera's multi-scale attention: at a stage's first block the queries are max-pooled by the stride, so the
    output has the next stage's resolution and width."""

    def __init__(self, dim: int, dim_out: int, heads: int, stride: int) -> None:
        super().__init__()
        self.heads, self.stride = heads, stride
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).unbind(2)
        if self.stride:
            q = _pool(q.reshape(b, h, w, -1), self.stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](F.gelu(self.layers[0](x)))


class _Block(nn.Module):
    def __init__(self, dim: int, dim_out: int, heads: int, window: int, stride: int) -> None:
        super().__init__()
        self.window, self.stride = window, stride  # window 0: global attention
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = _Attention(dim, dim_out, heads, stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=EPS)
        self.mlp = _MLP(dim_out, 4 * dim_out)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None  # the shortcut's, at a stage's start

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x: (B, H, W, C) fp32, the residual stream."""
        y = layer_norm_fp32(x, self.norm1)
        shortcut = x
        if self.proj is not None:
            shortcut = self.proj(y)
            if self.stride:
                shortcut = _pool(shortcut, self.stride)
        y = y.to(dtype)
        if not self.window:
            return self._mlp(shortcut + self.attn(y), dtype)
        tiles, padded = _partition(y, self.window)
        out = self.attn(tiles)
        window, size = self.window, y.shape[1:3]
        if self.stride:  # the tiles came back pooled: unpartition at the next stage's resolution
            window, size = window // self.stride, shortcut.shape[1:3]
            padded = tuple(-(-s // window) * window for s in size)
        return self._mlp(shortcut + _unpartition(out, window, padded, size), dtype)

    def _mlp(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return x + self.mlp(layer_norm_fp32(x, self.norm2).to(dtype))


class HieraEncoder(nn.Module):
    """(B, 3, S, S) normalised images → (image_embeddings, high_res_feats_0, high_res_feats_1), float32."""

    def __init__(self, arch: dict, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.arch, self.dtype = dict(arch), dtype
        dim, d_model = arch["embed_dim"], arch["d_model"]
        self.trunk = nn.Module()
        self.trunk.patch_embed = nn.Module()
        self.trunk.patch_embed.proj = nn.Conv2d(3, dim, 7, 4, 3)
        self.trunk.pos_embed = nn.Parameter(torch.empty(1, dim, *arch["pos_embed_size"]))
        self.trunk.pos_embed_window = nn.Parameter(torch.empty(1, dim, arch["pos_window"], arch["pos_window"]))
        blocks = []
        for dim_out, heads, window, stride in arch["blocks"]:
            blocks.append(_Block(dim, dim_out, heads, window, stride))
            dim = dim_out
        self.trunk.blocks = nn.ModuleList(blocks)
        self.neck = nn.Module()
        self.neck.convs = nn.ModuleList(nn.Sequential() for _ in arch["stage_ends"])
        for conv, i in zip(self.neck.convs, reversed(arch["stage_ends"])):  # convs[0]: the coarsest stage
            conv.add_module("conv", nn.Conv2d(arch["blocks"][i][0], d_model, 1))
        self.conv_s0 = nn.Conv2d(d_model, d_model // 8, 1)
        self.conv_s1 = nn.Conv2d(d_model, d_model // 4, 1)
        self.no_mem_embed = nn.Parameter(torch.empty(1, 1, d_model))

    @classmethod
    def from_state_dict(cls, state: dict, arch: dict, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "HieraEncoder":
        net = load_recorded(lambda: cls(arch, dtype), encoder_state_dict(state), "SAM 2.1", device)
        for block in net.trunk.blocks:  # attention and MLP in the compute precision; the shortcut's proj fp32
            block.attn.to(dtype)
            block.mlp.to(dtype)
        net.finalize()
        return net.eval().requires_grad_(False)

    def finalize(self) -> None:
        """The position embedding at the input's grid, computed once as Hiera computes it per run: the background
        table resized bicubically, plus the window table tiled."""
        side = self.arch["image_size"] // 4
        trunk = self.trunk
        pos = F.interpolate(trunk.pos_embed.detach(), size=(side, side), mode="bicubic")
        window = trunk.pos_embed_window.detach()
        pos = pos + window.tile([1, 1, side // window.shape[2], side // window.shape[3]])
        self.register_buffer("pos", pos.permute(0, 2, 3, 1).contiguous(), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.trunk.patch_embed.proj(images.float()).permute(0, 2, 3, 1) + self.pos
        stages = []
        for i, block in enumerate(self.trunk.blocks):
            x = block(x, self.dtype)
            if i in self.arch["stage_ends"]:
                stages.append(x.permute(0, 3, 1, 2))
        levels, n, previous = [None] * len(stages), len(stages) - 1, None
        for i in range(n, -1, -1):  # the FPN, coarsest first: a top-down level adds the coarser one, upsampled
            lateral = self.neck.convs[n - i].conv(stages[i])
            if i in self.arch["top_down_levels"] and previous is not None:
                lateral = lateral + F.interpolate(previous, scale_factor=2.0, mode="nearest")
            levels[i] = previous = lateral
        levels = levels[:len(levels) - self.arch["scalp"]][-self.arch["feature_levels"]:]
        embedding = levels[-1]
        if self.arch["add_no_mem_embed"]:
            embedding = embedding + self.no_mem_embed.reshape(1, -1, 1, 1)
        return embedding.contiguous(), self.conv_s0(levels[0]).contiguous(), self.conv_s1(levels[1]).contiguous()


def encoder_state_dict(state: dict) -> dict:
    """The encoder's weights of a SAM 2.1 state dict under encoder.pt's names (an encoder.pt's pass unchanged)."""
    if not any(k.startswith("image_encoder.") for k in state):
        return dict(state)
    out = {}
    for k, v in state.items():
        for prefix, name in PARTS.items():
            if k.startswith(prefix):
                out[name + k[len(prefix):]] = v
    return out


def architecture(model) -> dict:
    """What the loader needs and the weights do not say, read off the official model (a `sam2` SAM2Base); refuses
    a model whose image path this module does not compute."""
    encoder, trunk, neck = model.image_encoder, model.image_encoder.trunk, model.image_encoder.neck
    unsupported = []
    if neck.fuse_type != "sum" or neck.fpn_interp_model != "nearest":
        unsupported.append(f"FPN fusion {neck.fuse_type}/{neck.fpn_interp_model}")
    if any(c.conv.kernel_size != (1, 1) for c in neck.convs):
        unsupported.append("FPN lateral convolutions other than 1×1")
    if not model.use_high_res_features_in_sam or model.num_feature_levels != 3:
        unsupported.append("an image path without the high-resolution features")
    if any(b.q_stride and b.q_stride[0] != b.q_stride[1] for b in trunk.blocks):
        unsupported.append("non-square query pooling")
    if unsupported:
        raise ValueError(f"the torch backend does not run this SAM 2.1 image encoder: {'; '.join(unsupported)}")
    return {
        "image_size": int(model.image_size), "embed_dim": int(trunk.patch_embed.proj.out_channels),
        "d_model": int(neck.d_model), "pos_embed_size": list(trunk.pos_embed.shape[2:]),
        "pos_window": int(trunk.pos_embed_window.shape[2]),
        "blocks": [[b.dim_out, b.attn.num_heads, b.window_size, b.q_stride[0] if b.q_stride else 0]
                   for b in trunk.blocks],
        "stage_ends": list(trunk.stage_ends), "top_down_levels": list(neck.fpn_top_down_levels),
        "scalp": int(encoder.scalp), "feature_levels": int(model.num_feature_levels),
        "add_no_mem_embed": bool(model.directly_add_no_mem_embed),
    }


def save_encoder(model, path) -> dict:
    """Write the encoder's weights (fp32) for a torch model directory; returns the architecture for the manifest."""
    arch = architecture(model)
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in encoder_state_dict(model.state_dict()).items() if not k.startswith("neck.position_encoding")}
    torch.save(state, path)
    return arch
