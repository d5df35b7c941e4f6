"""`maskserve soak`: the local stack under a fixed request rate for minutes, loopback only, bounded.

Each second it sends `rate` SegmentPrompt calls and, every `new_image_every` calls, encodes a new distinct
image with `wait` (the path that once leaked a waiter per image). Prompts go to the recent images, more of
them than the decoder's LRU holds, so the LRU is full and turns over as in a service with many users. Per
minute it reports p50/p99, errors, the resident memory of each process and the decoder's own bookkeeping
(images waited on, LRU entries), so a slow leak shows as a count that grows before it shows in memory; at the
end, whether memory levelled off (`plateau`): each process's RSS after warm-up against the warm-up window,
and its slope over the second half of the run.

The long form, run by hand: `maskserve soak --seconds 1800` (30 one-minute windows, warm-up the first five).
`maskserve soak-track --model-dir DIR` is video tracking's: one session through 2000 frames (`track`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from maskserve.client import image_message, prompt_message
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.segment_file import BUNDLED_PHOTO
from maskserve.service.stack import LocalStack


# Every image is new, 2 a second at the defaults: embeddings live this long after their last use (not an
# hour), so Redis holds a bounded set of them and its memory levels off too.
EMBEDDING_TTL_S = 60


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _gauge(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def run(seconds: float = 300, rate: float = 20, new_image_every: int = 10, window: float = 60,
        model_dir: str = "", images: int = 96, env: dict[str, str] | None = None,
        progress: Callable[[str], None] | None = None) -> dict:
    """`images`: prompts go to a random one of the last `images` encoded images (1: the first image only).
    More than the decoder's LRU holds (MASKSERVE_LRU_ENTRIES, 64) keeps it full and turning over: images
    fetched from Redis, prepared, evicted, as in a service with many users. `env`: settings for both roles.
    `progress` is given each window's report line as the window ends."""
    photo = np.asarray(Image.open(BUNDLED_PHOTO).convert("RGB"))
    rng = np.random.default_rng(0)
    env = {"MASKSERVE_EMBEDDING_TTL_S": str(EMBEDDING_TTL_S), **(env or {})}
    with LocalStack(model_dir, extra_env=env) as stack, grpc.insecure_channel(stack.target) as channel, \
            ThreadPoolExecutor(8) as pool:
        stub = pb_grpc.SegmenterStub(channel)
        first = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(photo), wait=True), timeout=600)
        recent = deque([(first.image_id, first.height, first.width)], maxlen=max(1, images))
        procs = {"decoder": stack.decoder.pid, "encoder": stack.encoder.pid, "redis": stack.redis.pid}
        start_rss = {k: _rss_mb(p) for k, p in procs.items()}
        windows, calls, n = [], [], 0

        def prompt(target, u, v):
            image_id, h, w = target
            t = time.perf_counter()
            try:
                stub.SegmentPrompt(pb.SegmentPromptRequest(image_id=image_id,
                                                           prompts=[prompt_message([[u * w, v * h]], [1])]),
                                   timeout=10)
                return "prompt", time.perf_counter() - t, None
            except grpc.RpcError as exc:
                return "prompt", time.perf_counter() - t, exc.code().name

        def encode(i):
            small = np.ascontiguousarray(np.roll(photo[::8, ::8], i, axis=1))
            small.reshape(-1)[:8] = np.frombuffer(np.int64(i).tobytes(), np.uint8)  # distinct bytes each time
            t = time.perf_counter()
            try:
                done = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(small), wait=True), timeout=30)
                if images > 1:
                    recent.append((done.image_id, done.height, done.width))
                return "encode", time.perf_counter() - t, None
            except grpc.RpcError as exc:
                return "encode", time.perf_counter() - t, exc.code().name

        begin = time.perf_counter()
        window_start = begin
        while time.perf_counter() - begin < seconds:
            due = begin + n / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            n += 1
            calls.append(pool.submit(encode, n) if n % new_image_every == 0 else
                         pool.submit(prompt, recent[int(rng.integers(len(recent)))], rng.uniform(), rng.uniform()))
            if time.perf_counter() - window_start >= window:
                windows.append(_window(calls, procs, stack, time.perf_counter() - begin))
                calls, window_start = [], time.perf_counter()
                if progress is not None:
                    progress(_line(len(windows), windows[-1]))
        if calls:
            windows.append(_window(calls, procs, stack, time.perf_counter() - begin))
            if progress is not None:
                progress(_line(len(windows), windows[-1]))
        time.sleep(1.0)
        end = {"rss_mb": {k: _rss_mb(p) for k, p in procs.items()},
               "waiting_images": _gauge(stack.metrics_ports[0], "maskserve_waiting_images"),
               "lru_entries": _gauge(stack.metrics_ports[0], "maskserve_lru_entries"),
               "alive": all(p.poll() is None for p in (stack.decoder, stack.encoder, stack.redis))}
    return {"seconds": seconds, "rate": rate, "start_rss_mb": start_rss, "windows": windows, "end": end}


def _window(calls, procs, stack, elapsed: float) -> dict:
    results = [c.result() for c in calls]
    prompts = np.array([d for kind, d, err in results if kind == "prompt" and err is None]) * 1000
    errors: dict[str, int] = {}
    for _, _, err in results:
        if err:
            errors[err] = errors.get(err, 0) + 1
    return {"t_s": round(elapsed, 1), "requests": len(results), "errors": errors,
            "prompt_p50_ms": float(np.percentile(prompts, 50)) if len(prompts) else None,
            "prompt_p99_ms": float(np.percentile(prompts, 99)) if len(prompts) else None,
            "encodes": sum(1 for kind, _, _ in results if kind == "encode"),
            "rss_mb": {k: round(_rss_mb(p), 1) for k, p in procs.items()},
            "waiting_images": _gauge(stack.metrics_ports[0], "maskserve_waiting_images"),
            "lru_entries": _gauge(stack.metrics_ports[0], "maskserve_lru_entries")}


def plateau(result: dict, warmup_s: float | None = None) -> dict:
    """Whether each process's memory levelled off. Warm-up ends with the first window that ends after
    `warmup_s` (default a quarter of the run, at most 5 minutes): by then the LRU is full and the pools have
    made their buffers. Per process: RSS at the end of warm-up, the most after it and the difference, and the
    slope over the second half of the run (least squares over its windows, MB/min). For the decoder also the
    growth after warm-up per new image: a leak of anything per image (an embedding, a waiter) grows with it."""
    windows = result["windows"]
    if warmup_s is None:
        warmup_s = min(300.0, result["seconds"] / 4)
    warm = next((i for i, w in enumerate(windows) if w["t_s"] >= warmup_s), len(windows) - 1)
    after = windows[warm + 1:] or windows[-1:]
    half = [w for w in windows if w["t_s"] >= result["seconds"] / 2]
    half = half if len(half) >= 2 else windows[-2:]
    out = {"warmup_window": warm + 1, "warmup_s": warmup_s, "images_after_warmup": sum(w["encodes"] for w in after)}
    for proc in windows[0]["rss_mb"]:
        top = max(w["rss_mb"][proc] for w in after)
        t = np.array([w["t_s"] for w in half]) / 60
        rss = np.array([w["rss_mb"][proc] for w in half])
        slope = float(np.polyfit(t, rss, 1)[0]) if len(half) >= 2 and np.ptp(t) > 0 else 0.0
        out[proc] = {"warm_mb": windows[warm]["rss_mb"][proc], "max_after_mb": top,
                     "growth_mb": round(top - windows[warm]["rss_mb"][proc], 1),
                     "second_half_slope_mb_per_min": round(slope, 2)}
    out["decoder"]["growth_kb_per_image"] = round(1024 * out["decoder"]["growth_mb"] /
                                                  max(1, out["images_after_warmup"]), 1)
    return out


def _line(i: int, w: dict) -> str:
    p50 = f"{w['prompt_p50_ms']:.1f}" if w["prompt_p50_ms"] is not None else "-"
    p99 = f"{w['prompt_p99_ms']:.1f}" if w["prompt_p99_ms"] is not None else "-"
    return (f"  window {i} (to {w['t_s']:.0f} s): {w['requests']} requests ({w['encodes']} new images), errors "
            f"{w['errors'] or 0}, p50 {p50} ms, p99 {p99} ms, RSS {w['rss_mb']}, waiting {w['waiting_images']:g}, "
            f"LRU {w['lru_entries']:g}")


def report(result: dict, out: Path | None = None) -> str:
    import json

    result.setdefault("plateau", plateau(result))
    lines = [f"soak: {result['seconds']:g} s at {result['rate']:g} req/s"]
    lines += [_line(i, w) for i, w in enumerate(result["windows"], 1)]
    lines.append(f"  RSS start {result['start_rss_mb']} → end {result['end']['rss_mb']}; all alive: "
                 f"{result['end']['alive']}")
    flat = result["plateau"]
    lines.append(f"  plateau (warm-up: windows 1–{flat['warmup_window']}; "
                 f"{flat['images_after_warmup']} new images after it):")
    for proc in result["windows"][0]["rss_mb"]:
        f = flat[proc]
        lines.append(f"    {proc}: {f['warm_mb']:.1f} MB after warm-up, at most {f['max_after_mb']:.1f} MB after "
                     f"({f['growth_mb']:+.1f} MB"
                     + (f", {f['growth_kb_per_image']:+.1f} kB per new image" if proc == "decoder" else "")
                     + f"), second half {f['second_half_slope_mb_per_min']:+.2f} MB/min")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    return "\n".join(lines)


def track(model_dir: str, frames: int = 2000, objects: int = 2, window: int = 100, distinct_frames: int = 8,
          progress: Callable[[str], None] | None = None) -> dict:
    """The tracking soak: one session tracking `objects` objects through `frames` frames, in this process.
    `distinct_frames` frames of a moving scene are encoded once and cycled (the image encoder holds no
    session state; the tracking step is what could grow). Per `window` frames: the session's state bytes, the
    objects' outputs held, the process's RSS and seconds per frame. Past the memory window (16 frames) the
    state must be constant and the RSS level (`flat`: its growth over the second half)."""
    import os

    from maskserve.bench import _clip
    from maskserve.engines.predictor import Predictor
    from maskserve.engines.tracking import Tracker
    from maskserve.engines.model_dir import Manifest

    predictor = Predictor(model_dir)
    clip = _clip(distinct_frames)
    arrays = []
    for frame in clip:
        predictor.set_image(frame)
        arrays.append({k: v.copy() for k, v in predictor.get_image_arrays().items()})
    tracker = Tracker(model_dir, Manifest.load(model_dir))
    session = tracker.session(clip[0].shape[:2])
    session.track(arrays[0])
    for k in range(objects):
        session.add_points(k + 1, [[80 + 140 * k, 160 + 60 * (k % 2)]], [1])
    windows, started, stamp = [], time.perf_counter(), time.perf_counter()
    for f in range(1, frames):
        session.track(arrays[f % distinct_frames])
        if f % window == 0 or f == frames - 1:
            w = {"frame": f, "state_bytes": len(session.state_bytes()), "rss_mb": round(_rss_mb(os.getpid()), 1),
                 "outputs_held": sum(len(o.outputs) for o in session.objects.values()),
                 "seconds_per_frame": round((time.perf_counter() - stamp) / (f - (windows[-1]["frame"]
                                                                                  if windows else 0)), 3)}
            windows.append(w)
            stamp = time.perf_counter()
            if progress:
                progress(f"  frame {f}: state {w['state_bytes']} B, {w['outputs_held']} outputs held, "
                         f"RSS {w['rss_mb']} MB, {w['seconds_per_frame']} s/frame")
    half = [w for w in windows if w["frame"] >= frames / 2] or windows[-2:]
    after_window = [w for w in windows if w["frame"] > tracker.max_obj_ptrs + 1]
    return {"frames": frames, "objects": objects, "seconds": round(time.perf_counter() - started, 1),
            "windows": windows,
            "flat": {"state_bytes_constant": len({w["state_bytes"] for w in after_window}) <= 1,
                     "rss_growth_second_half_mb": round(max(w["rss_mb"] for w in half) - half[0]["rss_mb"], 1)}}
