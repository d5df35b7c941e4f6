"""Fault injection against the real processes under traffic (loopback only, bounded): encoders and the decoder
killed, two encoders on one queue, a worker stalled past the claim time, the cache Redis filled to its memory
limit and restarted, client connections dropped mid-stream. Afterwards every request has its answer or a clear
error (never UNKNOWN, INTERNAL or INVALID_ARGUMENT: the traffic is valid), no job is stuck, the queue drains,
and no worker died of a job. The pauses between faults are drawn from MASKSERVE_FAULT_SEED (default 0)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import redis

from conftest import report

from maskserve.service import keys
from maskserve.client import image_message, prompt_message
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.stack import LocalStack, free_port, start_redis, start_role, stop, wait_serving

CLEAR = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED,
         grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}


class Traffic:
    """Prompts on an image (re-encoded when the store lost it) and a stream of new images, each call bounded."""

    def __init__(self, target: str, image: np.ndarray) -> None:
        self.target, self.image = target, image
        self.outcomes: dict[str, int] = {}
        self.bad: list[str] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._prompts), threading.Thread(target=self._prompts),
                        threading.Thread(target=self._encodes)]

    def _record(self, what: str, code: grpc.StatusCode, details: str = "") -> None:
        with self.lock:
            self.outcomes[f"{what} {code.name}"] = self.outcomes.get(f"{what} {code.name}", 0) + 1
            if code != grpc.StatusCode.OK and code not in CLEAR:
                self.bad.append(f"{what}: {code.name} {details}")

    def _call(self, what, fn):
        try:
            result = fn()
            self._record(what, grpc.StatusCode.OK)
            return result
        except grpc.RpcError as exc:
            self._record(what, exc.code(), exc.details())
            return None

    def _prompts(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.SegmenterStub(channel)
            image_id = None
            while not self.stopping.is_set():
                if image_id is None:
                    reply = self._call("encode", lambda: stub.EncodeImage(pb.EncodeImageRequest(
                        image=image_message(self.image), wait=True), timeout=20))
                    image_id = reply.image_id if reply else None
                    if image_id is None:
                        time.sleep(0.2)
                    continue
                try:
                    stub.SegmentPrompt(pb.SegmentPromptRequest(image_id=image_id, prompts=[
                        prompt_message([[20, 20]], [1])]), timeout=10)
                    self._record("prompt", grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    self._record("prompt", exc.code(), exc.details())
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        image_id = None  # the store lost it: encode again, as a client would
                    else:
                        time.sleep(0.1)

    def _encodes(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.SegmenterStub(channel)
            i = 0
            while not self.stopping.is_set():
                i += 1
                image = np.ascontiguousarray(np.roll(self.image, i, axis=1))
                if self._call("new image", lambda: stub.EncodeImage(pb.EncodeImageRequest(
                        image=image_message(image), wait=True), timeout=20)) is None:
                    time.sleep(0.2)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads), "a call hung past its deadline"


def _drop_mid_stream(target: str, image_id: str) -> None:
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.SegmenterStub(channel)

    def messages():
        yield pb.StreamSegmentRequest(sequence=0, image_id=image_id)
        for i in range(1, 50):
            yield pb.StreamSegmentRequest(sequence=i, prompt=prompt_message([[10 + i, 10]], [1]))
            time.sleep(0.01)

    replies = stub.StreamSegment(messages(), timeout=30)
    for n, _ in enumerate(replies):
        if n == 5:
            break
    channel.close()  # the connection goes away under a running stream


@pytest.mark.timeout(600)
def test_faults_under_traffic(tmp_path, photos):
    cache_port, queue_port = free_port(), free_port()
    cache = start_redis(cache_port, tmp_path)
    queue = start_redis(queue_port, tmp_path)
    cache_url, queue_url = f"redis://127.0.0.1:{cache_port}/0", f"redis://127.0.0.1:{queue_port}/0"
    image = np.ascontiguousarray(photos["coffee_400x600"][::4, ::4])
    env = {"MASKSERVE_QUEUE_REDIS_URL": queue_url}
    faults: list[str] = []
    stack = LocalStack(redis_url=cache_url, log_dir=tmp_path, extra_env=env,
                       encoder_env={"MASKSERVE_CLAIM_IDLE_MS": "1500"})
    extra = None
    pause = random.Random(int(os.environ.get("MASKSERVE_FAULT_SEED", "0"))).uniform  # faults at random points
    try:
        with stack:
            with grpc.insecure_channel(stack.target) as channel:
                version = pb_grpc.SegmenterStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5).model_version
            q = redis.Redis.from_url(queue_url)
            stream = f"jobs:{version}"
            with Traffic(stack.target, image) as traffic:
                time.sleep(pause(0.5, 2.5))
                stack.encoder.kill()  # mid-work: its jobs are taken over after the claim time
                stack.encoder.wait()
                faults.append("encoder killed (SIGKILL)")
                extra = stack.start_encoder(wait=False, MASKSERVE_METRICS_PORT="0")  # two encoders, one queue
                stack.encoder = stack.start_encoder()
                faults.append("encoder restarted, a second one added")
                time.sleep(pause(0.5, 2.5))
                os.kill(stack.encoder.pid, signal.SIGSTOP)  # stalled past the claim time, jobs in hand
                time.sleep(3)
                os.kill(stack.encoder.pid, signal.SIGCONT)
                faults.append("encoder stalled 3 s (claim time 1.5 s)")
                time.sleep(pause(0.5, 2.5))
                stack.decoder.kill()
                stack.decoder.wait()
                stack.decoder = start_role("decoder", stack.env("decoder"), tmp_path / "decoder2.log")
                wait_serving(stack.target, proc=stack.decoder)
                faults.append("decoder killed (SIGKILL) and restarted")
                time.sleep(pause(0.5, 2.5))
                c = redis.Redis.from_url(cache_url)
                c.config_set("maxmemory", "3mb")
                c.config_set("maxmemory-policy", "allkeys-lru")
                time.sleep(3)  # embeddings evicted as new ones come: re-encoded or NOT_FOUND
                faults.append("cache Redis at a 3 MB memory limit (allkeys-lru)")
                c.config_set("maxmemory", "0")
                stop(cache)
                cache = start_redis(cache_port, tmp_path)  # back empty
                faults.append("cache Redis restarted empty")
                time.sleep(3)
                with grpc.insecure_channel(stack.target) as channel:
                    any_id = pb_grpc.SegmenterStub(channel).EncodeImage(pb.EncodeImageRequest(
                        image=image_message(image), wait=True), timeout=30).image_id
                for _ in range(3):
                    _drop_mid_stream(stack.target, any_id)
                faults.append("3 client connections dropped mid-stream")
                time.sleep(pause(0.5, 2.5))
            deadline = time.monotonic() + 60
            while (q.xlen(stream) or q.xpending(stream, keys.GROUP)["pending"]) and time.monotonic() < deadline:
                time.sleep(0.5)
            stuck = q.xlen(stream), q.xpending(stream, keys.GROUP)["pending"]
            dead = q.xlen(keys.dead_letter_stream(stream))
            alive = {"decoder": stack.decoder.poll() is None, "encoder": stack.encoder.poll() is None,
                     "second encoder": extra.poll() is None}
            report(f"faults: {'; '.join(faults)}")
            report(f"faults: requests by outcome {dict(sorted(traffic.outcomes.items()))}; queue after "
                   f"{stuck[0]} entries, {stuck[1]} pending; dead-lettered {dead}; alive {alive}")
            assert not traffic.bad, traffic.bad[:5]
            assert sum(v for k, v in traffic.outcomes.items() if k.endswith(" OK")) > 20
            assert stuck == (0, 0) and dead == 0
            assert all(alive.values()), alive
    finally:
        stop(extra)
        stop(cache)
        stop(queue)
