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

from maskserve.service import keys
from maskserve.client import image_message
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
        dead = r.xrange(keys.dead_letter_stream(f"jobs:{version}"))
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


def _text_fields(descriptor, prefix: tuple = (), depth: int = 0):
    """Every string and bytes field reachable in a request, as a path of field names."""
    for f in descriptor.fields:
        if f.type in (f.TYPE_STRING, f.TYPE_BYTES):
            yield prefix + (f.name,)
        elif f.type == f.TYPE_MESSAGE and depth < 4 and not f.message_type.GetOptions().map_entry:
            yield from _text_fields(f.message_type, prefix + (f.name,), depth + 1)


def _set(message, path: tuple, value) -> None:
    for name in path[:-1]:
        field = message.DESCRIPTOR.fields_by_name[name]
        message = getattr(message, name).add() if field.is_repeated else getattr(message, name)
    field = message.DESCRIPTOR.fields_by_name[path[-1]]
    if field.is_repeated:
        getattr(message, path[-1]).append(value)
    else:
        setattr(message, path[-1], value)


REQUESTS = {"SegmentPrompt": pb.SegmentPromptRequest, "StreamSegment": pb.StreamSegmentRequest,
            "SegmentEverything": pb.SegmentEverythingRequest, "EncodeImage": pb.EncodeImageRequest}
TEXT_FIELDS = [(rpc, path) for rpc, cls in REQUESTS.items() for path in _text_fields(cls.DESCRIPTOR)]
LENGTHS = [0, 1, 32, 64, 65, 4096, 65536, 1 << 20]


def test_every_request_text_field_is_covered():
    """The long-input property below reaches every string and bytes field a request has (a new one joins it)."""
    paths = {".".join(p) for _, p in TEXT_FIELDS}
    assert {"image_id", "image.encoded", "image.raw.data", "prompts.mask_input.data", "prompts.mask_from.handle",
            "frame.encoded", "prompt.mask_from.handle"} <= paths, paths


@FUZZ
@given(field=st.sampled_from(TEXT_FIELDS), length=st.sampled_from(LENGTHS), kind=st.sampled_from(["ascii", "bytes"]))
def test_every_string_and_bytes_field_at_any_length(stub, image_id, field, length, kind):
    """Any length in any string or bytes field: a client error whose message and trailers stay small (input is
    never echoed unbounded), never RESOURCE_EXHAUSTED from gRPC's metadata limit."""
    rpc, path = field
    request = REQUESTS[rpc]()
    if rpc == "SegmentPrompt":
        request.image_id = image_id
        request.prompts.add(points=[pb.Point(x=3, y=3, label=1)])
    elif rpc == "SegmentEverything":
        request.image_id = image_id
        request.options.points_per_side = 2
    descriptor = request.DESCRIPTOR
    for name in path[:-1]:
        descriptor = descriptor.fields_by_name[name].message_type
    leaf = descriptor.fields_by_name[path[-1]]
    if leaf.type == leaf.TYPE_STRING:
        value = ("f" if kind == "ascii" else "é") * length
    else:
        value = b"f" * length if kind == "ascii" else np.random.default_rng(length).bytes(length)
    _set(request, path, value)
    if rpc == "StreamSegment":
        replies = list(stub.StreamSegment(iter([request]), timeout=30))
        assert len(replies) == 1
        if replies[0].WhichOneof("outcome") == "error":
            assert len(replies[0].error.message) <= 1100
        _seen["OK"] = _seen.get("OK", 0) + 1
        return
    try:
        result = getattr(stub, rpc)(request, timeout=30)
        if rpc == "SegmentEverything":
            list(result)
        _seen["OK"] = _seen.get("OK", 0) + 1
    except grpc.RpcError as exc:
        _seen[exc.code().name] = _seen.get(exc.code().name, 0) + 1
        assert exc.code() in CLIENT_ERRORS, (rpc, path, length, exc.code(), exc.details()[:200])
        assert "metadata" not in exc.details(), (rpc, path, length, exc.details()[:200])
        assert len(exc.details()) <= 1100
        assert sum(len(k) + len(v) for k, v in exc.trailing_metadata() or ()) < 8192, (rpc, path, length)
