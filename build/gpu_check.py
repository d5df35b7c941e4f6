"""The torch encoder backend's GPU figures in one run, written for the lent GPU machine (docs/deployment.md, "GPU encoder").

For each model (ViT-B and ViT-H by default; MobileSAM's `vit_t` given `mobile_sam`, SAM 2.1's `sam2.1_hiera_*` given
the `sam2` package, SAM 3's vision backbone `sam3` given `sam3` and `open_clip`, scaled down with --quick) it makes
seeded random weights in Meta's checkpoint format on the machine itself (nothing big travels; the
zero-initialised position tables are filled too, so that the position paths are exercised), builds a torch
model directory from them the way `maskserve build --backend torch` does, and measures, each stage time-boxed
and the JSON rewritten after every stage (a timeout still leaves what was measured):
  parity    the official image encoder (segment_anything's; for SAM 2.1 the `sam2` modules that
            SAM2ImagePredictor.set_image runs; for SAM 3 the `sam3` modules of Sam3Processor.set_image) in fp32
            (TF32 off) on the same GPU as the reference; the torch encoder in fp32, bf16 and fp16: max abs and
            relative error (the worst of SAM 2.1's three arrays, of SAM 3's six), non-finite values, and the
            IoU of the masks that the model directory's ONNX decoder makes from either embedding for a grid of
            point prompts on real photos; a batch of two against the two alone;
  latency   batch 1, the network alone (tensors on the GPU) and `encode` from a NumPy array; the reference too;
  throughput batches 1..16, images/s, peak GPU memory, the best batch; CUDA graphs on/off and (SAM) the two
            attention forms ("bias", "fold") at batch 1 and the best batch; torch.compile last, if time is left;
  decoder   per-prompt latency of the model directory's ONNX Runtime decoder (the machine's CPU) and, as the
            lead for a CUDA decoder, of segment_anything's decoder on the GPU (SAM; 1 prompt, and 64 per run);
  tracking  (SAM 2.1) seconds per video frame for 1 and 4 objects: SAM2VideoPredictor.propagate_in_video on the
            GPU against maskserve's VideoTracker (its encoder on the GPU, the tracking graphs on ONNX Runtime).

    python build/gpu_check.py --out $OUT/gpu_check.json           # on the GPU machine (no install needed)
    python -m maskserve.build.gpu_check --models tiny --quick --device cpu --out out/gpu_check.json   # CI's check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a file where maskserve is not installed: map the repository's folders
    _repo = Path(__file__).resolve().parent.parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, str(_repo))
    import maskserve

    if str(_repo) not in maskserve.__path__:
        maskserve.__path__.append(str(_repo))  # maskserve.build → build/, maskserve.engines → engines/, …

import numpy as np
import torch

from maskserve import engines
from maskserve.engines import families, prompts, transforms
from maskserve.engines import torch_backend as tb
from maskserve.engines.model_dir import Manifest

GOALS = {"vit_h_ms_per_image_best_batch_max": 25.0, "vit_b_images_per_s_min": 300.0, "mask_iou_min": 0.99}
ANCHORS = {
    "segment-anything-fast (A100, batch 8)": "ViT-H 2.8 img/s fp32 baseline → 24.9 img/s; ViT-B 12.1 → 92 img/s; "
                                             "batch 1: ViT-H 48 ms, ViT-B 13.8 ms",
    "SAM paper": "~0.15 s ViT-H image encoder per image on an A100",
}
BATCHES = (1, 2, 4, 8, 16)


class Report:
    """The JSON file, rewritten whole (write, then rename) after every stage."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path, self.start, self.budget_s = Path(path), time.monotonic(), budget_s
        self.data: dict = {"schema": 1, "complete": False, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "budget_s": budget_s, "goals": GOALS, "anchors": ANCHORS, "models": {}, "errors": []}
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(_public(self.data), indent=1, default=_jsonable) + "\n")
        tmp.replace(self.path)

    def stage(self, where: dict, name: str, fn, need_s: float = 0.0):
        """Run one stage into where[name]: skipped when less than need_s of the budget is left, its error
        recorded (and the run going on) when it fails."""
        if self.left() < need_s:
            where[name] = {"skipped": f"time budget: {self.left():.0f} s left, the stage wants {need_s:.0f} s"}
            print(f"  {name}: skipped ({self.left():.0f} s left)", flush=True)
            self.save()
            return None
        start = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a figure missing beats a run lost
            where[name] = {"error": f"{exc.__class__.__name__}: {exc}"[:2000]}
            self.data["errors"].append({"stage": name, "traceback": traceback.format_exc()[-4000:]})
            print(f"  {name}: FAILED {exc.__class__.__name__}: {exc}", flush=True)
            result = None
        else:
            where[name] = result
        if isinstance(where[name], dict):
            where[name]["stage_s"] = round(time.monotonic() - start, 2)
        print(f"  {name}: {time.monotonic() - start:.1f} s ({self.left():.0f} s left)", flush=True)
        self.save()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return result


def _public(value):
    """The report without its private entries (keys starting with "_": loaded networks kept for later stages)."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not (isinstance(k, str) and k.startswith("_"))}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(type(value))


# -- weights and inputs ---------------------------------------------------------------------------------------------


def random_sam(model_type: str, seed: int = 0):
    """segment_anything's SAM of `model_type` with seeded random weights: PyTorch's initialisation, then the
    tables SAM initialises to zero (absolute and relative position embeddings) filled from the same seed."""
    from maskserve.build.checkpoint import build_model
    from maskserve.build.specs import get_spec

    torch.manual_seed(seed)
    sam = build_model(get_spec(model_type))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if name == "pos_embed":
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
            elif "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return sam.eval()


def random_sam2(model_type: str, seed: int = 0):
    """The `sam2` package's SAM 2.1 of `model_type` with seeded random weights, its zero position tables filled."""
    from maskserve.build.sam2_checkpoint import build_sam2_model
    from maskserve.build.specs import get_spec

    torch.manual_seed(seed)
    model = build_sam2_model(get_spec(model_type))
    generator = torch.Generator().manual_seed(seed + 1)
    trunk = model.image_encoder.trunk
    with torch.no_grad():
        for p in (trunk.pos_embed, trunk.pos_embed_window):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def random_sam3(path: Path, quick: bool):
    """The `sam3` package's image model with seeded random weights, saved in Meta's format at `path` and loaded
    back as `maskserve build` loads it; with `quick` the tests' scaled-down design (minutes less on a CPU)."""
    from maskserve.build.sam3_export import Sam3Architecture, load_model, seeded_random_checkpoint

    arch = Sam3Architecture(vit_dim=256, vit_depth=8, vit_mlp=1184, text_width=256, text_layers=2, fusion_layers=1,
                            decoder_layers=2) if quick else Sam3Architecture()
    seeded_random_checkpoint(path, arch)
    return load_model(path)


def photos(size: int, quick: bool) -> list[tuple[str, np.ndarray]]:
    """Real photographs: the bundled demo photo, and scikit-image's where it is installed."""
    import importlib.resources

    from PIL import Image

    with importlib.resources.as_file(importlib.resources.files("maskserve") / "data" / "astronaut.jpg") as path:
        out = [("astronaut.jpg", np.asarray(Image.open(path).convert("RGB")))]
    if quick:
        return out
    try:
        from skimage import data

        out.append(("skimage coffee", data.coffee()))
    except Exception:  # noqa: BLE001 - a second photo is a nicety
        pass
    return out


def prepared(images, manifest: Manifest) -> np.ndarray:
    return np.stack([prompts.prepare_image(im, manifest) for im in images])


def one_image(arrays: dict, i: int) -> dict:
    """Image i of a batch's embedding arrays, each with its batch axis of 1."""
    return {name: a[i:i + 1] for name, a in arrays.items()}


def reference_encoder(state: dict, manifest: Manifest):
    """The official image encoder as a module: images → the embedding's arrays as a tuple in layout order."""
    import importlib

    return importlib.import_module(families.of(manifest).export_module).reference_image_encoder(state["sam"])


# -- measuring ------------------------------------------------------------------------------------------------------


def timed(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median and min of `repeats` calls after `warmup`, in ms: CUDA events on a GPU, the wall clock elsewhere."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            times.append(tb.wall(fn, device) * 1e3)
    return {"median_ms": round(float(np.median(times)), 3), "min_ms": round(float(np.min(times)), 3), "n": repeats}


def peak_memory(fn, device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    tb.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    tb.synchronize(device)
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_over_weights_gib": round((torch.cuda.max_memory_allocated(device) - base) / 2**30, 3),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}


def error(got, ref) -> dict:
    """Max abs and relative error; for several named arrays, the worst of each over the arrays."""
    if isinstance(got, dict):
        parts = {name: error(got[name], ref[name]) for name in ref}
        return {"max_abs": max(p["max_abs"] for p in parts.values()), "rel_l2": max(p["rel_l2"] for p in parts.values()),
                "ref_max_abs": max(p["ref_max_abs"] for p in parts.values()),
                "nonfinite": sum(p["nonfinite"] for p in parts.values()),
                **({"arrays": parts} if len(parts) > 1 else {})}
    finite = np.isfinite(got)
    diff = np.where(finite, got - ref, 0.0)
    return {"max_abs": float(np.abs(diff).max()), "rel_l2": float(np.linalg.norm(diff) / np.linalg.norm(ref)),
            "ref_max_abs": float(np.abs(ref).max()), "nonfinite": int((~finite).sum())}


def point_grid(h: int, w: int, n: int) -> list[tuple[float, float]]:
    return [(w * (i + 0.5) / n, h * (j + 0.5) / n) for i in range(n) for j in range(n)]


def masks(decoder, manifest: Manifest, embedding: dict, size, points) -> list[np.ndarray]:
    """(3, H, W) multimask answers for one foreground point each, through the model directory's decoder;
    `embedding` one image's named arrays."""
    embedding = prompts.embedding_arrays(embedding, manifest)
    prepared = decoder.prepare(embedding)
    out = []
    for p in points:
        (answer,) = prompts.decode(decoder, manifest, embedding, size,
                                   [prompts.Prompt(np.array([p]), np.array([1]))], True, prepared=prepared)
        out.append(prompts.full_resolution_logits(answer.low_res_logits, manifest, size) > 0)
    return out


def mask_ious(a: list[np.ndarray], b: list[np.ndarray]) -> list[float]:
    ious = []
    for x, y in zip(a, b):
        for k in range(len(x)):
            union = np.logical_or(x[k], y[k]).sum()
            ious.append(float(np.logical_and(x[k], y[k]).sum() / union) if union else 1.0)
    return ious


# -- one model --------------------------------------------------------------------------------------------------


def check_model(report: Report, model_type: str, device: torch.device, work: Path, quick: bool) -> dict:
    from maskserve.build.builder import build_model_dir

    result: dict = {}
    report.data["models"][model_type] = result
    state: dict = {}
    warm, reps = (0, 1) if quick else (3, 10)  # quick: the logic, not the figures
    few = 1 if quick else max(3, reps // 2)

    sam2 = model_type.startswith("sam2")
    from maskserve.build.specs import get_spec

    sam3 = get_spec(model_type).family == "sam3"
    rel_pos = not (sam2 or sam3)  # SAM's ViT: its relative positions can be placed two ways ("attention")

    def weights():
        start = time.monotonic()
        checkpoint = work / f"{model_type}_random.pt"
        if sam3:  # saved in Meta's format as it is made
            sam = random_sam3(checkpoint, quick)
            encoder = sam.backbone.vision_backbone
        else:
            if sam2:
                sam = random_sam2(model_type)
            elif get_spec(model_type).family == "mobile_sam":
                from maskserve.build.mobile_sam_export import seeded_random_model

                sam = seeded_random_model()
            else:
                sam = random_sam(model_type)
            # Meta's formats: SAM's flat state dict, SAM 2.1's {"model": state dict}
            torch.save({"model": sam.state_dict()} if sam2 else sam.state_dict(), checkpoint)
            encoder = sam.image_encoder
        state["sam"], state["checkpoint"] = sam, checkpoint
        return {"seconds": round(time.monotonic() - start, 1), "checkpoint_bytes": checkpoint.stat().st_size,
                "parameters_m": round(sum(p.numel() for p in sam.parameters()) / 1e6, 1),
                "encoder_parameters_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 1)}

    def build():
        out = work / f"{model_type}-torch"
        manifest = build_model_dir(state["checkpoint"], model_type, out, backend="torch", precision="fp32")
        state["dir"], state["manifest"] = out, manifest
        state["decoder"] = engines.load(out, encoder=False).decoder
        return {"model_version": manifest.model_version, "encoder": manifest.encoder,
                "encoder_pt_bytes": (out / manifest.encoder["file"]).stat().st_size}

    big = model_type in ("vit_h", "vit_l", "sam2.1_hiera_large") or (sam3 and not quick)
    if report.stage(result, "weights", weights, need_s=90 if sam3 else 60 if big else 20) is None or \
            report.stage(result, "build", build, need_s=120 if sam3 else 60 if big else 20) is None:
        return result
    manifest: Manifest = state["manifest"]
    images = photos(manifest.image_size, quick)
    x = prepared([im for _, im in images], manifest)
    xt = torch.from_numpy(x).to(device)
    grid = 2 if quick else 3

    def reference():
        tb.fp32_flags("fp32")
        encoder = reference_encoder(state, manifest).to(device)
        with torch.inference_mode():
            runs = [tb.as_tuple(encoder(xt[i:i + 1])) for i in range(len(x))]
        ref = {name: torch.cat([run[k] for run in runs]).float().cpu().numpy() for k, name in enumerate(manifest.array_names)}
        state["ref"] = ref
        state["ref_masks"] = [masks(state["decoder"], manifest, one_image(ref, i), im.shape[:2],
                                    point_grid(*im.shape[:2], grid)) for i, (_, im) in enumerate(images)]
        what = "sam2 image encoder + no_mem_embed + conv_s0/conv_s1 (set_image's features)" if sam2 \
            else "sam3 ViT, both necks, the interactive head's conv_s0/conv_s1 + no_mem_embed (set_image's)" if sam3 \
            else f"{type(state['sam'].image_encoder).__module__}.{type(state['sam'].image_encoder).__name__}"
        out = {"what": f"{what}, fp32, TF32 off, same device",
               "images": [name for name, _ in images], "points_per_image": grid * grid}
        with torch.inference_mode():
            one = xt[:1]
            out["latency_batch1"] = timed(lambda: encoder(one), device, warm, few)
            if not quick:
                eight = one.expand(8, -1, -1, -1).contiguous()
                t = timed(lambda: encoder(eight), device, 1, 3)
                out["throughput_batch8"] = {**t, "images_per_s": round(8e3 / t["median_ms"], 2)}
        return out

    if report.stage(result, "reference_fp32", reference, need_s=20) is None:
        return result
    precisions = ("fp32", "bf16") if quick else ("fp32", "bf16", "fp16")
    encoders: dict[str, tb.TorchEncoder] = {}

    def parity(precision: str):
        def run():
            enc = tb.TorchEncoder(state["dir"], manifest, device=str(device), precision=precision, cuda_graphs="off")
            encoders[precision] = enc
            got = enc.encode_arrays(x)
            out = error(got, state["ref"])
            out["weights_gib"] = round(sum(t.numel() * t.element_size() for t in
                                           [*enc.net.parameters(), *enc.net.buffers()]) / 2**30, 3)
            ours = [masks(state["decoder"], manifest, one_image(got, i), im.shape[:2], point_grid(*im.shape[:2], grid))
                    for i, (_, im) in enumerate(images)]
            ious = [v for a, b in zip(state["ref_masks"], ours) for v in mask_ious(a, b)]
            out["mask_iou"] = {"min": round(min(ious), 5), "mean": round(float(np.mean(ious)), 5), "masks": len(ious)}
            if len(x) >= 2:
                both, first, second = enc.encode_arrays(x[:2]), enc.encode_arrays(x[:1]), enc.encode_arrays(x[1:2])
                out["batch2_vs_singles_max_abs"] = max(float(np.abs(both[n] - np.concatenate([first[n], second[n]])).max())
                                                       for n in both)
            return out
        return run

    parity_result: dict = {}
    result["parity"] = parity_result
    for precision in precisions:
        report.stage(parity_result, precision, parity(precision), need_s=15)

    def latency(precision: str):
        def run():
            enc = encoders[precision]
            tb.fp32_flags(precision)
            one_np, one = x[:1], xt[:1]
            return {"network_batch1": timed(lambda: enc.encode_tensor(one), device, warm, reps),
                    "encode_numpy_batch1": timed(lambda: enc.encode_arrays(one_np), device, warm, reps)}
        return run

    latency_result: dict = {}
    result["latency"] = latency_result
    for precision in precisions:
        if precision in encoders:
            report.stage(latency_result, precision, latency(precision), need_s=10)

    batches = (1, 2) if quick else BATCHES

    def sweep(precision: str):
        def run():
            enc = encoders[precision]
            tb.fp32_flags(precision)
            rows, best = {}, None
            for b in batches:
                if report.left() < 20 and b > 1:
                    rows[str(b)] = {"skipped": "time budget"}
                    break
                xb = xt[:1].expand(b, -1, -1, -1).contiguous()
                try:
                    mem = peak_memory(lambda: enc.encode_tensor(xb), device)
                    t = timed(lambda: enc.encode_tensor(xb), device, warm, few)
                except torch.cuda.OutOfMemoryError as exc:
                    rows[str(b)] = {"error": f"out of memory: {exc}"[:300]}
                    break
                row = {**t, **mem, "images_per_s": round(b * 1e3 / t["median_ms"], 2),
                       "ms_per_image": round(t["median_ms"] / b, 3)}
                rows[str(b)] = row
                if best is None or row["images_per_s"] > rows[str(best)]["images_per_s"]:
                    best = b
            return {"batches": rows, "best_batch": best, "best_images_per_s": rows[str(best)]["images_per_s"],
                    "best_ms_per_image": rows[str(best)]["ms_per_image"]}
        return run

    throughput: dict = {}
    result["throughput"] = throughput
    for precision in precisions[1:]:
        if precision in encoders:
            report.stage(throughput, precision, sweep(precision), need_s=30)

    def variants():
        """CUDA graphs and the attention forms at batch 1 and the best batch of the best reduced precision
        (the same loaded network, its attention form switched in place)."""
        done = {p: r for p, r in throughput.items() if isinstance(r, dict) and r.get("best_batch")}
        if not done or device.type != "cuda":
            return {"skipped": "needs CUDA and a throughput sweep"}
        precision = max(done, key=lambda p: done[p]["best_images_per_s"])
        enc = encoders[precision]
        tb.fp32_flags(precision)
        out = {"precision": precision}
        forms = tb.ATTENTION if rel_pos else ("plain",)  # Hiera and SAM 3's ViT have no relative positions
        for b in sorted({1, done[precision]["best_batch"]}):
            xb = xt[:1].expand(b, -1, -1, -1).contiguous()
            row = {}
            for attention in forms:
                for graphs in ("off", "on"):
                    key = f"{attention}/graphs-{graphs}"
                    if report.left() < 15:
                        row[key] = {"skipped": "time budget"}
                        continue
                    if rel_pos:
                        for block in enc.net.blocks:
                            block.attn.mode = attention
                    enc.graph_mode, enc.graphs = graphs, {}
                    try:
                        row[key] = timed(lambda: enc.encode_tensor(xb), device, warm, few)
                        ours = dict(zip(manifest.array_names, (t.float().cpu().numpy()
                                                               for t in tb.as_tuple(enc.encode_tensor(xt[:1])))))
                        row[key]["rel_l2_vs_reference"] = error(ours, one_image(state["ref"], 0))["rel_l2"]
                    except Exception as exc:  # noqa: BLE001
                        row[key] = {"error": f"{exc.__class__.__name__}: {exc}"[:500]}
            ok = {k: v["median_ms"] for k, v in row.items() if "median_ms" in v}
            row["fastest"] = min(ok, key=ok.get) if ok else None
            out[f"batch{b}"] = row
        if rel_pos:
            for block in enc.net.blocks:
                block.attn.mode = enc.attention
        enc.graph_mode, enc.graphs = "off", {}
        return out

    report.stage(result, "variants", variants, need_s=40)

    def decoder():
        dec, ref = state["decoder"], prompts.embedding_arrays(one_image(state["ref"], 0), manifest)
        size = images[0][1].shape[:2]
        prepared = dec.prepare(ref)
        point = [prompts.Prompt(np.array([point_grid(*size, 1)[0]]), np.array([1]))]

        def low_res():
            prompts.decode(dec, manifest, ref, size, point, True, prepared=prepared, full_logits=False)

        def full():
            (a,) = prompts.decode(dec, manifest, ref, size, point, True, prepared=prepared)
            prompts.full_resolution_logits(a.low_res_logits, manifest, size)

        cpu = torch.device("cpu")
        what = "points decoder" if rel_pos else "general decoder"
        out = {"onnxruntime_cpu": {"threads": os.cpu_count(), "what": f"{what}, 1 point, multimask",
                                   "low_res": timed(low_res, cpu, 2, reps * 3),
                                   "with_full_resolution_masks": timed(full, cpu, 2, reps * 2)}}
        if device.type == "cuda" and rel_pos:
            out["reference_cuda"] = reference_decoder(state, manifest, ref, size, device, warm, reps)
        return out

    report.stage(result, "decoder", decoder, need_s=10)
    if sam2:
        report.stage(result, "tracking", lambda: tracking(state, model_type, device, work, quick), need_s=60)
    state.clear()
    result["_encoders"] = encoders  # kept out of the JSON (see main), for the compile stage
    result["_input"] = xt[:1]
    return result


def tracking(state, model_type: str, device: torch.device, work: Path, quick: bool) -> dict:
    """Video tracking: SAM2VideoPredictor.propagate_in_video on this device against maskserve's VideoTracker
    on the built directory (its encoder on this device, the tracking graphs on ONNX Runtime), seconds per
    frame for 1 and 4 objects prompted on the first frame, and the checkpoint's bytes per object."""
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor

    from maskserve.bench import _clip
    from maskserve.build.specs import get_spec
    from maskserve.video import VideoTracker

    frames = _clip(4 if quick else 10)
    folder = work / "clip"
    folder.mkdir(exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    points = [[80 + 140 * k, 160 + 60 * (k % 2)] for k in range(4)]
    tb.fp32_flags("fp32")
    reference = build_sam2_video_predictor(get_spec(model_type).config, ckpt_path=str(state["checkpoint"]),
                                           device=str(device))
    out: dict = {"frames": len(frames), "frame_size": list(frames[0].shape[:2])}
    for n in (1, 4):
        with torch.inference_mode():
            st = reference.init_state(str(folder))
            for k in range(n):
                reference.add_new_points_or_box(st, 0, k + 1, points=[points[k]], labels=[1])
            stamps = []
            for _ in reference.propagate_in_video(st):
                tb.synchronize(device)
                stamps.append(time.perf_counter())
        tracker = VideoTracker(state["dir"], expected_frames=len(frames))
        tracker.track(frames[0])
        for k in range(n):
            tracker.add_new_points_or_box(k + 1, [points[k]], [1])
        mine = [time.perf_counter()]
        for frame in frames[1:]:
            tracker.track(frame)
            mine.append(time.perf_counter())
        ours, theirs = float(np.mean(np.diff(mine))), float(np.mean(np.diff(stamps)[1:]))
        out[f"objects_{n}"] = {"maskserve_s_per_frame": round(ours, 4), "reference_s_per_frame": round(theirs, 4),
                               "ratio": round(ours / theirs, 3),
                               "checkpoint_bytes_per_object": len(tracker._impl.session.state_bytes()) // n}
    return out


def reference_decoder(state, manifest, embedding, size, device, warm, reps) -> dict:
    """segment_anything's prompt encoder and mask decoder on the GPU, masks upscaled there (SamPredictor's
    predict_torch): what a CUDA decoder path could answer in."""
    from segment_anything import SamPredictor

    tb.fp32_flags("fp32")
    predictor = SamPredictor(state["sam"].to(device))
    predictor.features = torch.from_numpy(embedding).to(device)
    predictor.original_size = tuple(size)
    predictor.input_size = transforms.resized_shape(*size, manifest.image_size)
    predictor.is_image_set = True
    out = {"what": "segment_anything SamPredictor.predict_torch, multimask, masks at full resolution"}
    g = torch.Generator().manual_seed(0)
    for n in (1, 64):
        coords = (torch.rand(n, 1, 2, generator=g) * torch.tensor(predictor.input_size[::-1])).to(device)
        labels = torch.ones(n, 1, device=device)
        with torch.inference_mode():
            t = timed(lambda: predictor.predict_torch(coords, labels, multimask_output=True), device, warm, reps)
        out[f"prompts_{n}"] = {**t, "ms_per_prompt": round(t["median_ms"] / n, 4)}
    return out


def compile_stage(report: Report, model_type: str, device: torch.device) -> None:
    """torch.compile of the best reduced precision, batch 1 and the best batch (minutes of compiling: last)."""
    result = report.data["models"].get(model_type, {})
    encoders, xt = result.get("_encoders", {}), result.get("_input")
    done = {p: r for p, r in result.get("throughput", {}).items() if isinstance(r, dict) and r.get("best_batch")}
    if not done or device.type != "cuda":
        return
    precision = max(done, key=lambda p: done[p]["best_images_per_s"])
    enc = encoders.get(precision)

    def run():
        start = time.monotonic()
        tb.fp32_flags(precision)
        compiled = torch.compile(enc.net, dynamic=False)
        out = {"precision": precision, "attention": enc.attention}
        for b in sorted({1, done[precision]["best_batch"]}):
            xb = xt.expand(b, -1, -1, -1).contiguous()
            t0 = time.monotonic()
            with torch.inference_mode():
                compiled(xb)
                tb.synchronize(device)
                first = time.monotonic() - t0
                t = timed(lambda: compiled(xb), device, 2, 5)
            eager = done[precision]["batches"].get(str(b), {}).get("median_ms")
            out[f"batch{b}"] = {**t, "compile_s": round(first, 1), "eager_median_ms": eager}
        out["total_s"] = round(time.monotonic() - start, 1)
        return out

    report.stage(result, "compile", run, need_s=120 if model_type in ("vit_h", "sam2.1_hiera_large") else 60)


def summary(report: Report) -> dict:
    out = {}
    for model_type, r in report.data["models"].items():
        s: dict = {}
        for precision, p in r.get("parity", {}).items():
            if "mask_iou" in p:
                s[f"{precision}_rel_l2"] = p["rel_l2"]
                s[f"{precision}_mask_iou_min"] = p["mask_iou"]["min"]
                s[f"{precision}_mask_iou_mean"] = p["mask_iou"]["mean"]
        for precision, t in r.get("throughput", {}).items():
            if "best_batch" in t:
                s[f"{precision}_best_batch"] = t["best_batch"]
                s[f"{precision}_images_per_s"] = t["best_images_per_s"]
                s[f"{precision}_ms_per_image"] = t["best_ms_per_image"]
        for precision, t in r.get("latency", {}).items():
            if "network_batch1" in t:
                s[f"{precision}_batch1_ms"] = t["network_batch1"]["median_ms"]
        for key, row in r.get("variants", {}).items():
            if key.startswith("batch") and isinstance(row, dict) and row.get("fastest"):
                s[f"variants_{key}_fastest"] = row["fastest"]
                s[f"variants_{key}_fastest_ms"] = row[row["fastest"]]["median_ms"]
        for key, row in r.get("compile", {}).items():
            if key.startswith("batch") and isinstance(row, dict) and "median_ms" in row:
                s[f"compiled_{key}_ms"] = row["median_ms"]
        ref = r.get("reference_fp32", {})
        if "latency_batch1" in ref:
            s["reference_fp32_batch1_ms"] = ref["latency_batch1"]["median_ms"]
        if "throughput_batch8" in ref:
            s["reference_fp32_batch8_images_per_s"] = ref["throughput_batch8"]["images_per_s"]
        out[model_type] = s
    goals: dict = {}
    for model_type, s in out.items():
        reduced = [p for p in ("bf16", "fp16") if f"{p}_images_per_s" in s]
        if reduced:
            best = max(reduced, key=lambda p: s[f"{p}_images_per_s"])
            if model_type == "vit_h":
                goals["vit_h_ms_per_image"] = {"value": s[f"{best}_ms_per_image"], "precision": best,
                                               "met": s[f"{best}_ms_per_image"] <= GOALS["vit_h_ms_per_image_best_batch_max"]}
            if model_type == "vit_b":
                goals["vit_b_images_per_s"] = {"value": s[f"{best}_images_per_s"], "precision": best,
                                               "met": s[f"{best}_images_per_s"] >= GOALS["vit_b_images_per_s_min"]}
        for p in ("bf16", "fp16"):
            if f"{p}_mask_iou_min" in s:
                goals[f"{model_type}_{p}_mask_iou"] = {"min": s[f"{p}_mask_iou_min"], "mean": s[f"{p}_mask_iou_mean"],
                                                       "met_by_mean": s[f"{p}_mask_iou_mean"] >= GOALS["mask_iou_min"],
                                                       "met_by_min": s[f"{p}_mask_iou_min"] >= GOALS["mask_iou_min"]}
    out["goals"] = goals
    return out


def describe(device: torch.device) -> dict:
    out = {"device": str(device), "torch": torch.__version__, "cuda_build": torch.version.cuda,
           "python": platform.python_version(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, compute_capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")) / "gpu_check.json")
    parser.add_argument("--models", default="vit_b,vit_h", help="comma-separated model types")
    parser.add_argument("--device", default="auto", help="auto (CUDA where available), cuda, cpu")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stages are skipped past this")
    parser.add_argument("--work-dir", type=Path, default=None, help="checkpoints and model directories")
    parser.add_argument("--quick", action="store_true", help="few images, batches and repeats (CI, on the CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile stage")
    args = parser.parse_args(argv)

    device = tb.resolve_device(args.device)
    report = Report(args.out, args.budget_s)
    report.data["machine"] = describe(device)
    report.data["arguments"] = {k: str(v) for k, v in vars(args).items()}
    report.save()
    print(f"gpu_check: {report.data['machine']}", flush=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    needs = {"segment_anything": any(not m.startswith(("sam2", "sam3")) for m in models),
             "mobile_sam": "vit_t" in models, "timm": "vit_t" in models,
             "sam2": any(m.startswith("sam2") for m in models),
             "sam3": "sam3" in models, "open_clip": "sam3" in models}  # the references, and the checkpoints' builders
    for package in (p for p, needed in needs.items() if needed):
        try:
            __import__(package)
        except ImportError:
            report.data["errors"].append({"stage": "setup", "traceback": f"ImportError: {package} is not installed: "
                                          "carry its wheels in .whl/ (docs/deployment.md)"})
    if report.data["errors"]:
        report.save()
        _print_table(report)
        raise SystemExit(2)
    import tempfile

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="maskserve-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, report, device, work)
    finally:
        if args.work_dir is None:  # gigabytes of random checkpoints
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def _run(args, report: Report, device: torch.device, work: Path) -> dict:
    from maskserve.build.specs import get_spec

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    keep = not args.no_compile and not args.quick and device.type == "cuda"
    for model_type in models:
        print(f"{model_type}:", flush=True)
        backends = families.get(get_spec(model_type).family).backends
        if "torch" not in backends:
            report.data["models"][model_type] = {"skipped": f"{model_type} has no GPU backend yet (it builds for "
                                                            f"{', '.join(backends)}); `maskserve bench` measures "
                                                            "it on the CPU"}
            continue
        try:
            check_model(report, model_type, device, work, args.quick)
        except Exception as exc:  # noqa: BLE001 - the next model still runs
            report.data["errors"].append({"stage": model_type, "traceback": traceback.format_exc()[-4000:]})
            print(f"  {model_type}: FAILED {exc}", flush=True)
        if not keep:  # the compile stages, after every model's core figures, take the loaded networks
            report.data["models"].get(model_type, {}).pop("_encoders", None)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report.data["summary"] = summary(report)  # before compiling, which may outlast the budget
    report.save()
    if keep:
        for model_type in models:
            print(f"{model_type} compile:", flush=True)
            compile_stage(report, model_type, device)
    for r in report.data["models"].values():
        r.pop("_encoders", None)
        r.pop("_input", None)
    report.data["summary"] = summary(report)
    report.data["complete"] = True
    report.save()
    _print_table(report)
    return report.data


def _print_table(report: Report) -> None:
    print(f"\nwritten {report.path} ({report.data['elapsed_s']} s)")
    for model_type, s in report.data.get("summary", {}).items():
        if model_type == "goals":
            for goal, v in s.items():
                print(f"goal {goal}: {v}")
            continue
        print(f"{model_type}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in s.items()))
    for e in report.data["errors"]:
        print(f"error in {e['stage']}: {e['traceback'].strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
