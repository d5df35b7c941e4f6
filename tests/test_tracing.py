"""Tracing across the whole path, with the real processes exporting OTLP to a collector run here: a request's
incoming `traceparent` is continued by the decoder, carried in the job entry, and continued by the encoder."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk")

from maskserve.client import image_message, prompt_message  # noqa: E402
from maskserve.service.proto import pb, pb_grpc  # noqa: E402
from maskserve.service.stack import LocalStack  # noqa: E402
from maskserve.service.tracing import Collector  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    collector = Collector()
    env = {"MASKSERVE_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    try:
        with LocalStack(log_dir=tmp_path_factory.mktemp("traced"), extra_env=env) as stack:
            yield stack, collector
    finally:
        collector.stop()


def spans_of(collector, trace_id: str, want: set[str], timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for service, span in list(collector.spans):
            if span.trace_id.hex() == trace_id:
                found.setdefault(span.name, []).append((service, span))
        if want <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_a_request_is_traced_from_the_caller_through_the_queue_and_the_encoder(traced):
    stack, collector = traced
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT}-01"),)
    image = np.random.default_rng(7).integers(0, 255, (90, 120, 3), np.uint8)
    with grpc.insecure_channel(stack.target) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        reply = stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=60,
                                 metadata=metadata)
        stub.SegmentPrompt(pb.SegmentPromptRequest(image_id=reply.image_id, prompts=[prompt_message([[30, 40]], [1])]),
                           timeout=60, metadata=metadata)
    want = {"maskserve.v1.Segmenter/EncodeImage", "enqueue", "wait_for_encoder", "encode", "store",
            "maskserve.v1.Segmenter/SegmentPrompt", "decode", "postprocess"}
    found = spans_of(collector, TRACE_ID, want)
    assert want <= set(found), sorted(found)
    (_, rpc), = found["maskserve.v1.Segmenter/EncodeImage"]
    assert rpc.parent_span_id.hex() == PARENT  # the caller's span is the parent
    (_, enqueue), = found["enqueue"]
    (service, encode), = found["encode"]
    assert service == "maskserve-encoder" and encode.parent_span_id == enqueue.span_id  # through the job entry
    (_, stored), = found["store"]
    assert stored.parent_span_id == encode.span_id
    (_, segment), = found["maskserve.v1.Segmenter/SegmentPrompt"]
    (_, decode), = found["decode"]
    assert decode.parent_span_id == segment.span_id  # the decode thread continues the call's span


def test_untraced_calls_still_get_their_own_trace(traced):
    stack, collector = traced
    with grpc.insecure_channel(stack.target) as channel:
        pb_grpc.SegmenterStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    deadline = time.monotonic() + 20
    while not any(span.name == "maskserve.v1.Segmenter/GetModelInfo" and not span.parent_span_id
                  for _, span in list(collector.spans)):
        assert time.monotonic() < deadline, "no root span for an untraced call"
        time.sleep(0.2)
