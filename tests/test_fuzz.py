"""Property-based and fuzz tests of every request field against the real service: client input never gets
UNKNOWN or INTERNAL, no process dies, and every image the decoder accepts is one the encoder pool encodes.

`MASKSERVE_FUZZ_EXAMPLES` sets the examples per property (CI's short form: 60; the documented long form: 2000).
"""

from __future__ import annotations

import io
import os
import time

import grpc
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from conftest import report

from maskserve.service import jobs
from maskserve.service.client import image_message
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.stack import LocalStack

EXAMPLES = int(os.environ.get("MASKSERVE_FUZZ_EXAMPLES", "60"))
CLIENT_ERRORS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.DEADLINE_EXCEEDED}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
_seen: dict[str, int] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with LocalStack(log_dir=tmp_path_factory.mktemp("fuzz")) as s:
        yield s
        # every accepted image was encoded (none dead-lettered), the queue drained, nothing died
        r = redis.Redis.from_url(s.redis_url)
        version = pb_grpc.SegmenterStub(grpc.insecure_channel(s.target)).GetModelInfo(
            pb.GetModelInfoRequest(), timeout=5).model_version
        deadline = time.monotonic() + 60
        while r.xlen(f"jobs:{version}") and time.monotonic() < deadline:
            time.sleep(0.5)
        report(f"fuzz: {sum(_seen.values())} requests, by status {dict(sorted(_seen.items()))}")
        assert r.xlen(f"jobs:{version}") == 0
        dead = r.xrange(jobs.dead_letter_stream(f"jobs:{version}"))
        assert not dead, dead
        assert s.decoder.poll() is None and s.encoder.poll() is None


@pytest.fixture(scope="module")
def stub(stack):
    with grpc.insecure_channel(stack.target) as channel:
        yield pb_grpc.SegmenterStub(channel)


@pytest.fixture(scope="module")
def image_id(stub):
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)
    return stub.EncodeImage(pb.EncodeImageRequest(image=image_message(image), wait=True), timeout=60).image_id


def _call(fn) -> grpc.StatusCode:
    try:
        result = fn()
        if hasattr(result, "__iter__") and not hasattr(result, "ByteSize"):
            list(result)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
        assert code in CLIENT_ERRORS, (code, exc.details())
    _seen[code.name] = _seen.get(code.name, 0) + 1
    return code


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-10, 100, width=32))
points = st.builds(pb.Point, x=floats, y=floats, label=st.one_of(st.sampled_from([0, 1]), st.integers(-2**31, 2**31 - 1)))
boxes = st.builds(pb.Box, x0=floats, y0=floats, x1=floats, y1=floats)
mask_inputs = st.builds(pb.LowResLogits, side=st.one_of(st.just(256), st.integers(0, 300)),
                        data=st.one_of(st.binary(max_size=64), st.just(np.zeros((256, 256), "<f4").tobytes()),
                                       st.just(np.full((256, 256), np.nan, "<f4").tobytes())))


@st.composite
def prompts(draw):
    p = pb.Prompt(points=draw(st.lists(points, max_size=4 if draw(st.booleans()) else 70)))
    if draw(st.booleans()):
        p.box.CopyFrom(draw(boxes))
    if draw(st.integers(0, 4)) == 0:
        p.mask_input.CopyFrom(draw(mask_inputs))
    return p


options = st.builds(pb.OutputOptions, single_mask=st.booleans(), best_mask_only=st.booleans(),
                    mask_format=st.integers(0, 6), return_low_res_logits=st.booleans())


@FUZZ
@given(data=st.data())
def test_segment_prompt_fields(stub, image_id, data):
    request = pb.SegmentPromptRequest(prompts=data.draw(st.lists(prompts(), max_size=4)), options=data.draw(options))
    choice = data.draw(st.integers(0, 3))
    if choice < 3:
        request.image_id = image_id if choice < 2 else data.draw(st.text(max_size=40))
    _call(lambda: stub.SegmentPrompt(request, timeout=20))


@FUZZ
@given(data=st.data())
def test_stream_segment_fields(stub, image_id, data):
    messages = []
    for seq in range(data.draw(st.integers(1, 5))):
        kind = data.draw(st.sampled_from(["prompt", "image_id", "bad_id", "empty"]))
        m = pb.StreamSegmentRequest(sequence=seq, options=data.draw(options), drop_if_stale=data.draw(st.booleans()))
        if kind == "prompt":
            m.prompt.CopyFrom(data.draw(prompts()))
        elif kind == "image_id":
            m.image_id = image_id
        elif kind == "bad_id":
            m.image_id = data.draw(st.text(max_size=40))
        messages.append(m)
    replies = list(stub.StreamSegment(iter(messages), timeout=30))
    assert len(replies) == len(messages)
    for reply in replies:
        if reply.WhichOneof("outcome") == "error":
            assert grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == reply.error.code)) in CLIENT_ERRORS
    _seen["OK"] = _seen.get("OK", 0) + 1


automatic_options = st.builds(
    pb.AutomaticOptions,
    points_per_side=st.integers(-3, 5), points_per_batch=st.integers(-2, 100),
    pred_iou_thresh=floats, stability_score_thresh=floats, stability_score_offset=floats,
    box_nms_thresh=floats, crop_n_layers=st.integers(-1, 3), crop_nms_thresh=floats,
    crop_overlap_ratio=floats, crop_n_points_downscale_factor=st.integers(-1, 3),
    min_mask_region_area=st.integers(-10, 50))


@FUZZ
@given(data=st.data())
def test_segment_everything_fields(stub, image_id, data):
    o = data.draw(automatic_options)
    for name in list(pb.AutomaticOptions.DESCRIPTOR.fields_by_name):  # some fields unset: the defaults
        if name not in ("point_grids", "points_per_side") and data.draw(st.booleans()):
            o.ClearField(name)
    if data.draw(st.integers(0, 3)) == 0:
        o.ClearField("points_per_side")
        o.point_grids.add(xy=data.draw(st.lists(st.floats(-0.5, 1.5), max_size=9)))
    request = pb.SegmentEverythingRequest(image_id=image_id, options=o)
    if o.crop_n_layers > 0 and data.draw(st.booleans()):
        request.image.CopyFrom(image_message(np.full((40, 50, 3), 128, np.uint8)))
    _call(lambda: stub.SegmentEverything(request, timeout=60))


def _encoded(array: np.ndarray, mode: str, fmt: str) -> bytes:
    out = io.BytesIO()
    img = Image.fromarray(array).convert(mode)
    img.save(out, format=fmt)
    return out.getvalue()


@st.composite
def images(draw):
    kind = draw(st.sampled_from(["raw", "encoded", "garbage", "truncated"]))
    shape = draw(st.sampled_from([(1, 1), (2, 3), (37, 61), (1, 3000), (3000, 1), (2, 1100), (64, 64)]))
    h, w = shape
    pixels = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 255, (h, w, 3), np.uint8)
    if kind == "raw":
        fmt = draw(st.integers(0, 6))
        channels = {1: 3, 2: 3, 3: 4, 4: 1}.get(fmt, 3)
        data = np.random.default_rng(1).integers(0, 255, (h, w, channels), np.uint8).tobytes()
        if draw(st.booleans()):
            data = data[:draw(st.integers(0, len(data)))]
        return pb.Image(raw=pb.RawImage(width=draw(st.sampled_from([w, 0, w + 1])), height=h, format=fmt, data=data))
    if kind == "garbage":
        return pb.Image(encoded=draw(st.binary(max_size=200)))
    fmt, mode = draw(st.sampled_from([("PNG", "RGB"), ("PNG", "L"), ("PNG", "LA"), ("PNG", "P"), ("PNG", "RGBA"),
                                      ("PNG", "I;16"), ("PNG", "1"), ("JPEG", "RGB"), ("JPEG", "L"),
                                      ("JPEG", "CMYK"), ("WEBP", "RGB"), ("WEBP", "RGBA"), ("GIF", "P"),
                                      ("BMP", "RGB"), ("TIFF", "RGB")]))
    data = _encoded(pixels, mode, fmt)
    if kind == "truncated":
        data = data[:draw(st.integers(0, len(data) - 1))]
    return pb.Image(encoded=data, ignore_exif_orientation=draw(st.booleans()))


@FUZZ
@given(image=images(), wait=st.booleans())
def test_images_across_sizes_modes_and_formats(stub, image, wait):
    _call(lambda: stub.EncodeImage(pb.EncodeImageRequest(image=image, wait=wait), timeout=30))


@FUZZ
@given(method=st.sampled_from(["EncodeImage", "SegmentPrompt", "GetModelInfo", "SegmentEverything"]),
       payload=st.one_of(st.binary(max_size=300), st.just(b"\x0a\xff\xff\xff\xff\x0f"), st.just(b"\xff" * 20)))
def test_malformed_protobuf_bytes_on_the_wire(stack, method, payload):
    with grpc.insecure_channel(stack.target) as channel:
        if method == "SegmentEverything":
            call = channel.unary_stream(f"/maskserve.v1.Segmenter/{method}")
        else:
            call = channel.unary_unary(f"/maskserve.v1.Segmenter/{method}")
        _call(lambda: call(payload, timeout=20))
