"""The serving path end to end: real redis-server, encoder and decoder as real processes, real gRPC."""

from __future__ import annotations

import concurrent.futures
import io
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from conftest import metric as _metric, report

from maskserve import Predictor
from maskserve.engines import masks
from maskserve.engines.model_dir import Manifest
from maskserve.service import keys
from maskserve.client import Client, decode_mask, image_message, prompt_message
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.stack import LocalStack, free_port, start_role, stop, wait_serving

ENCODER_MAX_PIXELS = 1_000_000  # the encoder refuses what the decoder accepts: a job that always fails


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with LocalStack(log_dir=tmp_path_factory.mktemp("stack"),
                    encoder_env={"MASKSERVE_MAX_IMAGE_PIXELS": str(ENCODER_MAX_PIXELS),
                                 "MASKSERVE_CLAIM_IDLE_MS": "1500"}) as s:
        yield s


@pytest.fixture(scope="module")
def stub(stack):
    with grpc.insecure_channel(stack.target) as channel:
        yield pb_grpc.SegmenterStub(channel)


@pytest.fixture(scope="module")
def coffee_id(stub, photos):
    return stub.EncodeImage(pb.EncodeImageRequest(image=image_message(photos["coffee_400x600"]), wait=True),
                            timeout=60).image_id


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def _point_request(image_id, x, y, **options):
    return pb.SegmentPromptRequest(image_id=image_id, prompts=[prompt_message([[x, y]], [1])],
                                   options=pb.OutputOptions(**options))


def assert_same_masks(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float noise: the pool's embedding and an in-process one differ in the last bits, which can
    flip a pixel whose logit is within that noise of zero."""
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.count_nonzero(a != b) <= max(2, a.size // 100_000)


def test_encoded_once_prompted_many_times_equals_in_process_predictor(stack, photos, tiny_model_dir):
    image = photos["chelsea_300x451"]
    local = Predictor(tiny_model_dir)
    local.set_image(image)
    h, w = image.shape[:2]
    with Client(stack.target) as client:
        client.set_image(image)
        rng = np.random.default_rng(0)
        for _ in range(8):
            point = rng.uniform(0, 1, (1, 2)) * [w, h]
            remote = client.predict(point, np.array([1]))
            ours = local.predict(point, np.array([1]))
            assert_same_masks(remote[0], ours[0])
            assert np.allclose(remote[1], ours[1], atol=1e-5) and np.allclose(remote[2], ours[2], atol=1e-4)
        box = np.array([50, 40, 300, 250])
        remote = client.predict(box=box, multimask_output=False)
        ours = local.predict(box=box, multimask_output=False)
        assert_same_masks(remote[0], ours[0])
        refine = client.predict(np.array([[100, 100]]), np.array([1]), mask_input=remote[2], multimask_output=False)
        assert_same_masks(refine[0], local.predict(np.array([[100, 100]]), np.array([1]), mask_input=ours[2],
                                                       multimask_output=False)[0])
        logits = client.predict(box=box, return_logits=True, multimask_output=False)[0]
        assert np.abs(logits - local.predict(box=box, return_logits=True, multimask_output=False)[0]).max() < 1e-4


def test_mask_formats_scores_and_many_boxes_in_one_call(stub, coffee_id, photos, tiny_model_dir):
    local = Predictor(tiny_model_dir)
    local.set_image(photos["coffee_400x600"])
    boxes = [[10, 10, 200, 150], [300, 100, 590, 390], [100, 200, 400, 380], [0, 0, 599, 399]]
    request = pb.SegmentPromptRequest(image_id=coffee_id, prompts=[prompt_message(box=b) for b in boxes])
    for fmt in (pb.MASK_FORMAT_COCO_RLE, pb.MASK_FORMAT_PNG, pb.MASK_FORMAT_BITMAP):
        request.options.CopyFrom(pb.OutputOptions(single_mask=True, mask_format=fmt))
        reply = stub.SegmentPrompt(request, timeout=30)
        assert len(reply.results) == len(boxes)
        for b, result in zip(boxes, reply.results):
            (m,) = result.masks
            expected, iou, _ = local.predict(box=np.array(b), multimask_output=False, return_logits=True)
            binary = expected[0] > 0
            assert_same_masks(decode_mask(m), binary)
            assert abs(m.predicted_iou - iou[0]) < 1e-5
            assert abs(int(m.area) - int(binary.sum())) <= 2
            assert np.abs(np.subtract((m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height), masks.bbox_xywh(binary))).max() <= 1
            assert abs(m.stability_score - masks.stability_score(expected[0])) < 1e-3
    # RLE is pycocotools' own
    from pycocotools import mask as coco

    request.options.CopyFrom(pb.OutputOptions(single_mask=True))
    m = stub.SegmentPrompt(request, timeout=30).results[0].masks[0]
    assert coco.area({"size": [m.height, m.width], "counts": m.rle.counts}) == m.area
    best = stub.SegmentPrompt(_point_request(coffee_id, 300, 200, best_mask_only=True), timeout=30).results[0]
    all3 = stub.SegmentPrompt(_point_request(coffee_id, 300, 200), timeout=30).results[0]
    assert len(best.masks) == 1 and len(all3.masks) == 3
    assert best.masks[0].predicted_iou == max(m.predicted_iou for m in all3.masks)


def test_identical_images_are_encoded_once(stack, stub, photos):
    image = np.ascontiguousarray(photos["rocket_427x640"][::-1])  # an image no other test sends
    before = _metric(stack.metrics_ports[1], 'maskserve_encoder_jobs_total{outcome="done"}')
    request = pb.EncodeImageRequest(image=pb.Image(encoded=_png(image)), wait=True)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: stub.EncodeImage(request, timeout=60), range(6)))
    assert len({r.image_id for r in replies}) == 1 and all(r.ready for r in replies)
    assert (replies[0].width, replies[0].height) == (640, 427)
    time.sleep(0.5)
    assert _metric(stack.metrics_ports[1], 'maskserve_encoder_jobs_total{outcome="done"}') == before + 1
    again = stub.EncodeImage(pb.EncodeImageRequest(image=pb.Image(encoded=_png(image))), timeout=10)
    assert again.ready and again.image_id == replies[0].image_id


def test_segment_with_the_image_itself_and_no_wait_encode(stub, photos):
    image = np.ascontiguousarray(photos["astronaut_512x512"][:300, :400])
    queued = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=False), timeout=10)
    reply = stub.SegmentPrompt(pb.SegmentPromptRequest(image=image_message(image),
                                                       prompts=[prompt_message([[100, 100]], [1])]), timeout=60)
    assert reply.image_id == queued.image_id and len(reply.results[0].masks) == 3


def test_concurrent_clients(stack, photos, tiny_model_dir):
    image = photos["coffee_400x600"]
    local = Predictor(tiny_model_dir)
    local.set_image(image)
    points = [np.array([[40.0 + 60 * i, 30.0 + 35 * i]]) for i in range(10)]
    expected = [local.predict(p, np.array([1]))[0] for p in points]

    def client_run(k):
        with Client(stack.target) as c:
            c.set_image(image)
            return all(np.count_nonzero(c.predict(p, np.array([1]))[0] != e) <= 2
                       for p, e in zip(points[k % 3:] + points[:k % 3], expected[k % 3:] + expected[:k % 3]))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(client_run, range(4)))


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


BAD_PROMPTS = [
    ("outside", prompt_message([[700, 10]], [1]), "outside the 600x400 image"),
    ("nan", prompt_message([[float("nan"), 10]], [1]), "NaN"),
    ("inf box", prompt_message(box=[0, 0, float("inf"), 10]), "NaN or infinity"),
    ("box outside", prompt_message(box=[0, 0, 900, 10]), "outside"),
    ("box inverted", prompt_message(box=[100, 100, 50, 50]), "x0 > x1"),
    ("empty", pb.Prompt(), "at least one point or a box"),
    ("label", prompt_message([[10, 10]], [2]), "point_labels must be 1"),
    ("too many points", prompt_message(np.full((65, 2), 5.0), np.ones(65)), "at most 64"),
    ("mask shape", prompt_message([[10, 10]], [1], mask_input=np.zeros((1, 64, 64))), "mask_input must have shape"),
    ("mask bytes", pb.Prompt(points=[pb.Point(x=1, y=1, label=1)], mask_input=pb.LowResLogits(side=7, data=b"x")),
     "float32 grid"),
]


@pytest.mark.parametrize("name,prompt,message", BAD_PROMPTS, ids=[b[0] for b in BAD_PROMPTS])
def test_bad_prompts_are_invalid_argument(stub, coffee_id, name, prompt, message):
    code, details = _code(lambda: stub.SegmentPrompt(
        pb.SegmentPromptRequest(image_id=coffee_id, prompts=[prompt]), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, details


BAD_IMAGES = [
    ("undecodable", pb.Image(encoded=b"\x89PNG\r\n\x1a\nnot really"), "not a JPEG, PNG or WebP"),
    ("empty bytes", pb.Image(encoded=b""), "empty"),
    ("no image", pb.Image(), "the image is empty"),
    ("gif", pb.Image(encoded=(lambda b: (Image.new("RGB", (8, 8)).save(b, format="GIF"), b.getvalue())[1])(io.BytesIO())),
     "GIF images are not supported"),
    ("zero size", pb.Image(raw=pb.RawImage(width=0, height=5, format=pb.PIXEL_FORMAT_RGB8)), "zero size"),
    ("no pixel format", pb.Image(raw=pb.RawImage(width=2, height=2, data=b"\0" * 12)), "need a pixel format"),
    ("short raw", pb.Image(raw=pb.RawImage(width=2, height=2, format=pb.PIXEL_FORMAT_RGB8, data=b"\0" * 5)),
     "needs 12 bytes"),
    ("oversized", pb.Image(raw=pb.RawImage(width=10000, height=5000, format=pb.PIXEL_FORMAT_GRAY8)),
     "at most 40000000"),
]


@pytest.mark.parametrize("name,image,message", BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_bad_images_are_invalid_argument(stub, name, image, message):
    code, details = _code(lambda: stub.EncodeImage(pb.EncodeImageRequest(image=image, wait=True), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, details


def test_other_request_errors(stub, coffee_id):
    code, details = _code(lambda: stub.SegmentPrompt(_point_request("0" * 32, 1, 1), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND and "EncodeImage" in details
    code, _ = _code(lambda: stub.SegmentPrompt(pb.SegmentPromptRequest(image_id=coffee_id), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = _code(lambda: stub.SegmentPrompt(pb.SegmentPromptRequest(prompts=[pb.Prompt()]), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    many = pb.SegmentPromptRequest(image_id=coffee_id, prompts=[prompt_message([[1, 1]], [1])] * 257)
    code, details = _code(lambda: stub.SegmentPrompt(many, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 256" in details


def test_a_job_that_keeps_failing_is_dead_lettered_with_a_clear_error(stack, stub):
    big = np.zeros((1100, 1000, 3), np.uint8)  # within the decoder's limit, over this encoder's
    code, details = _code(lambda: stub.EncodeImage(pb.EncodeImageRequest(image=image_message(big), wait=True),
                                                   timeout=30))
    assert code == grpc.StatusCode.INTERNAL and "could not encode" in details and "at most 1000000" in details
    r = redis.Redis.from_url(stack.redis_url)
    version = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version
    assert r.xlen(keys.dead_letter_stream(f"jobs:{version}")) >= 1


def test_deadline_exceeded_while_waiting_for_the_encoder(stack, stub):
    """With no worker reading the queue, a wait for a new image ends at the caller's deadline."""
    stop(stack.encoder)
    try:
        image = np.random.default_rng(5).integers(0, 255, (64, 80, 3), dtype=np.uint8)
        code, _ = _code(lambda: stub.SegmentPrompt(pb.SegmentPromptRequest(
            image=image_message(image), prompts=[prompt_message([[5, 5]], [1])]), timeout=1.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        stack.encoder = stack.start_encoder()
    # the job stayed queued: the restarted worker encodes it
    reply = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=60)
    assert reply.ready


def test_worker_dies_mid_batch_and_nothing_is_lost(stack, stub, photos):
    """A consumer that read jobs and died (never acknowledged) — its jobs are taken over by a live worker;
    then a real worker is killed with SIGKILL under traffic."""
    version = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version
    r = redis.Redis.from_url(stack.redis_url)
    stop(stack.encoder)
    images = [np.ascontiguousarray(np.roll(photos["chelsea_300x451"], 7 * i, axis=1)) for i in range(1, 7)]
    ids = [stub.EncodeImage(pb.EncodeImageRequest(image=image_message(im)), timeout=10).image_id for im in images]
    taken = r.xreadgroup(keys.GROUP, "worker-that-died", {f"jobs:{version}": ">"}, count=100)
    assert len(taken[0][1]) == len(images)  # all in the dead worker's hands, unacknowledged
    stack.encoder = stack.start_encoder()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda im: stub.EncodeImage(pb.EncodeImageRequest(image=image_message(im), wait=True),
                                                            timeout=60), images))
    assert [x.image_id for x in replies] == ids and all(x.ready for x in replies)
    assert r.xpending(f"jobs:{version}", keys.GROUP)["pending"] == 0

    more = [np.ascontiguousarray(np.roll(photos["coffee_400x600"], 11 * i, axis=0)) for i in range(1, 9)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(stub.EncodeImage, pb.EncodeImageRequest(image=image_message(im), wait=True),
                               timeout=90) for im in more]
        time.sleep(0.3)
        stack.encoder.kill()  # SIGKILL: no chance to hand anything back
        stack.encoder.wait()
        stack.encoder = stack.start_encoder()
        assert all(f.result().ready for f in futures)


def test_stream_segment(stub, photos, tiny_model_dir):
    image = photos["coffee_400x600"]
    local = Predictor(tiny_model_dir)
    local.set_image(image)

    def requests():
        yield pb.StreamSegmentRequest(sequence=1, prompt=prompt_message([[10, 10]], [1]))  # no image yet
        yield pb.StreamSegmentRequest(sequence=2, frame=image_message(image))
        for i in range(3, 8):
            yield pb.StreamSegmentRequest(sequence=i, prompt=prompt_message([[50.0 * i, 30.0 * i]], [1]),
                                          options=pb.OutputOptions(best_mask_only=True))
        yield pb.StreamSegmentRequest(sequence=8, prompt=prompt_message([[9999, 1]], [1]))  # bad point
        yield pb.StreamSegmentRequest(sequence=9, prompt=prompt_message([[100, 100]], [1]))

    replies = list(stub.StreamSegment(requests(), timeout=60))
    assert [r.sequence for r in replies] == list(range(1, 10))
    assert replies[0].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert replies[1].image_id
    for i, r in zip(range(3, 8), replies[2:7]):
        masks_, scores, _ = local.predict(np.array([[50.0 * i, 30.0 * i]]), np.array([1]))
        assert_same_masks(decode_mask(r.result.masks[0]), masks_[int(np.argmax(scores))])
    assert replies[7].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(replies[8].result.masks) == 3  # the stream survived the error


def test_stream_drops_stale_prompts(stub, coffee_id):
    reqs = [pb.StreamSegmentRequest(sequence=0, image_id=coffee_id)]
    reqs += [pb.StreamSegmentRequest(sequence=i, prompt=prompt_message([[10.0 + i, 10.0]], [1]), drop_if_stale=True)
             for i in range(1, 41)]
    replies = list(stub.StreamSegment(iter(reqs), timeout=60))
    assert [r.sequence for r in replies] == list(range(41))
    outcomes = [r.WhichOneof("outcome") for r in replies[1:]]
    assert outcomes[-1] == "result"  # the newest is always answered
    assert "dropped" in outcomes


def test_health_reflection_and_metrics(stack, stub, coffee_id):
    with grpc.insecure_channel(stack.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "maskserve.v1.Segmenter"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"maskserve.v1.Segmenter", "grpc.health.v1.Health"} <= names
    _code(lambda: stub.SegmentPrompt(pb.SegmentPromptRequest(image_id=coffee_id), timeout=10))  # an error to count
    text = urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports[0]}/metrics", timeout=5).read().decode()
    for name in ("maskserve_request_duration_seconds_bucket", "maskserve_stage_duration_seconds_bucket",
                 "maskserve_embedding_cache_total", "maskserve_requests_total", "maskserve_requests_in_flight"):
        assert name in text
    assert 'code="INVALID_ARGUMENT"' in text
    text = urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_ports[1]}/metrics", timeout=5).read().decode()
    for name in ("maskserve_encoder_batch_size_bucket", "maskserve_queue_depth", 'stage="encode"',
                 'stage="queue_wait"', 'outcome="dead_letter"'):
        assert name in text  # present from the worker's start, even one that has not encoded yet
    encoded = _metric(stack.metrics_ports[1], 'maskserve_stage_duration_seconds_count{stage="encode"}')
    fresh = np.full((40, 50, 3), int(time.time() * 1000) % 251, np.uint8)  # unseen: this worker encodes it
    stub.EncodeImage(pb.EncodeImageRequest(image=image_message(fresh), wait=True), timeout=60)
    assert _metric(stack.metrics_ports[1], 'maskserve_stage_duration_seconds_count{stage="encode"}') == encoded + 1


def test_single_point_latency(stub, coffee_id):
    """Measured, not asserted: single-point SegmentPrompt over gRPC on a cached embedding."""
    request = _point_request(coffee_id, 300, 200)
    for _ in range(5):
        stub.SegmentPrompt(request, timeout=10)
    times = []
    for _ in range(100):
        t = time.perf_counter()
        stub.SegmentPrompt(request, timeout=10)
        times.append(time.perf_counter() - t)
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    report(f"SegmentPrompt, tiny model, 1 point, 3 masks as RLE, 600x400 photo: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def test_full_queue_is_resource_exhausted(stack, tmp_path):
    port = free_port()
    env = {**stack.env("decoder"), "MASKSERVE_GRPC_PORT": str(port), "MASKSERVE_METRICS_PORT": "0",
           "MASKSERVE_MAX_QUEUE": "0"}
    proc = start_role("decoder", env, tmp_path / "decoder.log")
    try:
        wait_serving(f"127.0.0.1:{port}", proc=proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            s = pb_grpc.SegmenterStub(channel)
            image = np.random.default_rng(9).integers(0, 255, (30, 40, 3), dtype=np.uint8)
            code, details = _code(lambda: s.EncodeImage(pb.EncodeImageRequest(image=image_message(image)), timeout=10))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in details
    finally:
        stop(proc)


def test_redis_restart_under_traffic(tmp_path, photos):
    """Redis goes away: UNAVAILABLE (never a crash); it comes back empty on the same port: service recovers."""
    from maskserve.service.stack import start_redis

    with LocalStack(log_dir=tmp_path) as s, grpc.insecure_channel(s.target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        image = photos["chelsea_300x451"]
        image_id = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=60).image_id
        port = int(s.redis_url.rsplit(":", 1)[1].split("/")[0])
        stop(s.redis)
        fresh = np.ascontiguousarray(image[::-1])
        code, details = _code(lambda: stub.EncodeImage(pb.EncodeImageRequest(image=image_message(fresh)), timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE and "Redis" in details
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 10
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        s.redis = start_redis(port, tmp_path)
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = stub.SegmentPrompt(pb.SegmentPromptRequest(image=image_message(fresh),
                                                                   prompts=[prompt_message([[50, 50]], [1])]), timeout=20)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                time.sleep(0.5)
        assert len(reply.results[0].masks) == 3
        # Redis came back empty: an id only it held is NOT_FOUND, with the remedy in the message
        code, details = _code(lambda: stub.SegmentPrompt(_point_request(image_id, 10, 10), timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND and "EncodeImage again" in details
        assert s.decoder.poll() is None and s.encoder.poll() is None


def test_cli_segment_writes_mask_and_overlay(stack, tmp_path):
    from maskserve.service.segment_file import BUNDLED_PHOTO

    out = subprocess.run([sys.executable, "-m", "maskserve.cli", "segment", str(BUNDLED_PHOTO), "--point", "256,140",
                          "--target", stack.target, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert mask.shape == (512, 512) and Image.open(tmp_path / "overlay.png").size == (512, 512)


def test_a_job_delivered_too_often_goes_to_the_dead_letter_stream(stack, stub):
    """Workers that took a job and died, again and again: the live worker gives up on it after
    MASKSERVE_MAX_DELIVERIES and records why, instead of retrying forever."""
    from maskserve.service import images

    version = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version
    r = redis.Redis.from_url(stack.redis_url)
    stop(stack.encoder)
    try:
        payload = images.canonical_payload(image_message(np.full((20, 30, 3), 7, np.uint8)))
        image_id = images.image_id(payload, version)
        entry = r.xadd(f"jobs:{version}", {"image_id": image_id, "payload": payload})
        r.xreadgroup(keys.GROUP, "crashed-1", {f"jobs:{version}": ">"}, count=1)
        for n in range(2, 4):  # each crash leaves it to the next worker, which crashes too
            r.xclaim(f"jobs:{version}", keys.GROUP, f"crashed-{n}", 0, [entry])
    finally:
        stack.encoder = stack.start_encoder()
    deadline = time.monotonic() + 30
    while not r.exists(keys.error_key(version, image_id)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert b"failed 3 times" in r.get(keys.error_key(version, image_id))
    dead = r.xrange(keys.dead_letter_stream(f"jobs:{version}"))
    assert any(fields[b"image_id"] == image_id.encode() for _, fields in dead)
    assert r.xpending(f"jobs:{version}", keys.GROUP)["pending"] == 0


def test_sigterm_drains_in_flight_requests(tmp_path, photos):
    """SIGTERM on the decoder: readiness drops at once, the RPC in flight still completes, the process exits 0.
    SIGTERM on an idle encoder: it stops reading and exits 0."""
    import threading

    with LocalStack(log_dir=tmp_path) as s, grpc.insecure_channel(s.target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        stop(s.encoder)
        assert s.encoder.returncode == 0
        image = np.ascontiguousarray(photos["coffee_400x600"][50:250, 100:400])
        result = {}

        def call():
            try:
                result["reply"] = stub.SegmentPrompt(pb.SegmentPromptRequest(
                    image=image_message(image), prompts=[prompt_message([[20, 20]], [1])]), timeout=30)
            except grpc.RpcError as exc:
                result["error"] = exc

        t = threading.Thread(target=call)
        t.start()
        time.sleep(1.0)  # the call is now waiting for the encoder
        s.decoder.send_signal(15)
        time.sleep(0.5)
        health = health_pb2_grpc.HealthStub(channel)
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service="maskserve.v1.Segmenter"), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        except grpc.RpcError as exc:  # or new RPCs are already refused
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        s.encoder = s.start_encoder()
        t.join(30)
        assert "reply" in result, result.get("error")
        assert len(result["reply"].results[0].masks) == 3
        assert s.decoder.wait(25) == 0


def test_async_client(stack, photos, tiny_model_dir):
    import asyncio

    from maskserve.client import AsyncClient

    image = photos["chelsea_300x451"]
    local = Predictor(tiny_model_dir)
    local.set_image(image)

    async def main():
        client = AsyncClient(stack.target)
        try:
            await client.set_image(image)
            answers = await asyncio.gather(*(client.predict(np.array([[30.0 * i, 20.0 * i]]), np.array([1]))
                                             for i in range(1, 6)))
            logits = await client.predict(box=np.array([10, 10, 200, 200]), return_logits=True)
        finally:
            await client.close()
        return answers, logits

    answers, logits = asyncio.run(main())
    for i, (masks_, scores, low) in enumerate(answers, 1):
        expected = local.predict(np.array([[30.0 * i, 20.0 * i]]), np.array([1]))
        assert_same_masks(masks_, expected[0])
        assert np.allclose(scores, expected[1], atol=1e-5)
    assert logits[0].dtype == np.float32 and logits[0].shape == (3, 300, 451)


def test_queue_redis_out_of_memory_is_resource_exhausted(stack, tmp_path):
    """The job queue on its own `noeviction` Redis, full: new work is refused with RESOURCE_EXHAUSTED."""
    import subprocess

    from maskserve.service.stack import start_redis

    port = free_port()
    queue_redis = start_redis(port, tmp_path)
    try:
        r = redis.Redis(port=port)
        r.config_set("maxmemory", "2mb")
        r.config_set("maxmemory-policy", "noeviction")
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            for i in range(10_000):  # small values: the limit is checked before each write
                r.set(f"ballast{i}", b"x" * 1000)
        grpc_port = free_port()
        env = {**stack.env("decoder"), "MASKSERVE_QUEUE_REDIS_URL": f"redis://127.0.0.1:{port}/0",
               "MASKSERVE_GRPC_PORT": str(grpc_port), "MASKSERVE_METRICS_PORT": "0"}
        proc = start_role("decoder", env, tmp_path / "decoder.log")
        try:
            wait_serving(f"127.0.0.1:{grpc_port}", proc=proc)
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                s = pb_grpc.SegmenterStub(channel)
                image = np.random.default_rng(11).integers(0, 255, (30, 40, 3), dtype=np.uint8)
                code, details = _code(lambda: s.EncodeImage(pb.EncodeImageRequest(image=image_message(image)),
                                                            timeout=10))
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "out of memory" in details
            assert proc.poll() is None
        finally:
            stop(proc)
    finally:
        stop(queue_redis)


def test_float16_embeddings_halve_the_store_and_keep_masks(stack, photos, tiny_model_dir, tmp_path):
    """MASKSERVE_EMBEDDING_DTYPE=float16: half the bytes in Redis, masks within the parity bound."""
    from maskserve.service import store

    image = photos["coffee_400x600"]
    local = Predictor(tiny_model_dir)
    local.set_image(image)
    url = stack.redis_url.rsplit("/", 1)[0] + "/1"  # the same server, a keyspace of its own
    with LocalStack(redis_url=url, log_dir=tmp_path, extra_env={"MASKSERVE_EMBEDDING_DTYPE": "float16"}) as s, \
            grpc.insecure_channel(s.target) as channel:
        stub16 = pb_grpc.SegmenterStub(channel)
        encoded = stub16.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=60)
        blob = redis.Redis.from_url(url).get(keys.embedding_key(encoded.model_version, encoded.image_id))
        assert len(blob) < np.prod(Manifest.load(tiny_model_dir).embedding_shape) * 2 + 200
        array = store.unpack(blob).arrays["image_embeddings"]
        stored = np.frombuffer(blob[-array.size * 2:], np.float16).reshape(array.shape)
        assert array.dtype == np.float32 and np.array_equal(array, stored.astype(np.float32))
        for x, y in ((300, 200), (100, 80), (500, 350)):
            reply = stub16.SegmentPrompt(_point_request(encoded.image_id, x, y), timeout=30).results[0]
            expected = local.predict(np.array([[x, y]]), np.array([1]))[0]
            for m, e in zip(reply.masks, expected):
                got = decode_mask(m)
                assert np.logical_and(got, e).sum() / max(1, np.logical_or(got, e).sum()) >= 0.995


def test_float16_to_float32_is_exact_for_every_value():
    """The embedding reader's fast conversion, over all 65536 float16 bit patterns: infinities and
    subnormals bit for bit, NaNs stay NaN (signalling ones come back quiet)."""
    from maskserve.service.store import half_to_float

    every = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    converted = half_to_float(every)
    assert converted.dtype == np.float32 and converted.shape == every.shape
    expected = every.astype(np.float32)
    assert np.array_equal(converted, expected, equal_nan=True)
    finite = np.isfinite(expected)
    assert np.array_equal(converted[finite].view(np.uint32), expected[finite].view(np.uint32))  # -0.0 too


def _jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(image).save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


def test_exif_orientation_is_honoured_unless_turned_off(stub, photos, tiny_model_dir):
    stored = np.ascontiguousarray(photos["chelsea_300x451"][:200, :300])
    data = _jpeg_with_orientation(stored, 6)  # viewers turn it a quarter clockwise: 200 wide, 300 high
    upright = stub.EncodeImage(pb.EncodeImageRequest(image=pb.Image(encoded=data), wait=True), timeout=60)
    assert (upright.width, upright.height) == (200, 300)
    as_stored = stub.EncodeImage(pb.EncodeImageRequest(image=pb.Image(encoded=data, ignore_exif_orientation=True),
                                                       wait=True), timeout=60)
    assert (as_stored.width, as_stored.height) == (300, 200) and as_stored.image_id != upright.image_id
    shown = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").transpose(Image.Transpose.ROTATE_270))
    local = Predictor(tiny_model_dir)
    local.set_image(shown)
    expected = local.predict(point_coords=[[60, 220]], point_labels=[1])[0]
    reply = stub.SegmentPrompt(_point_request(upright.image_id, 60, 220), timeout=30)
    got = np.stack([decode_mask(m) for m in reply.results[0].masks])
    assert_same_masks(got, expected)


def test_ready_means_in_the_store_and_use_renews_the_ttl(stack, stub, photos):
    r = redis.Redis.from_url(stack.redis_url)
    image = np.ascontiguousarray(photos["coffee_400x600"][::3, ::3])
    first = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=60)
    key = f"emb:{first.model_version}:{first.image_id}"
    stub.SegmentPrompt(_point_request(first.image_id, 50, 50), timeout=30)  # now in the decoder's LRU too
    r.expire(key, 5)
    stub.SegmentPrompt(_point_request(first.image_id, 60, 50), timeout=30)
    time.sleep(0.3)
    assert r.ttl(key) > 1000  # a sliding TTL: use renews it
    r.delete(key)  # evicted, expired or lost in a restart
    again = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=False), timeout=10)
    assert not again.ready  # the decoder's LRU still holds it, but the store does not
    assert stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=60).ready
    assert r.exists(key)


def test_no_bookkeeping_outlives_its_calls(stack, stub, photos):
    base = photos["astronaut_512x512"][:64, :64]
    for i in range(12):  # distinct images, each waited for
        image = np.ascontiguousarray(np.roll(base, i + 1, axis=0))
        assert stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=60).ready
    assert _metric(stack.metrics_ports[0], "maskserve_waiting_images") == 0


@pytest.mark.parametrize("width, height", [(20000, 1), (2100, 2), (2, 2100)])
def test_too_elongated_images_are_refused_up_front(stub, width, height):
    image = np.full((height, width, 3), 90, np.uint8)
    code, details = _code(lambda: stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True),
                                                   timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "too elongated" in details


def test_a_poison_job_is_dead_lettered_at_once_and_the_worker_lives(stack, stub, photos):
    """A job that fails on its input (here queued past the decoder's checks) is reported for that job alone,
    at its first delivery, and the worker goes on with the next."""
    from maskserve.service import images

    version = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version
    r = redis.Redis.from_url(stack.redis_url)
    pid = stack.encoder.pid
    poison = [images.canonical_payload(image_message(np.full((2, 2100, 3), 9, np.uint8))),
              b"R3x2x1:" + b"\0" * 5,  # a raw payload whose bytes do not match its size
              b"Znot a payload"]
    ids = [images.image_id(p, version) for p in poison]
    for image_id, payload in zip(ids, poison):
        r.xadd(f"jobs:{version}", {"image_id": image_id, "payload": payload, "model_version": version})
    deadline = time.monotonic() + 30
    while not all(r.exists(keys.error_key(version, i)) for i in ids):
        assert time.monotonic() < deadline and stack.encoder.poll() is None
        time.sleep(0.2)
    assert b"too elongated" in r.get(keys.error_key(version, ids[0]))
    assert r.xpending(f"jobs:{version}", keys.GROUP)["pending"] == 0
    good = np.ascontiguousarray(photos["chelsea_300x451"][::-2])
    assert stub.EncodeImage(pb.EncodeImageRequest(image=image_message(good), wait=True), timeout=60).ready
    assert stack.encoder.pid == pid and stack.encoder.poll() is None


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} gives them) with a listening socket on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_local_stack_listens_on_loopback_refuses_taken_ports_and_cleans_up():
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    with LocalStack() as first:
        for port in (first.grpc_port, *first.metrics_ports):
            assert _listening_addresses(port) and _listening_addresses(port) <= loopback, port
        with pytest.raises(RuntimeError, match="already in use"):
            LocalStack(grpc_port=first.grpc_port).__enter__()
        with pytest.raises(RuntimeError, match="already in use"):
            LocalStack(metrics_ports=first.metrics_ports).__enter__()
        logs = first.log_dir
        assert logs.is_dir()
    assert not logs.exists()  # a clean run leaves no temporary folder behind


@pytest.mark.parametrize("args, message", [
    (["--point", "10"], "expected X,Y or X,Y,LABEL"),
    (["--point", "10,20,7"], "the label is 1 (foreground) or 0 (background)"),
    (["--point", "5000,20"], "INVALID_ARGUMENT: point (5000, 20) lies outside"),
    (["--box", "1,2,3"], "expected X0,Y0,X1,Y1"),
    ([], "give at least one --point"),
])
def test_cli_user_errors_are_one_clear_line(stack, args, message):
    from maskserve.service.segment_file import BUNDLED_PHOTO

    run = subprocess.run([sys.executable, "-m", "maskserve.cli", "segment", str(BUNDLED_PHOTO), "--target",
                          stack.target, *args], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) <= 2, run.stderr


def test_cli_file_and_server_errors_are_one_clear_line(tmp_path):
    from maskserve.service.segment_file import BUNDLED_PHOTO

    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    for path, target, message in [(tmp_path, "127.0.0.1:1", "is not a file"),
                                  (tmp_path / "missing.jpg", "127.0.0.1:1", "does not exist"),
                                  (not_image, "127.0.0.1:1", "is not an image file"),
                                  (BUNDLED_PHOTO, f"127.0.0.1:{free_port()}", "Start one with `maskserve up`")]:
        run = subprocess.run([sys.executable, "-m", "maskserve.cli", "segment", str(path), "--point", "1,1",
                              "--target", target], capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_a_stopping_worker_hands_its_unfinished_jobs_back_at_once(tmp_path, photos):
    """SIGTERM between engine runs: the run in hand is stored, the rest of the batch goes back to the pool at
    once (claimable now, not after MASKSERVE_CLAIM_IDLE_MS), and another worker finishes it."""
    from maskserve.service import images
    from maskserve.service.config import Settings
    from maskserve.service.encoder_worker import EncoderWorker
    from maskserve.service.stack import start_redis

    port = free_port()
    server = start_redis(port, tmp_path)
    try:
        settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", claim_idle_ms=600_000, batch_size=4)
        first, second = EncoderWorker(settings, name="first"), EncoderWorker(settings, name="second")
        r = redis.Redis.from_url(settings.redis_url)
        ids = []
        for i in range(3):
            payload = images.canonical_payload(image_message(np.ascontiguousarray(photos["chelsea_300x451"][i::3])))
            ids.append(images.image_id(payload, first.version))
            r.xadd(first.stream, {"image_id": ids[-1], "payload": payload, "model_version": first.version})
        first.jobs.ensure_group()
        batch = first._read_batch()
        assert len(batch) == 3
        encode = first.model.encoder.encode_arrays

        def encode_then_sigterm(x):
            out = encode(x)
            first.stopping.set()  # what the SIGTERM handler does
            return out

        first.model.encoder.encode_arrays = encode_then_sigterm
        first.process(batch)
        assert r.exists(keys.embedding_key(first.version, ids[0]))
        assert not any(r.exists(keys.embedding_key(first.version, i)) for i in ids[1:])
        handed, _ = second.jobs.claim(settings.claim_idle_ms, 4, settings.max_deliveries)  # at once, though
        # the claim timeout is ten minutes
        assert sorted(entry for entry, _ in handed) == sorted(entry for entry, _ in batch[1:])
        second.process(handed)
        assert all(r.exists(keys.embedding_key(first.version, i)) for i in ids)
        assert r.xpending(first.stream, keys.GROUP)["pending"] == 0
    finally:
        stop(server)


def test_errors_carry_rich_details_and_the_client_raises_typed_exceptions(stack, stub, coffee_id):
    from grpc_status import rpc_status
    from google.rpc import error_details_pb2

    from maskserve.client import errors

    request = pb.SegmentPromptRequest(image_id=coffee_id, prompts=[
        prompt_message([[10, 10]], [1]), prompt_message(box=[50, 50, 10, 10])])
    with pytest.raises(grpc.RpcError) as info:
        stub.SegmentPrompt(request, timeout=10)
    status = rpc_status.from_call(info.value)
    kinds = {d.type_url.rsplit("/", 1)[1] for d in status.details}
    assert {"google.rpc.ErrorInfo", "google.rpc.BadRequest"} <= kinds
    bad = error_details_pb2.BadRequest()
    next(d for d in status.details if d.Is(bad.DESCRIPTOR)).Unpack(bad)
    assert bad.field_violations[0].field == "prompts[1].box" and "x0 > x1" in bad.field_violations[0].description
    with Client(stack.target) as client:
        client.image_id = coffee_id
        with pytest.raises(errors.InvalidArgument) as typed:
            client.predict(np.array([[10.0, 10.0], [5000.0, 10.0]]), np.array([1, 1]))
        assert typed.value.reason == "INVALID_PROMPT" and typed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert typed.value.field_violations[0].field == "prompts[0].points" and "outside" in typed.value.details()
        client.image_id = "0" * 32
        with pytest.raises(errors.NotFound) as typed:
            client.predict(np.array([[10.0, 10.0]]), np.array([1]))
        assert typed.value.reason == "IMAGE_NOT_FOUND" and typed.value.resource == "0" * 32
        assert isinstance(typed.value, grpc.RpcError)  # code written against plain gRPC errors still works
        with pytest.raises(errors.InvalidArgument) as typed:
            client.encode(b"not an image")
        assert typed.value.reason == "INVALID_IMAGE" and typed.value.field_violations[0].field == "image"
        from maskserve.engines.automatic import Options

        with pytest.raises(errors.InvalidArgument) as typed:
            client.segment_everything(coffee_id, Options(points_per_side=0))
        assert typed.value.field_violations[0].field.startswith("options.points_per_side")
