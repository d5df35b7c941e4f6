"""`maskserve bench`: the real stack over gRPC against the reference `SamPredictor` (and a SAM 2.1 model's
against `SAM2ImagePredictor`, a MobileSAM model's against `mobile_sam`'s, a SAM 3 model's against
`Sam3Processor`), in one run.

Every headline figure is also given as a ratio to the reference measured in the same run on the same
machine, so it survives a noisy machine: `SegmentPrompt` and the reference's `predict` are timed in
alternating blocks, the reference's `set_image` right after the encoder's throughput. Writes bench.json
and bench.png (latency distributions).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from maskserve.engines import default_model_dir, families, load, prompts
from maskserve.engines.flops import count_flops, cpu_peak_flops, measured_gemm_flops
from maskserve.service import keys, store
from maskserve.client import image_message, prompt_message
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.segment_file import BUNDLED_PHOTO
from maskserve.service.stack import LocalStack, free_port


def _stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}


def _timed(fn, n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _alternating(fn, other, n: int, block: int = 10) -> tuple[list[float], list[float]]:
    """Time `fn` and `other` in alternating blocks, so drift on a shared machine reaches both alike. Each
    block starts with two untimed calls: the switch from the other side (its runtime threads still
    spinning, caches holding its data) is not charged to either."""
    mine: list[float] = []
    theirs: list[float] = []
    while len(mine) < n:
        k = min(block, n - len(mine))
        mine += _timed(fn, k, warmup=2)
        theirs += _timed(other, k, warmup=2)
    return mine, theirs


def _stage_totals(metrics_port: int) -> dict[tuple[str, str], float]:
    """The decoder's own per-stage time sums and counts, from its /metrics: {(stage, "sum"|"count"): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {(sample.labels["stage"], sample.name.rsplit("_", 1)[1]): sample.value
            for family in text_string_to_metric_families(text) if family.name == "maskserve_stage_duration_seconds"
            for sample in family.samples if sample.name.endswith(("_sum", "_count"))}


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _closed_loop(stub, request, clients: int, per_client: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def worker():
        mine = _timed(lambda: stub.SegmentPrompt(request, timeout=60), per_client, warmup=1)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, clients * per_client / (time.perf_counter() - start)


async def _open_loop(target: str, request, rate: float, seconds: float) -> list[float]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        latencies = []

        async def one():
            t = time.perf_counter()
            await stub.SegmentPrompt(request, timeout=60)
            latencies.append(time.perf_counter() - t)

        tasks, start, n = [], time.perf_counter(), int(rate * seconds)
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        return latencies


class _Stream:
    """One open StreamSegment, one message in flight at a time: `send` returns the seconds until its answer."""

    def __init__(self, stub) -> None:
        import queue

        self.outbox: queue.Queue = queue.Queue()
        self.replies = stub.StreamSegment(iter(self.outbox.get, None), timeout=3600)
        self.sequence = 0

    def send(self, **item) -> float:
        start = time.perf_counter()
        self.outbox.put(pb.StreamSegmentRequest(sequence=self.sequence, **item))
        self.sequence += 1
        reply = next(self.replies)
        if reply.HasField("error"):
            raise RuntimeError(f"stream message {reply.sequence} failed: {reply.error.message}")
        return time.perf_counter() - start

    def frame_then_gaze(self, frame: np.ndarray, point) -> tuple[float, float]:
        """The robotics loop's step: a new frame, then a gaze point on it (best mask only) → (seconds until the
        frame is encoded, seconds until its mask)."""
        return (self.send(frame=image_message(frame)),
                self.send(prompt=prompt_message([point], [1]), options=pb.OutputOptions(best_mask_only=True)))

    def close(self) -> None:
        self.outbox.put(None)


def _stream(stub, image_id: str, points: list) -> list[float]:
    """Gaze-like: one prompt in flight at a time on one stream; latency per message."""
    stream = _Stream(stub)
    stream.send(image_id=image_id)
    latencies = [stream.send(prompt=prompt_message([[x, y]], [1]), options=pb.OutputOptions(best_mask_only=True))
                 for x, y in points]
    stream.close()
    return latencies


def _encode_throughput(stub, image: np.ndarray, n: int) -> tuple[float, list[str]]:
    """(images per second, their ids) for `n` distinct images (shifted copies) sent at once to the encoder pool."""
    distinct = [np.ascontiguousarray(np.roll(image, 17 * (i + 1), axis=1)) for i in range(n)]
    ids: list[str] = []
    start = time.perf_counter()
    threads = [threading.Thread(target=lambda im=im: ids.append(stub.EncodeImage(
        pb.EncodeImageRequest(image=image_message(im), wait=True), timeout=3600).image_id)) for im in distinct]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - start), ids


def _peak_rss_during(pid: int, fn) -> tuple[float, float]:
    """(seconds, peak resident MB above the start) of `fn()`, for process `pid` (the kernel's high-water
    mark, reset first through /proc/PID/clear_refs)."""
    def status(field):
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS:")
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, status("VmHWM:") - before


def _client_levers(stack, image_id: str, point, sam, requests: int) -> tuple[dict, dict]:
    """`Client.predict` (arrays out, as `SamPredictor.predict` returns them) beside the bare RPC, the client as it
    was (logits always shipped, RLE masks decoded here), each lever alone, and the reference — all in
    alternating blocks of one run. Also each mask format's bytes and client decode time, and a refinement click
    by handle against one that ships the logits."""
    from maskserve.client import Client, decode_mask

    coords, labels = np.array(point), np.array([1])

    def rpc(**options):
        request = pb.SegmentPromptRequest(image_id=image_id, prompts=[prompt_message(point, [1])],
                                          options=pb.OutputOptions(**options))
        return lambda: client.stub.SegmentPrompt(request, timeout=60)

    def old_client_predict():  # the drop-in path before handles: logits always, RLE, all decoded here
        response = rpc(return_low_res_logits=True)()
        masks = np.stack([decode_mask(m) for m in response.results[0].masks])
        return masks, client._logits_of(response)

    with Client(stack.target) as client, Client(stack.target, mask_format="rle") as rle_client:
        client.image_id = rle_client.image_id = image_id
        calls = {
            "RPC, RLE masks (bare)": rpc(),
            "RPC, packed-bit masks": rpc(mask_format=pb.MASK_FORMAT_BITMAP),
            "RPC, RLE masks + logits": rpc(return_low_res_logits=True),
            "RPC, no masks": rpc(mask_format=pb.MASK_FORMAT_NONE),
            "Client.predict before (logits + RLE, decoded)": old_client_predict,
            "Client.predict, RLE masks": lambda: rle_client.predict(coords, labels),
            "Client.predict": lambda: client.predict(coords, labels),
        }
        if sam is not None:
            calls["reference SamPredictor.predict"] = lambda: sam.predict(coords, labels)
        times = {name: [] for name in calls}
        while len(times["Client.predict"]) < requests:
            for name, call in calls.items():
                times[name] += _timed(call, 10, warmup=2)
        formats = {}
        for name, fmt in (("rle", pb.MASK_FORMAT_COCO_RLE), ("bits", pb.MASK_FORMAT_BITMAP)):
            response = rpc(mask_format=fmt)()
            decode = _timed(lambda: [decode_mask(m) for m in response.results[0].masks], requests)
            formats[name] = {"response_bytes": response.ByteSize(),
                             "client_decode_p50_ms": 1000 * float(np.median(decode))}
        logits_only = rpc(return_low_res_logits=True, mask_format=pb.MASK_FORMAT_NONE)()
        formats["logits"] = {"response_bytes": logits_only.ByteSize()}
        _, scores, low = client.predict(coords, labels)
        best = int(np.argmax(scores))
        data = np.asarray(low)[[best]]
        second = np.array([[point[0][0] * 0.9, point[0][1] * 1.1]])
        refine = {"refine by handle": lambda: client.predict(second, labels, mask_input=low[best][None],
                                                             multimask_output=False),
                  "refine by data": lambda: client.predict(second, labels, mask_input=data, multimask_output=False)}
        refine_times = {name: [] for name in refine}
        while len(refine_times["refine by handle"]) < requests // 2:
            for name, call in refine.items():
                refine_times[name] += _timed(call, 10, warmup=2)
        formats["refine_request_bytes"] = {
            "handle": client._predict_request(second, labels, None, low[best][None], False, False).ByteSize(),
            "data": client._predict_request(second, labels, None, data, False, False).ByteSize()}
    p50 = {name: float(np.percentile(np.asarray(t) * 1000, 50)) for name, t in {**times, **refine_times}.items()}
    ratios = {"client_predict_vs_bare_rpc": p50["Client.predict"] / p50["RPC, RLE masks (bare)"],
              "client_predict_before_vs_bare_rpc": p50["Client.predict before (logits + RLE, decoded)"]
              / p50["RPC, RLE masks (bare)"]}
    if sam is not None:
        ratios["client_predict_vs_reference_predict"] = p50["Client.predict"] / p50["reference SamPredictor.predict"]
    return {"p50_ms": p50, "formats": formats, "ratios": ratios}, {**times, **refine_times}


def _http_cost(stack, request: "pb.SegmentPromptRequest", stub, requests: int) -> dict:
    """`SegmentPrompt` over HTTP/JSON (a kept-alive connection) against gRPC on the same decoder, in alternating
    blocks; and the answer's bytes in JSON against protobuf, per mask format."""
    import http.client

    from google.protobuf import json_format

    from maskserve.service.http import to_json

    connection = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=60)
    body = to_json(request).encode()

    def over_http():
        connection.request("POST", "/v1/images:segment", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        assert response.status == 200, data
        return data

    grpc_times, http_times = _alternating(lambda: stub.SegmentPrompt(request, timeout=60), over_http, requests)
    sizes = {}
    for fmt in ("MASK_FORMAT_COCO_RLE", "MASK_FORMAT_PNG", "MASK_FORMAT_BITMAP"):
        r = pb.SegmentPromptRequest()
        r.CopyFrom(request)
        r.options.mask_format = pb.MaskFormat.Value(fmt)
        answer = stub.SegmentPrompt(r, timeout=60)
        body = to_json(r).encode()
        connection.request("POST", "/v1/images:segment", body, {"Content-Type": "application/json"})
        text = connection.getresponse().read()
        assert json_format.Parse(text, pb.SegmentPromptResponse()).results[0].masks == answer.results[0].masks
        sizes[fmt.removeprefix("MASK_FORMAT_").lower()] = {"protobuf_bytes": answer.ByteSize(),
                                                            "json_bytes": len(text)}
    connection.close()
    g, h = _stats(grpc_times), _stats(http_times)
    return {"grpc_p50_ms": g["p50_ms"], "http_json_p50_ms": h["p50_ms"], "http_vs_grpc_p50": h["p50_ms"] / g["p50_ms"],
            "answer_bytes": sizes}


def _security_cost(stack, image: np.ndarray, point, requests: int) -> dict:
    """`SegmentPrompt` p50 in plaintext, over TLS, over TLS with an API key checked against an access file
    (tenant-scoped ids and all), and traced (spans exported by OTLP to a collector in this process; the
    plaintext decoder's spans are the API's no-ops), timed in alternating blocks: more decoders on the stack's
    Redis and encoder."""
    import tempfile

    import trustme

    from maskserve.service import access
    from maskserve.service.stack import free_port, start_role, stop, wait_serving
    from maskserve.service.tracing import Collector

    folder = Path(tempfile.mkdtemp(prefix="maskserve-bench-tls-"))
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(folder / "server.crt")
    cert.private_key_pem.write_to_path(folder / "server.key")
    key = access.new_key()
    (folder / "access.json").write_text(json.dumps({"keys": [{"tenant": "bench", "sha256": access.key_hash(key)}]}))
    credentials = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
    tls_env = {"MASKSERVE_TLS_CERT_FILE": str(folder / "server.crt"),
               "MASKSERVE_TLS_KEY_FILE": str(folder / "server.key")}
    collector = Collector()
    variants = {"plaintext": ({}, ()), "TLS": (tls_env, ()),
                "TLS + API key": ({**tls_env, "MASKSERVE_AUTH_FILE": str(folder / "access.json")},
                                  (("authorization", f"Bearer {key}"),)),
                "traced (OTLP)": ({"MASKSERVE_OTLP_ENDPOINT": collector.endpoint}, ())}
    procs, calls = [], {}
    try:
        for name, (env, metadata) in variants.items():
            if env:
                port = free_port()
                procs.append(start_role("decoder", {**stack.env("decoder"), **env, "MASKSERVE_GRPC_PORT": str(port),
                                                    "MASKSERVE_METRICS_PORT": "0", "MASKSERVE_HTTP_PORT": "0"},
                                        folder / f"{port}.log"))
                secure = "MASKSERVE_TLS_CERT_FILE" in env
                wait_serving(f"127.0.0.1:{port}", proc=procs[-1], credentials=credentials if secure else None)
                channel = (grpc.secure_channel(f"127.0.0.1:{port}", credentials) if secure
                           else grpc.insecure_channel(f"127.0.0.1:{port}"))
            else:
                channel = grpc.insecure_channel(stack.target)
            stub = pb_grpc.SegmenterStub(channel)
            image_id = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=600,
                                        metadata=metadata).image_id
            request = pb.SegmentPromptRequest(image_id=image_id, prompts=[prompt_message(point, [1])])
            calls[name] = lambda stub=stub, request=request, metadata=metadata: stub.SegmentPrompt(
                request, timeout=60, metadata=metadata)
        times = {name: [] for name in calls}
        while len(times["plaintext"]) < requests:
            for name, call in calls.items():
                times[name] += _timed(call, 10, warmup=2)
    finally:
        for proc in procs:
            stop(proc)
        collector.stop()
    p50 = {name: float(np.percentile(np.asarray(t) * 1000, 50)) for name, t in times.items()}
    return {"p50_ms": p50, "tls_cost_p50_ms": p50["TLS"] - p50["plaintext"],
            "tls_and_auth_cost_p50_ms": p50["TLS + API key"] - p50["plaintext"],
            "tls_and_auth_vs_plaintext": p50["TLS + API key"] / p50["plaintext"],
            "tracing_cost_p50_ms": p50["traced (OTLP)"] - p50["plaintext"], "spans_exported": len(collector.spans)}


# The generator's settings the bench runs: the reference's defaults (with the tiny model's low predicted IoUs
# and random weights' none survive the IoU filter), and both filters off, so that every one of the grid's
# masks is upscaled, scored and encoded: the most post-processing any weights can cause.
EVERYTHING_CASES = {"defaults": {}, "filters off": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)}


def _everything(stack, stub, image_id: str, image: np.ndarray, sam, reps: int, grid: int) -> dict:
    """SegmentEverything (a grid×grid grid; 32 by default, as the reference) against the reference generator on the same weights, alternating: on a
    cached embedding, and end to end on an image neither side has seen."""
    from segment_anything import SamAutomaticMaskGenerator

    from maskserve.client import everything
    from maskserve.engines.automatic import Options

    def ours(target, options):
        request = pb.SegmentEverythingRequest(options=everything.options_to_proto(options), **target)
        masks = [r.masks for r in stub.SegmentEverything(request, timeout=3600) if r.WhichOneof("payload") == "masks"]
        return masks[-1]

    out = {}
    features = (sam.features, sam.original_size, sam.input_size)
    for case, (name, kwargs) in enumerate(EVERYTHING_CASES.items()):
        kwargs = dict(kwargs, points_per_side=grid)
        # every parameter sent, at the reference's defaults: a model directory's recommendations must not apply
        options = Options(**kwargs).validate(max_crop_layers=8, max_points=2**24, family=families.get("sam"))
        reference = SamAutomaticMaskGenerator(sam.model, **kwargs)
        cached_reference = SamAutomaticMaskGenerator(sam.model, **kwargs)

        def cached_set_image(_image):  # the embedding of `image`, as the service has it cached
            p = cached_reference.predictor
            p.features, p.original_size, p.input_size = features
            p.is_image_set = True

        cached_reference.predictor.set_image = cached_set_image
        mine, theirs, mine_mb, theirs_mb = [], [], [], []
        for _ in range(reps):
            seconds, mb = _peak_rss_during(stack.decoder.pid, lambda: ours({"image_id": image_id}, options))
            mine.append(seconds), mine_mb.append(mb)
            result = {}
            seconds, mb = _peak_rss_during(os.getpid(), lambda: result.update(n=len(cached_reference.generate(image))))
            theirs.append(seconds), theirs_mb.append(mb)
        last = ours({"image_id": image_id}, options)
        fresh = np.ascontiguousarray(np.roll(image, 101 + 37 * case, axis=0))  # one neither side has encoded
        e2e = _peak_rss_during(stack.decoder.pid, lambda: ours({"image": image_message(fresh)}, options))[0]
        e2e_reference = _peak_rss_during(os.getpid(), lambda: reference.generate(fresh))[0]
        out[name] = {
            "masks": last.total_masks, "reference_masks": result["n"],
            "cached_s": float(np.median(mine)), "reference_cached_s": float(np.median(theirs)),
            "cached_vs_reference": float(np.median(mine) / np.median(theirs)),
            "stage_seconds": dict(last.stage_seconds),
            "peak_mb_decoder_process": float(max(mine_mb)), "peak_mb_reference": float(max(theirs_mb)),
            "end_to_end_s": e2e, "reference_end_to_end_s": e2e_reference, "end_to_end_vs_reference": e2e / e2e_reference,
        }
    return out


def run_sam2(model_dir, checkpoint, requests: int = 100, encode_images: int = 4, set_image_reps: int = 3,
             series: dict | None = None) -> dict:
    """A SAM 2.1 model on its own stack against the official `SAM2ImagePredictor` on the same weights, in
    the same run: `SegmentPrompt` (1 point, 3 masks, RLE) in alternating blocks with the reference's
    `predict`; the encoder pool's throughput on distinct images against the reference's `set_image`; the
    embedding's bytes in Redis and its fetch time, float32 and float16. `series` gets the latencies."""
    import redis
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from maskserve.build.specs import get_spec

    series = series if series is not None else {}
    m = load(model_dir, encoder=False).manifest
    if m.family != "sam2.1":
        raise ValueError(f"{model_dir} holds a {m.family} model, not SAM 2.1")
    image = np.asarray(Image.open(BUNDLED_PHOTO).convert("RGB").resize((1024, 768), Image.BILINEAR))
    h, w = image.shape[:2]
    point = [[w * 0.5, h * 0.3]]
    reference = SAM2ImagePredictor(build_sam2(get_spec(m.model_type).config, ckpt_path=str(checkpoint), device="cpu"))
    reference.set_image(image)  # the first call pays one-off costs
    result: dict = {"model": {"type": m.model_type, "version": m.model_version, "backend": m.backend},
                    "scenarios": {}}
    with LocalStack(str(model_dir)) as stack, grpc.insecure_channel(stack.target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        image_id = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=600).image_id
        request = pb.SegmentPromptRequest(image_id=image_id, prompts=[prompt_message(point, [1])])
        mine, theirs = _alternating(lambda: stub.SegmentPrompt(request, timeout=60),
                                    lambda: reference.predict(np.array(point), np.array([1])), requests)
        series["SAM 2.1: segment 1 point, 3 masks RLE"], series["reference SAM2ImagePredictor.predict"] = mine, theirs
        r = redis.Redis.from_url(stack.redis_url)
        key = keys.embedding_key(m.model_version, image_id)
        stored = store.unpack(r.get(key))
        r.set(key + ":float16", store.pack(stored.arrays, m.model_version, stored.original_size, "float16"), ex=600)
        fetch = {dtype: _timed(lambda k=k: store.unpack(r.get(k)), requests)
                 for dtype, k in (("float32", key), ("float16", key + ":float16"))}
        # value_bytes: what a GET moves; redis_bytes: what Redis holds for it (MEMORY USAGE: the allocator's
        # size class, which is not the value's size)
        result["store"] = {dtype: {"value_bytes": int(r.strlen(k)), "redis_bytes": int(r.memory_usage(k)),
                                   "fetch": _stats(fetch[dtype])}
                           for dtype, k in (("float32", key), ("float16", key + ":float16"))}
        result["scenarios"]["encode_images_per_s"] = _encode_throughput(stub, image, encode_images)[0]
    result["reference"] = {"set_image_s": _set_image_seconds(reference, image, set_image_reps)}
    for name, values in (("segment 1 point, 3 masks RLE", mine), ("reference predict", theirs)):
        result["scenarios"][name] = _stats(values)
    seg, ref = result["scenarios"]["segment 1 point, 3 masks RLE"], result["scenarios"]["reference predict"]
    result["ratios"] = {
        "segment_p50_vs_reference_predict": seg["p50_ms"] / ref["p50_ms"],
        "encode_throughput_vs_reference_set_image": result["scenarios"]["encode_images_per_s"]
        * result["reference"]["set_image_s"],
        "float16_fetch_p50_vs_float32": result["store"]["float16"]["fetch"]["p50_ms"]
        / result["store"]["float32"]["fetch"]["p50_ms"],
    }
    return result


def run_mobile_sam(model_dir, checkpoint, frames: int = 8, encoder_reps: int = 5, compare_model_dir=None,
                   series: dict | None = None) -> dict:
    """The CPU tier: a MobileSAM model against the official `mobile_sam` on the same weights, in the same run —
    the encoder alone on the same input (ONNX Runtime against mobile_sam's TinyViT in PyTorch; and against
    `compare_model_dir`'s encoder, e.g. ViT-B); a new image's first mask end to end (`SegmentPrompt` with the
    image inline against `set_image` + `predict`); and the camera loop (`StreamSegment`, a new frame then a gaze
    point each, best mask) against `set_image` + `predict` per frame, frames/s and per stage. Each pair is
    timed call by call in turn."""
    import torch
    from mobile_sam import SamPredictor

    from maskserve.build.checkpoint import load_model

    series = series if series is not None else {}
    model = load(model_dir, decoder=False)
    m = model.manifest
    reference_model = load_model(checkpoint, m.model_type)
    reference = SamPredictor(reference_model)
    clip = _clip(2 * frames + 2)
    h, w = clip[0].shape[:2]
    gaze = [(w * (0.5 + 0.3 * np.sin(i / 3)), h * (0.5 + 0.2 * np.cos(i / 4))) for i in range(frames)]
    result: dict = {"model": {"type": m.model_type, "version": m.model_version, "backend": m.backend},
                    "frame": [h, w], "torch_threads": torch.get_num_threads()}

    x = prompts.prepare_image(clip[0], m)[None]
    ours, theirs = [], []
    with torch.inference_mode():
        def tinyvit():
            return reference_model.image_encoder(torch.from_numpy(x))

        for _ in range(encoder_reps):  # one call each in turn, each side warmed up first
            ours += _timed(lambda: model.encoder.encode(x), 1, warmup=0 if ours else 1)
            theirs += _timed(tinyvit, 1, warmup=0 if theirs else 1)
    series["MobileSAM encoder (ONNX Runtime)"], series["reference mobile_sam TinyViT (PyTorch)"] = ours, theirs
    encoder = {"ours": _stats(ours), "reference": _stats(theirs)}
    if compare_model_dir is not None:
        other = load(compare_model_dir, decoder=False)
        y = prompts.prepare_image(clip[0], other.manifest)[None]
        encoder["compared"] = {"model_type": other.manifest.model_type,
                               **_stats(_timed(lambda: other.encoder.encode(y), max(2, encoder_reps // 2), warmup=1))}
    result["encoder"] = encoder
    model = other = None  # this process's sessions released before the stack's processes start

    def reference_step(frame, point) -> tuple[float, float]:
        t0 = time.perf_counter()
        reference.set_image(frame)
        t1 = time.perf_counter()
        reference.predict(np.array([point]), np.array([1]))  # the stream answers the best of these three
        return t1 - t0, time.perf_counter() - t1

    # Both sides frame by frame in turn (the stack idles while the reference runs), so that a drifting machine
    # reaches both alike.
    loop_frames, first_frames = clip[2:2 + frames], clip[2 + frames:]
    stages, ref_stages, first, ref_first = [], [], [], []
    with LocalStack(str(model_dir)) as stack, grpc.insecure_channel(stack.target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        camera = _Stream(stub)
        for frame, point in zip(clip[:2], gaze):  # warm-up: sessions, connections, one-off costs on both sides
            camera.frame_then_gaze(frame, point)
            reference_step(frame, point)
        for frame, point in zip(loop_frames, gaze):
            stages.append(camera.frame_then_gaze(frame, point))
            ref_stages.append(reference_step(frame, point))
        camera.close()
        for frame, point in zip(first_frames, gaze):
            request = pb.SegmentPromptRequest(image=image_message(frame), prompts=[prompt_message([point], [1])],
                                              options=pb.OutputOptions(best_mask_only=True))
            first += _timed(lambda: stub.SegmentPrompt(request, timeout=600), 1, warmup=0)
            ref_first.append(sum(reference_step(frame, point)))
    series["first mask of a new image"], series["reference set_image + predict"] = first, ref_first
    result["first_mask"] = {"ours": _stats(first), "reference": _stats(ref_first)}
    result["camera_loop"] = {
        "frames": frames,
        "ours": {"frames_per_s": frames / sum(a + b for a, b in stages), "encode": _stats([a for a, _ in stages]),
                 "decode": _stats([b for _, b in stages])},
        "reference": {"frames_per_s": frames / sum(a + b for a, b in ref_stages),
                      "set_image": _stats([a for a, _ in ref_stages]), "predict": _stats([b for _, b in ref_stages])},
    }
    result["ratios"] = {
        "encoder_p50_vs_reference_tinyvit": encoder["ours"]["p50_ms"] / encoder["reference"]["p50_ms"],
        "first_mask_p50_vs_reference_set_image_predict":
            result["first_mask"]["ours"]["p50_ms"] / result["first_mask"]["reference"]["p50_ms"],
        "camera_loop_fps_vs_reference": result["camera_loop"]["ours"]["frames_per_s"]
            / result["camera_loop"]["reference"]["frames_per_s"],
    }
    if "compared" in encoder:
        result["ratios"][f"encoder_p50_vs_{encoder['compared']['model_type']}_encoder"] = \
            encoder["ours"]["p50_ms"] / encoder["compared"]["p50_ms"]
    return result


SAM3_PHRASES = ("a cat", "a dog", "a person", "the red car", "a tree", "a window", "a wheel", "a street sign",
                 "a yellow school bus", "a forklift")


def run_sam3(model_dir, checkpoint, reps: int = 3, encode_images: int = 2, series: dict | None = None) -> dict:
    """SAM 3 against the `sam3` package's `Sam3Processor` on the same weights, in the same run: `SegmentConcept`
    with one phrase and with ten (one call) against `set_text_prompt` per phrase on a set image, each pair timed
    call by call in turn; the vision backbone's throughput on the encoder pool (images sent at once) against
    `set_image`; and the decoder's fetch of an image's embedding from the store (its own `embedding_fetch` stage)."""
    import torch
    from sam3.model.sam3_image_processor import Sam3Processor

    from maskserve.build.sam3_export import load_model
    from maskserve.engines.model_dir import Manifest

    series = series if series is not None else {}
    m = Manifest.load(model_dir)
    processor = Sam3Processor(load_model(checkpoint), device="cpu")
    image = _clip(1)[0]
    result: dict = {"model": {"type": m.model_type, "version": m.model_version, "backend": m.backend,
                              "architecture": m.concepts.get("architecture")},
                    "image": list(image.shape[:2]), "torch_threads": torch.get_num_threads(),
                    "embedding_mb": {"float32": m.embedding_nbytes() / 1e6, "float16": m.embedding_nbytes("float16") / 1e6}}
    with LocalStack(str(model_dir)) as stack, grpc.insecure_channel(
            stack.target, options=[("grpc.max_receive_message_length", 1 << 30)]) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        set_image = []
        with torch.inference_mode():
            for i in range(max(1, encode_images // 2)):
                start = time.perf_counter()
                state = processor.set_image(Image.fromarray(np.roll(image, 7 * i, axis=0)))
                set_image.append(time.perf_counter() - start)
        images_per_s, ids = _encode_throughput(stub, image, encode_images)
        result["encoder"] = {"images_per_s": images_per_s, "reference_set_image": _stats(set_image)}
        fetch0 = _stage_totals(stack.metrics_ports[0])
        one, ten, ref_one, ref_ten = [], [], [], []

        def concept(phrases, image_id):
            stub.SegmentConcept(pb.SegmentConceptRequest(image_id=image_id, phrases=phrases), timeout=3600)

        def reference(phrases):
            with torch.inference_mode():
                for phrase in phrases:
                    processor.set_text_prompt(phrase, state)

        for image_id in ids:  # the first call on each image fetches its embedding; and warms both sides
            concept(SAM3_PHRASES[:1], image_id)
        fetch1 = _stage_totals(stack.metrics_ports[0])
        reference(SAM3_PHRASES[:1])
        for _ in range(reps):
            one += _timed(lambda: concept(SAM3_PHRASES[:1], ids[0]), 1, warmup=0)
            ref_one += _timed(lambda: reference(SAM3_PHRASES[:1]), 1, warmup=0)
        ten += _timed(lambda: concept(list(SAM3_PHRASES), ids[0]), 1, warmup=0)
        ref_ten += _timed(lambda: reference(SAM3_PHRASES), 1, warmup=0)
    fetches = fetch1.get(("embedding_fetch", "count"), 0) - fetch0.get(("embedding_fetch", "count"), 0)
    fetch_s = fetch1.get(("embedding_fetch", "sum"), 0) - fetch0.get(("embedding_fetch", "sum"), 0)
    result["embedding_fetch_ms"] = 1e3 * fetch_s / fetches if fetches else None
    series["SegmentConcept, 1 phrase"], series["reference set_text_prompt"] = one, ref_one
    result["segment_concept"] = {"one_phrase": {"ours": _stats(one), "reference": _stats(ref_one)},
                                 "ten_phrases": {"ours": _stats(ten), "reference": _stats(ref_ten)}}
    c = result["segment_concept"]
    result["ratios"] = {
        "one_phrase_p50_vs_reference": c["one_phrase"]["ours"]["p50_ms"] / c["one_phrase"]["reference"]["p50_ms"],
        "ten_phrases_vs_reference": c["ten_phrases"]["ours"]["p50_ms"] / c["ten_phrases"]["reference"]["p50_ms"],
        "encoder_pool_images_per_s_vs_reference_set_image":
            images_per_s * result["encoder"]["reference_set_image"]["p50_ms"] / 1e3,
    }
    return result


def run(model_dir=None, checkpoint=None, model_type=None, requests: int = 100, clients: int = 4,
        rate: float = 10.0, seconds: float = 5.0, encode_images: int = 8, out: Path = Path("bench"),
        reference: bool = True, everything_reps: int = 3, everything_grid: int = 32,
        sam2_model_dir=None, sam2_checkpoint=None, mobile_sam_model_dir=None, mobile_sam_checkpoint=None,
        sam3_model_dir=None, sam3_checkpoint=None) -> dict:
    """The SAM bench; with `sam2_model_dir` and `sam2_checkpoint` also `run_sam2`'s, under "sam2.1"; with
    `mobile_sam_model_dir` and `mobile_sam_checkpoint` `run_mobile_sam`'s (its encoder against this model's too),
    under "mobile_sam"; with `sam3_model_dir` and `sam3_checkpoint` `run_sam3`'s, under "sam3"."""
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    model = load(model_dir, encoder=False)
    m = model.manifest
    image = np.asarray(Image.open(BUNDLED_PHOTO).convert("RGB").resize((1024, 768), Image.BILINEAR))
    h, w = image.shape[:2]
    point = [[w * 0.5, h * 0.3]]
    result: dict = {"model": {"type": m.model_type, "version": m.model_version, "backend": m.backend},
                    "image": [h, w], "machine": {**cpu_peak_flops(), "gemm_flops": measured_gemm_flops()}, "scenarios": {}}
    series: dict[str, list[float]] = {}
    sam = _reference_predictor(checkpoint, model_type or m.model_type, image) if reference and checkpoint else None
    with LocalStack(str(model_dir), http_port=free_port()) as stack, grpc.insecure_channel(stack.target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        image_id = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=600).image_id
        rle3 = pb.SegmentPromptRequest(image_id=image_id, prompts=[prompt_message(point, [1])])
        best = pb.SegmentPromptRequest(image_id=image_id, prompts=[prompt_message(point, [1])],
                                       options=pb.OutputOptions(best_mask_only=True))
        cpu0, stages0 = _cpu_seconds(stack.decoder.pid), _stage_totals(stack.metrics_ports[0])
        calls = 0

        def segment():
            nonlocal calls
            calls += 1
            return stub.SegmentPrompt(rle3, timeout=60)

        if sam is not None:  # the headline ratio's two sides, measured in alternating blocks
            series["segment 1 point, 3 masks RLE"], series["reference SamPredictor.predict"] = _alternating(
                segment, lambda: sam.predict(np.array(point), np.array([1])), requests)
        else:
            series["segment 1 point, 3 masks RLE"] = _timed(segment, requests)
        cpu_per_request = (_cpu_seconds(stack.decoder.pid) - cpu0) / calls
        stages1 = _stage_totals(stack.metrics_ports[0])
        in_service = {}  # mean time per request of each stage inside the decoder process
        for stage in ("decode", "postprocess"):
            total, n = (stages1.get((stage, k), 0) - stages0.get((stage, k), 0) for k in ("sum", "count"))
            in_service[f"{stage}_mean_ms"] = 1000 * total / n if n else None
        series["segment 1 point, best mask"] = _timed(lambda: stub.SegmentPrompt(best, timeout=60), requests)
        lat, throughput = _closed_loop(stub, rle3, clients, max(1, requests // clients))
        series[f"closed loop, {clients} clients"] = lat
        result["scenarios"]["closed_loop_throughput_rps"] = throughput
        series[f"open loop, {rate:g} req/s"] = asyncio.run(_open_loop(stack.target, rle3, rate, seconds))
        boxes = [[x, y, x + 200, y + 150] for x in range(0, w - 200, 200) for y in range(0, h - 150, 300)][:16]
        many = pb.SegmentPromptRequest(image_id=image_id, prompts=[prompt_message(box=b) for b in boxes],
                                       options=pb.OutputOptions(single_mask=True))
        series[f"{len(boxes)} boxes in one call"] = _timed(lambda: stub.SegmentPrompt(many, timeout=120),
                                                           max(3, requests // 10), warmup=1)
        gaze = [(w * (0.5 + 0.35 * np.sin(i / 7)), h * (0.4 + 0.2 * np.cos(i / 5))) for i in range(requests)]
        series["stream, gaze points"] = _stream(stub, image_id, gaze)
        import redis

        r = redis.Redis.from_url(stack.redis_url)
        key = keys.embedding_key(m.model_version, image_id)
        series["embedding fetch from Redis"] = _timed(lambda: store.unpack(r.get(key)), requests)
        stored = store.unpack(r.get(key))
        r.set(key + ":float16", store.pack(stored.arrays, m.model_version, stored.original_size, "float16"), ex=600)
        series["embedding fetch from Redis, float16"] = _timed(lambda: store.unpack(r.get(key + ":float16")), requests)
        result["scenarios"]["encode_images_per_s"], ids = _encode_throughput(stub, image, encode_images)
        result["security"] = _security_cost(stack, image, point, requests)
        result["http"] = _http_cost(stack, rle3, stub, requests)
        result["client"], client_series = _client_levers(stack, image_id, point, sam, requests)
        series.update({f"client: {k}": v for k, v in client_series.items() if not k.startswith("reference")})
        if sam is not None:  # next to the encoder's figure in time
            result["reference"] = {"set_image_s": _set_image_seconds(sam, image)}
            if everything_reps:
                result["everything"] = _everything(stack, stub, image_id, image, sam, everything_reps,
                                                  everything_grid)
        # The decoder has not seen these embeddings: each first prompt fetches from Redis and prepares.
        series["segment, cache miss (embedding from Redis)"] = [
            _timed(lambda i=i: stub.SegmentPrompt(pb.SegmentPromptRequest(
                image_id=i, prompts=[prompt_message(point, [1])]), timeout=60), 1, warmup=0)[0] for i in ids]

    # The decoder run alone as the service runs it (the image's share prepared once, masks of the image's cells
    # only), and its FLOPs.
    rng = np.random.default_rng(0)
    emb = {name: rng.normal(size=(1, *shape)).astype(np.float32) for name, shape in m.array_shapes().items()}
    pts, lbl = families.of(m).prompt_points(np.array(point, np.float64), np.array([1.0]), (h, w), m.image_size)
    no_mask = (np.zeros((1, 1, m.mask_input_size, m.mask_input_size), np.float32), np.zeros(1, np.float32))
    prepared = model.decoder.prepare(emb)
    extent = prompts.mask_extent(m, (h, w))
    series["decoder run alone"] = _timed(
        lambda: model.decoder.decode(emb, pts[None], lbl[None], *no_mask, prepared, extent), requests)
    flops = image_flops = None
    if m.backend == "onnxruntime":
        if prepared is not None:
            feeds = model.decoder.points_feeds(prepared, pts[None], lbl[None], extent)
            flops = count_flops(str(model_dir / m.decoder["points_file"]), feeds)["total"]
            image_flops = count_flops(str(model_dir / m.decoder["image_file"]),
                                      {"image_embeddings": emb["image_embeddings"]})["total"]
        else:
            feeds = {**emb, "point_coords": pts[None], "point_labels": lbl[None],
                     "mask_input": no_mask[0], "has_mask_input": no_mask[1]}
            flops = count_flops(str(model_dir / m.decoder["file"]), feeds)["total"]
    for name, values in series.items():
        result["scenarios"][name] = _stats(values)
    seg = result["scenarios"]["segment 1 point, 3 masks RLE"]
    dec = result["scenarios"]["decoder run alone"]
    result["decoder"] = {"flops_per_prompt": flops, "flops_per_image_once": image_flops,
                         "cpu_seconds_per_request": cpu_per_request,
                         "achieved_flops": flops / (dec["p50_ms"] / 1000) if flops else None,
                         "serving_overhead_p50_ms": seg["p50_ms"] - dec["p50_ms"],
                         "in_service": in_service}
    if in_service.get("decode_mean_ms"):  # the same measured inside the service, free of run-to-run drift
        result["decoder"]["serving_overhead_mean_ms"] = seg["mean_ms"] - in_service["decode_mean_ms"]
    if flops:
        result["decoder"]["fraction_of_peak"] = result["decoder"]["achieved_flops"] / result["machine"]["peak_flops"]
        result["decoder"]["fraction_of_gemm"] = result["decoder"]["achieved_flops"] / result["machine"]["gemm_flops"]
    if sam2_model_dir is not None:
        result["sam2.1"] = run_sam2(sam2_model_dir, sam2_checkpoint, requests, max(2, encode_images // 2),
                                    series=series)
        if load(sam2_model_dir, encoder=False).manifest.tracking:
            result["tracking"] = run_tracking(sam2_model_dir, sam2_checkpoint)

    if mobile_sam_model_dir is not None:
        result["mobile_sam"] = run_mobile_sam(mobile_sam_model_dir, mobile_sam_checkpoint,
                                              compare_model_dir=model_dir, series=series)
    if sam3_model_dir is not None:
        result["sam3"] = run_sam3(sam3_model_dir, sam3_checkpoint, series=series)

    if sam is not None:
        ref = result["reference"]
        ref["predict"] = _stats(series["reference SamPredictor.predict"])
        result["ratios"] = {
            "segment_p50_vs_reference_predict": seg["p50_ms"] / ref["predict"]["p50_ms"],
            "segment_p99_vs_own_p50": seg["p99_ms"] / seg["p50_ms"],
            "closed_loop_throughput_vs_reference_sequential": result["scenarios"]["closed_loop_throughput_rps"]
            / (1000 / ref["predict"]["mean_ms"]),
            "encode_throughput_vs_reference_set_image": result["scenarios"]["encode_images_per_s"]
            * ref["set_image_s"],
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(series, out / "bench.png")
    return result


def _reference_predictor(checkpoint, model_type, image):
    """The reference `SamPredictor` on the same weights, its image set (the first call pays one-off costs)."""
    from segment_anything import SamPredictor

    from maskserve.build.checkpoint import load_model

    predictor = SamPredictor(load_model(checkpoint, model_type))
    predictor.set_image(image)
    return predictor


def _set_image_seconds(predictor, image, reps: int = 3) -> float:
    times = []
    for _ in range(reps):  # one call swung from 17 to 27 s between runs on a shared VM: the median of three
        start = time.perf_counter()
        predictor.set_image(image)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _plot(series: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    tab20 = plt.get_cmap("tab20").colors  # its ten dark colours, then their light pairs: 20 distinct lines
    colours = tab20[::2] + tab20[1::2]  # the reference is drawn black, dashed
    for i, (name, values) in enumerate(series.items()):
        ms = np.sort(np.asarray(values) * 1000)
        reference = name.startswith("reference")
        ax.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=name, color="black" if reference else
                colours[i % len(colours)], linestyle="--" if reference else "-")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests ≤ latency")
    ax.set_title("maskserve latency distributions")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clip(n: int, h: int = 480, w: int = 640) -> list[np.ndarray]:
    """The bundled photo with four discs moving across it: n RGB frames."""
    import cv2

    base = np.asarray(Image.open(BUNDLED_PHOTO).convert("RGB").resize((w, h), Image.BILINEAR))
    frames = []
    for f in range(n):
        im = base.copy()
        for k in range(4):
            cv2.circle(im, (80 + 140 * k + 12 * f, 160 + 60 * (k % 2) + 6 * f), 40, (60 * k, 220 - 50 * k, 90), -1)
        frames.append(im)
    return frames


def run_tracking(model_dir, checkpoint, frames: int = 6, rate_fps: float = 4.0) -> dict:
    """Video tracking against the official `SAM2VideoPredictor.propagate_in_video` on the same weights and
    frames, in the same run: seconds per frame (end to end: the frame's image encoder and the tracking step)
    for 1 and 4 objects prompted on the first frame; the checkpoint's bytes per object and its time; and a live
    source at `rate_fps` through the service with drop_stale_frames (frames tracked, dropped, latency)."""
    import tempfile

    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from maskserve.build.specs import get_spec
    from maskserve.video import VideoTracker

    m = load(model_dir, encoder=False).manifest
    clip = _clip(frames)
    points = [[80 + 140 * k, 160 + 60 * (k % 2)] for k in range(4)]
    result: dict = {"model": m.model_type, "frames": frames, "frame_size": list(clip[0].shape[:2]), "objects": {}}
    with tempfile.TemporaryDirectory() as folder:
        for i, frame in enumerate(clip):
            Image.fromarray(frame).save(Path(folder) / f"{i:05d}.jpg", quality=95)
        reference = build_sam2_video_predictor(get_spec(m.model_type).config, ckpt_path=str(checkpoint), device="cpu")
        for n in (1, 4):
            with torch.inference_mode():
                state = reference.init_state(folder)
                for k in range(n):
                    reference.add_new_points_or_box(state, 0, k + 1, points=[points[k]], labels=[1])
                stamps = [time.perf_counter()]
                for _ in reference.propagate_in_video(state):
                    stamps.append(time.perf_counter())
            theirs = float(np.mean(np.diff(stamps)[1:]))  # frame 0 is the prompted one
            tracker = VideoTracker(model_dir, expected_frames=frames)
            tracker.track(clip[0])
            for k in range(n):
                tracker.add_new_points_or_box(k + 1, [points[k]], [1])
            session = tracker._impl.session
            stamps = [time.perf_counter()]
            for frame in clip[1:]:
                tracker.track(frame)
                stamps.append(time.perf_counter())
            mine = float(np.mean(np.diff(stamps)))
            started = time.perf_counter()
            state_bytes = len(session.state_bytes())
            checkpoint_s = time.perf_counter() - started
            result["objects"][n] = {"seconds_per_frame": mine, "reference_seconds_per_frame": theirs,
                                    "ratio_vs_reference": mine / theirs,
                                    "checkpoint_bytes": state_bytes, "checkpoint_bytes_per_object": state_bytes / n,
                                    "checkpoint_state_seconds": checkpoint_s}
    one, four = result["objects"][1], result["objects"][4]
    result["ratios"] = {"frame_1_object_vs_reference": one["ratio_vs_reference"],
                        "frame_4_objects_vs_reference": four["ratio_vs_reference"],
                        "four_objects_vs_one": four["seconds_per_frame"] / one["seconds_per_frame"]}
    result["live"] = _live_drops(model_dir, clip, points[0], rate_fps)
    return result


def _live_drops(model_dir, clip, point, rate_fps: float) -> dict:
    """Frames sent at a fixed rate, without waiting, on a drop_stale_frames session with one object."""
    import queue

    sent: dict[int, float] = {}
    outbox: queue.Queue = queue.Queue()
    with LocalStack(str(model_dir)) as stack, grpc.insecure_channel(stack.target) as channel:
        call = pb_grpc.SegmenterStub(channel).TrackObjects(iter(outbox.get, None), timeout=600)
        outbox.put(pb.TrackRequest(sequence=1, start=pb.TrackStart(drop_stale_frames=True,
                                                                   mask_format=pb.MASK_FORMAT_NONE)))
        next(call)
        outbox.put(pb.TrackRequest(sequence=2, frame=image_message(clip[0])))
        next(call)
        outbox.put(pb.TrackRequest(sequence=3, add_object=pb.ObjectPrompt(
            object_id=1, points=[pb.Point(x=point[0], y=point[1], label=1)])))
        next(call)
        frames = [clip[k % len(clip)] for k in range(4 * len(clip))]

        def send():
            for n, frame in enumerate(frames):
                sent[4 + n] = time.perf_counter()
                outbox.put(pb.TrackRequest(sequence=4 + n, frame=image_message(frame)))
                time.sleep(1 / rate_fps)
            outbox.put(None)
        threading.Thread(target=send, daemon=True).start()
        latencies, dropped = [], 0
        for reply in call:
            if reply.WhichOneof("outcome") == "dropped":
                dropped += 1
            elif reply.WhichOneof("outcome") == "frame":
                latencies.append(time.perf_counter() - sent[reply.sequence])
    return {"input_fps": rate_fps, "frames_sent": len(frames), "tracked": len(latencies), "dropped": dropped,
            "tracked_fps": len(latencies) * rate_fps / len(frames), "latency": _stats(latencies)}
