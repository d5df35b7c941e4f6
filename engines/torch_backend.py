"""The PyTorch encoder backend: SAM's ViT image encoder written for inference, for NVIDIA GPUs through CUDA
(and, slowly, the CPU, so that CI checks it); SAM 2.1's Hiera is torch_hiera's, run by the same `TorchEncoder`.
The decoder of a torch model directory is the ONNX Runtime one.

The network is this module's own, not segment_anything's, and loads the `image_encoder.*` weights of Meta's
checkpoint format (the model directory's `encoder.pt` is that part of the checkpoint, keys without the prefix):
patch embedding, absolute position embedding, blocks of pre-norm attention (windowed, or global in a few
blocks) with SAM's decomposed relative positions, MLP, then the neck (1×1 conv, LayerNorm2d, 3×3 conv,
LayerNorm2d). The architecture is read off the weights' shapes: nothing else has to agree with them.

Attention is one fused `scaled_dot_product_attention` call per block. SAM adds to each query's scores a term
per key row and one per key column, each the query's dot product with a table of relative positions; two
ways to give that to the fused kernel (`attention`):
  "bias": the terms as an additive attention bias (B, heads, N, N), materialised in the compute precision;
  "fold": no bias at all: the query is extended by its row and column terms and the key by the one-hot of its
          row and column, so q'·k' = q·k + terms, and the value padded to the same width. The kernel may then
          be the flash one (which takes no bias), at 2–3× the attention's arithmetic.
Both compute the reference's function; which is faster is the GPU's to say (`maskserve.build.gpu_check`).

Precision (`fp32`, `bf16`, `fp16`): in reduced precision the blocks' matrix products and attention run in it
while the residual stream, every LayerNorm, the relative-position terms' products and the attention's
softmax (inside the fused kernel) stay in fp32, as the TensorRT FP16 build keeps normalisations, softmax
and reductions in FP32 (ViT-H in pure FP16 is known to produce garbage). The patch embedding and the neck
stay fp32 too (cuDNN may run them as TF32): about 2 % of ViT-B's arithmetic, under 1 % of ViT-H's, and
measured on the tiny model (CPU, three photos) half of bf16's embedding error and most of fp16's: relative
error 2.3e-3 → 1.0e-3 and 6.2e-4 → 1.1e-4, worst mask IoU of 81 masks 0.977 → 0.986 and 0.995 → 0.998.
Embeddings come back float32, in the layout and under the model version of every other backend, so any
decoder reads them. "fp32" on CUDA is IEEE fp32: the encoder sets the process's TF32 flags (`fp32_flags`).

On CUDA, a batch of images runs as one (`run_size` = the manifest's `max_batch`), each batch size may be
replayed from a captured CUDA graph (`cuda_graphs`: "auto" measures both on the first run of each batch size
and keeps the faster; "on"; "off"), and `compile` puts the network through `torch.compile` (minutes to
compile; off unless the manifest or caller asks). The device is `device` (constructor; the encoder worker
passes MASKSERVE_TORCH_DEVICE), else the manifest's, else "auto": CUDA where available, the CPU otherwise.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import families
from .model_dir import Manifest, ModelDirError

log = logging.getLogger("maskserve.engines.torch")

ENCODER_FILE = "encoder.pt"
PREFIX = "image_encoder."
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTENTION = ("bias", "fold")
GRAPH_MODES = ("auto", "on", "off")
EPS = 1e-6  # SAM's LayerNorm and LayerNorm2d


# -- the network ------------------------------------------------------------------------------------------------


def layer_norm_fp32(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the last axis in fp32, whatever the input's precision."""
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class _Attention(nn.Module):
    """Multi-head self-attention over a (B, h, w, C) grid with SAM's decomposed relative positions."""

    def __init__(self, dim: int, heads: int, size: int, mode: str) -> None:
        super().__init__()
        self.heads, self.size, self.mode = heads, size, mode
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.empty(2 * size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.empty(2 * size - 1, self.head_dim))

    def finalize(self) -> None:
        """Once the weights are in: the tables of relative positions by (query, key) coordinate, fp32, and for
        "fold" each key's one-hot row and column (made here, not per run: a CUDA graph captures no index writes)."""
        i = torch.arange(self.size, device=self.rel_pos_h.device)
        index = i[:, None] - i[None, :] + (self.size - 1)  # (q, k) → row of the table, as get_rel_pos
        self.register_buffer("table_h", self.rel_pos_h.detach().float()[index].contiguous(), persistent=False)
        self.register_buffer("table_w", self.rel_pos_w.detach().float()[index].contiguous(), persistent=False)
        token = torch.arange(self.size * self.size, device=i.device)
        onehot = torch.cat([token[:, None] // self.size == i, token[:, None] % self.size == i], dim=1)
        self.register_buffer("onehot", onehot.float(), persistent=False)  # (n, 2·size): row, then column

    def _terms(self, q: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-key-row and per-key-column terms of each query's scores, (B, heads, h·w, h) and (…, w), fp32.
        As the reference: from the unscaled query."""
        b = q.shape[0]
        grid = q.float().reshape(b, self.heads, h, w, self.head_dim)
        rows = torch.einsum("bnhwc,hkc->bnhwk", grid, self.table_h)
        cols = torch.einsum("bnhwc,wkc->bnhwk", grid, self.table_w)
        return rows.reshape(b, self.heads, h * w, h), cols.reshape(b, self.heads, h * w, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        # (B, n, 3·C) with the 3·C axis ordered (q/k/v, head, channel), as SAM's checkpoint has it.
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        rows, cols = self._terms(q, h, w)
        if self.mode == "bias":
            dtype = q.dtype
            bias = (rows.to(dtype)[..., :, None] + cols.to(dtype)[..., None, :]).reshape(b, self.heads, n, n)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            out = self._folded(q, k, v, rows, cols, h, w)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))

    def _folded(self, q, k, v, rows, cols, h: int, w: int) -> torch.Tensor:
        """Attention without a bias: q' = [q, rows/s, cols/s], k' = [k, onehot(row), onehot(col)] with the
        kernel's scale s, so s·q'·k' = s·q·k + rows[key row] + cols[key column]; v zero-padded to q's width."""
        b, heads, n, d = q.shape
        scale = d ** -0.5
        width = d + h + w
        padded = -(-width // 8) * 8  # fused kernels want a multiple of 8
        onehot = F.pad(self.onehot.to(q.dtype), (0, padded - width))  # (n, padded − d)
        extra = torch.cat([rows, cols], dim=-1) / scale
        qf = torch.cat([q, extra.to(q.dtype), q.new_zeros(b, heads, n, padded - width)], dim=-1)
        kf = torch.cat([k, onehot.expand(b, heads, n, -1)], dim=-1)
        vf = F.pad(v, (0, padded - d))
        return F.scaled_dot_product_attention(qf, kf, vf, scale=scale)[..., :d]


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, window: int, grid: int, mode: str) -> None:
        super().__init__()
        self.window = window  # 0: global attention over the whole grid
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = _Attention(dim, heads, window or grid, mode)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = _MLP(dim, hidden)

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x: (B, H, W, C) fp32, the residual stream."""
        y = layer_norm_fp32(x, self.norm1).to(dtype)
        if self.window:
            y = self._windows(y)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(layer_norm_fp32(x, self.norm2).to(dtype))

    def _windows(self, y: torch.Tensor) -> torch.Tensor:
        """Attention within window × window tiles; the grid zero-padded right and bottom to whole tiles after
        the norm, as the reference does (padding tokens are attended to as keys)."""
        b, h, w, c = y.shape
        s = self.window
        ph, pw = -h % s, -w % s
        if ph or pw:
            y = F.pad(y, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        tiles = y.reshape(b, hp // s, s, wp // s, s, c).transpose(2, 3).reshape(-1, s, s, c)
        out = self.attn(tiles).reshape(b, hp // s, wp // s, s, s, c).transpose(2, 3).reshape(b, hp, wp, c)
        return out[:, :h, :w] if ph or pw else out


class SamViT(nn.Module):
    """SAM's image encoder, (B, 3, S, S) normalised padded images → (B, C, E, E) float32 embeddings."""

    def __init__(self, config: dict, dtype: torch.dtype = torch.float32, attention: str = "bias") -> None:
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        self.config, self.dtype = dict(config), dtype
        dim, grid, patch = config["embed_dim"], config["grid"], config["patch_size"]
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.empty(1, grid, grid, dim))
        self.blocks = nn.ModuleList(
            _Block(dim, config["num_heads"], config["mlp_dim"], window, grid, attention) for window in config["windows"])
        out = config["out_chans"]
        self.neck = nn.Sequential(nn.Conv2d(dim, out, 1, bias=False), nn.LayerNorm(out, eps=EPS),
                                  nn.Conv2d(out, out, 3, padding=1, bias=False), nn.LayerNorm(out, eps=EPS))

    @classmethod
    def from_state_dict(cls, state: dict, dtype: torch.dtype = torch.float32, attention: str = "bias",
                        device: str | torch.device = "cpu") -> "SamViT":
        """The network for a state dict of SAM's image encoder (keys with or without `image_encoder.`)."""
        state = encoder_state_dict(state)
        with torch.device("meta"):
            net = cls(infer_config(state), dtype, attention)
        missing = set(net.state_dict()) - set(state)
        unexpected = set(state) - set(net.state_dict())
        if missing or unexpected:
            raise ModelDirError(f"encoder weights do not fit SAM's ViT: missing {sorted(missing)[:3]}, "
                                f"unexpected {sorted(unexpected)[:3]}")
        net.load_state_dict({k: v.to(device=device, dtype=torch.float32) for k, v in state.items()},
                            strict=True, assign=True)
        for module in net.blocks.modules():  # the blocks' matrix products in the compute precision
            if isinstance(module, nn.Linear):
                module.to(dtype)
        for block in net.blocks:
            block.attn.finalize()
        return net.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(images.float()).permute(0, 2, 3, 1) + self.pos_embed
        for block in self.blocks:
            x = block(x, self.dtype)
        conv1, norm1, conv2, norm2 = self.neck
        y = layer_norm_fp32(conv1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), norm1)
        y = layer_norm_fp32(conv2(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1), norm2)
        return y.permute(0, 3, 1, 2).contiguous()  # the (B, C, E, E) layout every backend stores


def load_recorded(make, state: dict, what: str, device: str | torch.device) -> nn.Module:
    """The network `make()` builds from a manifest's recorded architecture, with `state` loaded on `device` in
    fp32; a record that cannot be built, or weights that do not fit it, are refused naming the difference."""
    try:
        with torch.device("meta"):
            net = make()
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelDirError(f"malformed {what} encoder architecture in the manifest: "
                            f"{exc.__class__.__name__}: {exc}") from None
    expected = net.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ModelDirError(f"encoder weights do not fit the recorded {what} architecture: missing "
                            f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}, other shapes {wrong[:3]}")
    net.load_state_dict({k: v.to(device=device, dtype=torch.float32) for k, v in state.items()},
                        strict=True, assign=True)
    return net


def encoder_state_dict(state: dict) -> dict:
    """The image encoder's part of a SAM state dict, keys without `image_encoder.` (a bare encoder's passes)."""
    if any(k.startswith(PREFIX) for k in state):
        return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    return dict(state)


def infer_config(state: dict) -> dict:
    """SAM's ViT hyper-parameters from its weights' shapes: width and patch from the patch embedding, grid from
    the position embedding, head width from the relative-position tables, global blocks as those whose table
    spans the whole grid."""
    try:
        dim, _, patch, _ = state["patch_embed.proj.weight"].shape
        grid = state["pos_embed"].shape[1]
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        head_dim = state["blocks.0.attn.rel_pos_h"].shape[1]
        windows = []
        for i in range(depth):
            size = (state[f"blocks.{i}.attn.rel_pos_h"].shape[0] + 1) // 2
            windows.append(0 if size == grid else size)
        return {"embed_dim": int(dim), "patch_size": int(patch), "grid": int(grid), "image_size": int(grid * patch),
                "depth": depth, "num_heads": int(dim // head_dim), "windows": windows,
                "mlp_dim": int(state["blocks.0.mlp.lin1.weight"].shape[0]),
                "out_chans": int(state["neck.0.weight"].shape[0])}
    except KeyError as exc:
        raise ModelDirError(f"encoder weights are not SAM's ViT image encoder: no {exc.args[0]}") from None


def save_encoder(image_encoder_state: dict, path: Path) -> dict:
    """Write the image encoder's weights (fp32 state dict, Meta's key names without the prefix) for a model
    directory; returns its architecture for the manifest (informative: the loader reads it off the weights)."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in encoder_state_dict(image_encoder_state).items()}
    config = infer_config(state)
    torch.save(state, path)
    return config


# -- the runner ---------------------------------------------------------------------------------------------------


def resolve_device(requested: str | None) -> torch.device:
    name = (requested or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelDirError(f"the torch encoder was asked to run on {name}, but PyTorch sees no CUDA device "
                            f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    return device


class _Graph:
    """One batch size's forward pass captured as a CUDA graph: copy in, replay, read the static output."""

    def __init__(self, net, example: torch.Tensor, pool) -> None:
        self.input = example.clone()
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up outside the capture: library handles, workspace, autotuning
                net(self.input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool), torch.inference_mode():
            self.output = net(self.input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        return self.output


class TorchEncoder:
    """The `Encoder` of a model directory whose manifest's backend is "torch"."""

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None = None, *,
                 device: str | None = None, precision: str | None = None, attention: str | None = None,
                 cuda_graphs: str | None = None, compile: bool | None = None, max_batch: int | None = None) -> None:
        part = manifest.encoder
        self.device = resolve_device(device or part.get("device"))
        self.precision = precision or manifest.precision
        if self.precision not in DTYPES:
            raise ModelDirError(f"{model_dir}: torch encoder precision {self.precision!r}; expected one of "
                                f"{', '.join(DTYPES)}")
        self.attention = attention or part.get("attention", "bias")
        self.graph_mode = cuda_graphs or part.get("cuda_graphs", "auto")
        if self.graph_mode not in GRAPH_MODES:
            raise ModelDirError(f"{model_dir}: cuda_graphs {self.graph_mode!r}; expected one of {', '.join(GRAPH_MODES)}")
        if threads and self.device.type == "cpu":
            torch.set_num_threads(threads)
        if self.device.type == "cuda":
            fp32_flags(self.precision)
        state = torch.load(Path(model_dir) / part["file"], map_location="cpu", weights_only=True)
        self.outputs = manifest.array_names  # the embedding's arrays, layout order
        self.net, (size, channels, grid) = families.of(manifest).torch_encoder(
            model_dir, state, part, DTYPES[self.precision], self.attention, self.device)
        c, e, _ = manifest.embedding_shape
        if (size, channels, grid) != (manifest.image_size, c, e):
            raise ModelDirError(f"{model_dir}: {part['file']} is a {size}-pixel encoder of {channels} channels, "
                                f"the manifest says {manifest.image_size} and {manifest.embedding_shape}")
        self.image_size = manifest.image_size
        self.cuda = self.device.type == "cuda"
        self.max_batch = int(max_batch or part.get("max_batch", 8))
        # Images per run: the GPU's batch; on the CPU one (a batch buys no throughput there, see OnnxEncoder).
        self.run_size = self.max_batch if self.cuda else 1
        self.forward = self.net
        if (part.get("compile", False) if compile is None else compile) and self.cuda:
            self.forward = torch.compile(self.net, dynamic=False)
        self.graphs: dict[int, _Graph | None] = {}  # batch size → its graph, or None where eager was faster
        # One memory pool for every batch size's graph: replays never overlap (one caller) and each output is
        # copied out before the next, so the graphs' intermediates can share memory (the largest, not the sum).
        self.pool = None
        self.choices: dict[int, dict] = {}  # what "auto" measured, per batch size

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 → (B, C, E, E) float32, in runs of at most max_batch images."""
        if len(self.outputs) > 1:
            raise TypeError(f"this model's embedding is {len(self.outputs)} arrays ({', '.join(self.outputs)}): "
                            f"use encode_arrays")
        return self.encode_arrays(images)[self.outputs[0]]

    def encode_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, S, S) float32 → {name: (B, *shape) float32} for every array of the embedding."""
        images = np.ascontiguousarray(images, np.float32)
        runs = [as_tuple(self.encode_tensor(torch.from_numpy(images[i:i + self.max_batch])))
                for i in range(0, len(images), self.max_batch)]
        return {name: np.concatenate([run[k].cpu().numpy() for run in runs]) for k, name in enumerate(self.outputs)}

    @torch.inference_mode()
    def encode_tensor(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """(B, 3, S, S) on any device → the embedding on this encoder's device, fresh tensors: SAM's (B, C, E, E)
        float32, SAM 2.1's three arrays as a tuple in layout order."""
        x = images.to(self.device, torch.float32, non_blocking=True)
        if not self.cuda or self.graph_mode == "off":
            return self.forward(x)
        graph = self._graph(x)
        if graph is None:
            return self.forward(x)
        out = graph(x)
        return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

    def _graph(self, x: torch.Tensor) -> _Graph | None:
        b = x.shape[0]
        if b not in self.graphs:
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = _Graph(self.forward, x, self.pool)
            if self.graph_mode == "auto":
                eager, replay = _time_cuda(lambda: self.forward(x)), _time_cuda(lambda: graph(x))
                self.choices[b] = {"eager_ms": eager * 1e3, "graph_ms": replay * 1e3, "graph": replay < eager}
                log.info("torch encoder, batch %d: eager %.2f ms, CUDA graph %.2f ms: %s", b, eager * 1e3,
                         replay * 1e3, "graph" if replay < eager else "eager")
                if replay >= eager:
                    graph = None  # its memory goes back to the shared pool, for the other sizes
            self.graphs[b] = graph
        return self.graphs[b]


def as_tuple(out) -> tuple:
    """An encoder network's output as the tuple of its arrays (SAM's one tensor, SAM 2.1's three)."""
    return out if isinstance(out, tuple) else (out,)


def _time_cuda(fn, repeats: int = 3) -> float:
    """Median seconds of `fn` on the current CUDA stream, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def fp32_flags(precision: str) -> None:
    """The process's fp32 arithmetic for an encoder of `precision`: "fp32" IEEE throughout (no TF32); bf16 and
    fp16 let cuDNN run their fp32 edges (patch embedding, neck) as TF32, PyTorch's default, with fp32 matrix
    products (the relative-position terms) IEEE. Through the legacy flags: the newer per-backend API makes any
    later reader of the legacy ones (torch.compile's cache key among them) raise."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = precision != "fp32"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall(fn, device: torch.device) -> float:
    """Seconds of one call of `fn`, synchronised on `device`."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start
