"""`maskserve soak`: the local stack under a fixed request rate for minutes, loopback only, bounded.

Each second it sends `rate` SegmentPrompt calls on a cached image and, every `new_image_every` calls, encodes
a new distinct image with `wait` (the path that once leaked a waiter per image). Per minute it reports
p50/p99, errors, the resident memory of each process and the decoder's own bookkeeping (images waited on,
LRU entries), so a slow leak shows as a count that grows before it shows in memory.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from maskserve.client import image_message, prompt_message
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.segment_file import BUNDLED_PHOTO
from maskserve.service.stack import LocalStack


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
        model_dir: str = "", images: int = 96, env: dict[str, str] | None = None) -> dict:
    """`images`: prompts go to a random one of the last `images` encoded images (1: the first image only).
    More than the decoder's LRU holds (MASKSERVE_LRU_ENTRIES, 64) keeps it full and turning over: images
    fetched from Redis, prepared, evicted, as in a service with many users. `env`: settings for both roles."""
    photo = np.asarray(Image.open(BUNDLED_PHOTO).convert("RGB"))
    rng = np.random.default_rng(0)
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
            small = np.ascontiguousarray(np.roll(photo[::8, ::8], i, axis=1))  # distinct bytes each time
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
                windows.append(_window(calls, procs, stack))
                calls, window_start = [], time.perf_counter()
        if calls:
            windows.append(_window(calls, procs, stack))
        time.sleep(1.0)
        end = {"rss_mb": {k: _rss_mb(p) for k, p in procs.items()},
               "waiting_images": _gauge(stack.metrics_ports[0], "maskserve_waiting_images"),
               "lru_entries": _gauge(stack.metrics_ports[0], "maskserve_lru_entries"),
               "alive": all(p.poll() is None for p in (stack.decoder, stack.encoder, stack.redis))}
    return {"seconds": seconds, "rate": rate, "start_rss_mb": start_rss, "windows": windows, "end": end}


def _window(calls, procs, stack) -> dict:
    results = [c.result() for c in calls]
    prompts = np.array([d for kind, d, err in results if kind == "prompt" and err is None]) * 1000
    errors: dict[str, int] = {}
    for _, _, err in results:
        if err:
            errors[err] = errors.get(err, 0) + 1
    return {"requests": len(results), "errors": errors,
            "prompt_p50_ms": float(np.percentile(prompts, 50)) if len(prompts) else None,
            "prompt_p99_ms": float(np.percentile(prompts, 99)) if len(prompts) else None,
            "encodes": sum(1 for kind, _, _ in results if kind == "encode"),
            "rss_mb": {k: round(_rss_mb(p), 1) for k, p in procs.items()},
            "waiting_images": _gauge(stack.metrics_ports[0], "maskserve_waiting_images"),
            "lru_entries": _gauge(stack.metrics_ports[0], "maskserve_lru_entries")}


def report(result: dict, out: Path | None = None) -> str:
    import json

    lines = [f"soak: {result['seconds']:g} s at {result['rate']:g} req/s"]
    for i, w in enumerate(result["windows"], 1):
        lines.append(f"  window {i}: {w['requests']} requests ({w['encodes']} new images), errors {w['errors'] or 0}, "
                     f"p50 {w['prompt_p50_ms']:.1f} ms, p99 {w['prompt_p99_ms']:.1f} ms, RSS {w['rss_mb']}, "
                     f"waiting {w['waiting_images']:g}, LRU {w['lru_entries']:g}")
    lines.append(f"  RSS start {result['start_rss_mb']} → end {result['end']['rss_mb']}; all alive: "
                 f"{result['end']['alive']}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    return "\n".join(lines)
