"""SAM 3's vision backbone for the torch backend: the ViT (windowed and global blocks with 2-D rotary positions)
and both of its necks, computing in one run every array of a SAM 3 embedding — the interactive head's three
(SAM 2.1's layout: the neck's 1× level plus `no_mem_embed`, the 4× and 2× levels through the mask decoder's
conv_s0 and conv_s1) and the concept detector's feature pyramid (`fpn_0..2`), as `Sam3Processor.set_image`
and the model directory's `encoder.onnx` do.

The network is this module's own, not the `sam3` package's (which the serving side does not install), and
loads Meta's weights under their names in the image model (`build/sam3_export.image_state`), mapped by `PARTS`
to encoder.pt's. What the weights do not say (heads, windows, global blocks, the rotary scale) the build
records from the official model (`architecture`, in the manifest); the loader checks the weights against it.

Precision as SAM's ViT in torch_backend: in bf16/fp16 the blocks' attention and MLP products run in it while
the residual stream, every LayerNorm, the rotary rotation (fp32 in the reference too), the patch and position
embeddings and the necks stay fp32. Attention is one fused call per block, with no bias (the flash kernel where
the GPU has one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .torch_backend import layer_norm_fp32, load_recorded
from .torch_hiera import _partition, _unpartition

EPS = 1e-5  # the ViT's LayerNorm (torch's default, as the package builds it)
SCALES = (4.0, 2.0, 1.0)  # the neck levels a SAM 3 embedding keeps (the package's fourth, 0.5×, is unused)
# The image model's parts this encoder runs, under their names there → under encoder.pt's.
PARTS = {"backbone.vision_backbone.trunk.": "trunk.",
         **{f"backbone.vision_backbone.{neck}.{i}.": f"{neck}.{i}." for neck in ("convs", "sam2_convs")
            for i in range(len(SCALES))},
         "inst_interactive_predictor.model.sam_mask_decoder.conv_s0.": "conv_s0.",
         "inst_interactive_predictor.model.sam_mask_decoder.conv_s1.": "conv_s1.",
         "inst_interactive_predictor.model.no_mem_embed": "no_mem_embed"}


def axial_rotary(head_dim: int, side: int, scale: float, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (side², head_dim / 2) of the 2-D rotary embedding on a side × side grid, row-major: the first
    half of each head's pairs turn with the column, the second with the row, positions scaled by `scale`."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[: head_dim // 4].float() / head_dim))
    t = torch.arange(side * side, dtype=torch.float32)
    x, y = (t % side) * scale, torch.div(t, side, rounding_mode="floor") * scale
    angles = torch.cat([torch.outer(x, freqs), torch.outer(y, freqs)], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Each adjacent pair (a, b) of the last axis turned by its angle, in fp32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, side: int, rope_pretrain: int | None) -> None:
        super().__init__()
        self.heads, self.side = heads, side
        self.rope_scale = rope_pretrain / side if rope_pretrain else 1.0  # positions interpolated to pretraining's
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def finalize(self, device) -> None:
        cos, sin = axial_rotary(self.qkv.in_features // self.heads, self.side, self.rope_scale)
        self.register_buffer("cos", cos.to(device), persistent=False)
        self.register_buffer("sin", sin.to(device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = rotate(q, self.cos, self.sin).to(v.dtype), rotate(k, self.cos, self.sin).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, window: int, grid: int, rope_pretrain: int | None) -> None:
        super().__init__()
        self.window = window  # 0: global attention over the whole grid
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = _Attention(dim, heads, window or grid, rope_pretrain)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = _MLP(dim, hidden)

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x: (B, H, W, C) fp32, the residual stream."""
        y = layer_norm_fp32(x, self.norm1).to(dtype)
        if self.window:
            tiles, padded = _partition(y, self.window)
            y = _unpartition(self.attn(tiles), self.window, padded, y.shape[1:3])
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(layer_norm_fp32(x, self.norm2).to(dtype))


def _neck(dim: int, d_model: int, scale: float) -> nn.Sequential:
    """One level of the simple FPN, its modules named as the package names them (so the weights load as they are)."""
    level = nn.Sequential()
    if scale == 4.0:
        level.add_module("dconv_2x2_0", nn.ConvTranspose2d(dim, dim // 2, 2, 2))
        level.add_module("gelu", nn.GELU())
        level.add_module("dconv_2x2_1", nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2))
    elif scale == 2.0:
        level.add_module("dconv_2x2", nn.ConvTranspose2d(dim, dim // 2, 2, 2))
    level.add_module("conv_1x1", nn.Conv2d(int(dim // scale) if scale > 1 else dim, d_model, 1))
    level.add_module("conv_3x3", nn.Conv2d(d_model, d_model, 3, padding=1))
    return level


class VisionEncoder(nn.Module):
    """(B, 3, 1008, 1008) normalised images → (image_embeddings, high_res_feats_0, high_res_feats_1, fpn_0, fpn_1,
    fpn_2), float32."""

    def __init__(self, arch: dict, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.arch, self.dtype = dict(arch), dtype
        dim, d_model, grid = arch["embed_dim"], arch["d_model"], arch["image_size"] // arch["patch_size"]
        self.trunk = nn.Module()
        self.trunk.patch_embed = nn.Module()
        self.trunk.patch_embed.proj = nn.Conv2d(3, dim, arch["patch_size"], arch["patch_size"], bias=False)
        self.trunk.pos_embed = nn.Parameter(torch.empty(1, arch["pretrain_grid"] ** 2 + 1, dim))  # with the CLS slot
        self.trunk.ln_pre = nn.LayerNorm(dim, eps=EPS)
        self.trunk.blocks = nn.ModuleList(
            _Block(dim, arch["num_heads"], arch["mlp_dim"], 0 if i in arch["global_blocks"] else arch["window"], grid,
                   arch["rope_pretrain"]) for i in range(arch["depth"]))
        self.convs = nn.ModuleList(_neck(dim, d_model, s) for s in SCALES)  # the concept detector's neck
        self.sam2_convs = nn.ModuleList(_neck(dim, d_model, s) for s in SCALES)  # the interactive head's
        self.conv_s0 = nn.Conv2d(d_model, d_model // 8, 1)
        self.conv_s1 = nn.Conv2d(d_model, d_model // 4, 1)
        self.no_mem_embed = nn.Parameter(torch.empty(1, 1, d_model))

    @classmethod
    def from_state_dict(cls, state: dict, arch: dict, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "VisionEncoder":
        net = load_recorded(lambda: cls(arch, dtype), encoder_state_dict(state), "SAM 3", device)
        for block in net.trunk.blocks:  # attention and MLP products in the compute precision
            block.attn.to(dtype)
            block.mlp.to(dtype)
            block.attn.finalize(device)  # its rotary tables fp32
        net.finalize()
        return net.eval().requires_grad_(False)

    def finalize(self) -> None:
        """The position embedding on the input's grid, as the ViT makes it each run: the pretraining table
        without its CLS slot, tiled."""
        table, side = self.trunk.pos_embed.detach()[:, 1:], self.arch["pretrain_grid"]
        grid = self.arch["image_size"] // self.arch["patch_size"]
        tiles = -(-grid // side)
        pos = table.reshape(1, side, side, -1).tile(1, tiles, tiles, 1)[:, :grid, :grid]
        self.register_buffer("pos", pos.contiguous(), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.trunk.patch_embed.proj(images.float()).permute(0, 2, 3, 1) + self.pos
        x = layer_norm_fp32(x, self.trunk.ln_pre)
        for block in self.trunk.blocks:
            x = block(x, self.dtype)
        x = x.permute(0, 3, 1, 2)
        s0, s1, s2 = (level(x) for level in self.sam2_convs)
        interactive = (s2 + self.no_mem_embed.reshape(1, -1, 1, 1), self.conv_s0(s0), self.conv_s1(s1))
        return tuple(t.contiguous() for t in (*interactive, *(level(x) for level in self.convs)))


def encoder_state_dict(state: dict) -> dict:
    """The encoder's weights of a SAM 3 image model's state dict under encoder.pt's names (an encoder.pt's pass
    unchanged); the rotary tables, buffers the package keeps in its state, are made here instead."""
    if not any(k.startswith("backbone.") for k in state):
        return {k: v for k, v in state.items() if not k.endswith(".freqs_cis")}
    out = {}
    for k, v in state.items():
        for prefix, name in PARTS.items():
            if k.startswith(prefix) and not k.endswith(".freqs_cis"):
                out[name + k[len(prefix):]] = v
    return out


def architecture(model) -> dict:
    """What the loader needs and the weights do not say, read off the official model (a `sam3` Sam3Image with its
    interactive head); refuses a model whose image path this module does not compute."""
    neck = model.backbone.vision_backbone
    trunk = neck.trunk
    blocks = list(trunk.blocks)
    unsupported = []
    if tuple(neck.scale_factors[:len(SCALES)]) != SCALES or neck.sam2_convs is None:
        unsupported.append(f"neck scales {neck.scale_factors}")
    if trunk.retain_cls_token or not trunk.tile_abs_pos or not isinstance(trunk.ln_pre, nn.LayerNorm) \
            or not isinstance(trunk.ln_post, nn.Identity):
        unsupported.append("a ViT other than SAM 3's (CLS token kept, interpolated positions or other norms)")
    if any(b.attn.use_rel_pos or not b.attn.use_rope or not isinstance(b.ls1, nn.Identity) for b in blocks):
        unsupported.append("relative positions, no rotary embedding or layer scale")
    if unsupported:
        raise ValueError(f"the torch backend does not run this SAM 3 vision backbone: {'; '.join(unsupported)}")
    patch = int(trunk.patch_embed.proj.kernel_size[0])
    grid = int(max(b.attn.input_size[0] for b in blocks))
    globals_ = [i for i, b in enumerate(blocks) if not b.window_size]
    attn = blocks[globals_[0]].attn if globals_ else blocks[0].attn
    return {
        "image_size": grid * patch, "patch_size": patch, "embed_dim": int(trunk.patch_embed.proj.out_channels),
        "depth": len(blocks), "num_heads": int(blocks[0].attn.num_heads),
        "mlp_dim": int(blocks[0].mlp.fc1.out_features), "window": int(max(b.window_size for b in blocks)),
        "global_blocks": globals_, "pretrain_grid": int(round((trunk.pos_embed.shape[1] - 1) ** 0.5)),
        "rope_pretrain": int(attn.rope_pt_size[0]) if attn.rope_interp else None,
        "d_model": int(neck.convs[0].conv_1x1.out_channels),
    }


def save_encoder(model, path) -> dict:
    """Write the encoder's weights (fp32) for a torch model directory; returns the architecture for the manifest."""
    arch = architecture(model)
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in encoder_state_dict(model.state_dict()).items()}
    torch.save(state, path)
    return arch
