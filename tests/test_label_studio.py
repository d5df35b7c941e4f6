"""Label Studio's ML backend protocol (`/label-studio/` on the HTTP port) against a real stack with keys on: health
and setup, predictions from keypoint and rectangle contexts whose brush RLE decodes to exactly SegmentPrompt's
best mask, images inline (data: URIs) or fetched from a stand-in Label Studio with its token, never from anywhere
else, Bearer and Basic credentials, and bad input refused."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from maskserve.service import access
from maskserve.service.config import Settings
from maskserve.service.failures import ServiceError
from maskserve.service.label_studio import Source, brush_rle
from maskserve.service.stack import LocalStack, free_port

KEYS = {t: access.new_key() for t in ("a", "b", "ro")}
TOKEN = "ls-legacy-token-0123456789abcdef"
PHOTO = open(__import__("maskserve").__path__[0] + "/data/astronaut.jpg", "rb").read()
DATA_URI = "data:image/jpeg;base64," + base64.b64encode(PHOTO).decode()
CONFIG = """<View>
  <Image name="img" value="$picture" zoom="true"/>
  <BrushLabels name="brush" toName="img">
    <Label value="Person" background="#FF0000"/>
    <Label value="Sky" background="#0000FF"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="img" smart="true"><Label value="Sky"/><Label value="Other"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="img" smart="true"><Label value="Person"/></RectangleLabels>
</View>"""
SIZE = 512  # the photo is 512x512
POINT = (250.0, 200.0)  # in pixels: 48.828125 %, 39.0625 % (exact in binary)
BOX = (100.0, 80.0, 300.0, 330.0)

# What label_studio_sdk 2.1.2's own encoder (converter.brush.mask2rle) makes of two masks: pinned here so that the
# encoder is checked byte for byte against it, and the decoder below against its output.
GOLDEN_MASK = np.zeros((10, 10), bool)
GOLDEN_MASK[7:, 2:9] = True
GOLDEN_MASK[0, 0] = True
GOLDEN = [0, 0, 1, 144, 57, 27, 252, 127, 252, 4, 108, 3, 13, 255, 219, 0, 195, 127, 246, 192, 48, 223, 252, 96, 0]
LONG_MASK = np.ones((130, 130), bool)  # a run over 2^16 values, cut in two
LONG_MASK[64, 17] = False
LONG = [0, 1, 8, 16, 57, 27, 255, 130, 67, 255, 140, 3, 194, 227, 255, 128]


def decode_brush(rle: list[int]) -> np.ndarray:
    """Label Studio's brush RLE → the flat RGBA values: label_studio_sdk's decoder where it is installed, else
    this one, written from the format (thi-ng/rle-pack): 32 bits the count of values, 5 bits word size - 1, four
    4-bit run-length sizes - 1; then chunks of 1 bit repeat/literal, 2 bits a size's index, that many bits the
    run's length - 1, and one value (repeat) or that many values (literal)."""
    try:
        from label_studio_sdk.converter.brush import decode_rle
        return np.asarray(decode_rle(rle), np.uint8)
    except ImportError:
        pass
    bits = np.unpackbits(np.array(rle, np.uint8))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        value = int("".join(map(str, bits[pos:pos + n])), 2)
        pos += n
        return value

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out, i = np.zeros(num, np.uint8), 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
        else:
            out[i:j] = [read(word) for _ in range(j - i)]
        i = j
    return out


def brush_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    rgba = decode_brush(rle).reshape(height, width, 4)
    assert set(np.unique(rgba)) <= {0, 255} and (rgba == rgba[..., :1]).all()  # all four channels alike
    return rgba[..., 3] == 255


def test_the_brush_rle_is_label_studios_own_byte_for_byte():
    assert brush_rle(GOLDEN_MASK) == GOLDEN and brush_rle(LONG_MASK) == LONG
    assert (brush_mask(GOLDEN, 10, 10) == GOLDEN_MASK).all() and (brush_mask(LONG, 130, 130) == LONG_MASK).all()
    rng = np.random.default_rng(7)
    for _ in range(20):
        h, w = rng.integers(1, 90, 2)
        mask = rng.random((h, w)) > rng.random()
        assert (brush_mask(brush_rle(mask), h, w) == mask).all()


def test_the_label_studio_settings_are_checked_at_start_and_urls_resolved_under_them(tmp_path):
    for bad in ("ftp://ls.example", "ls.example", "https://user@ls.example", "https://ls.example/?q=1"):
        with pytest.raises(SystemExit, match="MASKSERVE_LABEL_STUDIO_URL"):
            Source(Settings(label_studio_url=bad))
    with pytest.raises(SystemExit, match="MASKSERVE_LABEL_STUDIO_TOKEN_FILE"):
        Source(Settings(label_studio_url="https://ls.example", label_studio_token_file=str(tmp_path / "none")))
    source = Source(Settings(label_studio_url="https://LS.example:443/base/"))
    base = "https://ls.example/base"
    for url, resolved in [("/data/upload/1/a.jpg", "/data/upload/1/a.jpg"), ("upload/1/a.jpg", "/data/upload/1/a.jpg"),
                          ("/data/local-files/?d=x/a.jpg", "/data/local-files/?d=x/a.jpg"),
                          (base + "/data/upload/1/a.jpg", "/data/upload/1/a.jpg")]:
        assert str(source.resolve(url, "f")) == base + resolved
    for url in ("https://ls.example/basement/a.jpg", "https://ls.example.evil/base/a.jpg", "http://ls.example/base/a"):
        with pytest.raises(ServiceError, match="not under the Label Studio URL"):
            source.resolve(url, "f")
    with pytest.raises(ServiceError, match="no Label Studio is configured"):
        Source(Settings()).resolve("/data/upload/1/a.jpg", "f")


# -- a stand-in Label Studio, and a host no image may be fetched from ------------------------------------------
class Server:
    """An HTTP server on a thread of its own, recording every request it gets."""

    def __init__(self, routes) -> None:
        self.port, self.seen = free_port(), []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        @web.middleware
        async def record(request, handler):
            self.seen.append((request.path_qs, request.headers.get("Authorization")))
            return await handler(request)

        async def start():
            app = web.Application(middlewares=[record])
            app.add_routes(routes)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
            started.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(start()), self.loop.run_forever()),
                                       daemon=True)
        self.thread.start()
        assert started.wait(10)

    def paths(self) -> list[str]:
        return [p for p, _ in self.seen]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def elsewhere():
    async def photo(request):
        return web.Response(body=PHOTO, content_type="image/jpeg")
    server = Server([web.get("/{tail:.*}", photo)])
    yield server
    server.close()


@pytest.fixture(scope="module")
def label_studio(elsewhere):
    async def upload(request):
        if request.headers.get("Authorization") != f"Token {TOKEN}":
            return web.Response(status=401, text="authentication required")
        if request.match_info["name"] == "astronaut.jpg":
            return web.Response(body=PHOTO, content_type="image/jpeg")
        if request.match_info["name"] == "moved.jpg":
            raise web.HTTPFound(f"http://127.0.0.1:{elsewhere.port}/astronaut.jpg")
        raise web.HTTPNotFound()
    server = Server([web.get("/ls/data/upload/{project}/{name}", upload)])
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, label_studio):
    d = tmp_path_factory.mktemp("label_studio")
    doc = {"tenants": {"a": {}, "b": {}, "ro": {}},
           "keys": [{"name": f"{t}-key", "tenant": t, "sha256": access.key_hash(k),
                     "rpcs": ["GetModelInfo"] if t == "ro" else ["*"]} for t, k in KEYS.items()]}
    (d / "access.json").write_text(json.dumps(doc))
    (d / "token").write_text(TOKEN + "\n")
    env = {"MASKSERVE_AUTH_FILE": str(d / "access.json"),
           "MASKSERVE_LABEL_STUDIO_URL": f"http://127.0.0.1:{label_studio.port}/ls",
           "MASKSERVE_LABEL_STUDIO_TOKEN_FILE": str(d / "token")}
    with LocalStack(extra_env=env, log_dir=d, http_port=free_port()) as s:
        yield s
        assert s.decoder.poll() is None, "the decoder died during the Label Studio tests"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def basic(key: str, user: str = "label-studio") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


def call(stack, method: str, path: str, *, headers: dict | None = None, body=None,
         data: bytes | None = None) -> tuple[int, dict]:
    async def go():
        h = {**(headers or {}), **({"Content-Type": "application/json"} if data is not None else {})}
        async with aiohttp.ClientSession() as s:
            async with s.request(method, stack.url + path, json=body, data=data, headers=h) as r:
                return r.status, json.loads(await r.read() or b"null")
    return asyncio.run(go())


def refused(stack, path: str, status: int, reason: str | None, **kw) -> str:
    got, doc = call(stack, "POST", path, **kw)
    assert got == status, doc
    if reason:
        assert doc["details"][0]["reason"] == reason, doc
    return doc["message"]


def pct(v: float) -> float:
    return v * 100 / SIZE


def keypoint(x: float, y: float, positive: bool | None = True, label: str = "Sky") -> dict:
    item = {"original_width": SIZE, "original_height": SIZE, "image_rotation": 0, "id": "k1", "from_name": "kp",
            "to_name": "img", "type": "keypointlabels", "origin": "manual",
            "value": {"x": pct(x), "y": pct(y), "width": 0.3, "keypointlabels": [label]}}
    if positive is not None:
        item["is_positive"] = positive
    return item


def rectangle(x0: float, y0: float, x1: float, y1: float, label: str = "Person") -> dict:
    return {"original_width": SIZE, "original_height": SIZE, "image_rotation": 0, "id": "r1", "from_name": "rect",
            "to_name": "img", "type": "rectanglelabels", "origin": "manual",
            "value": {"x": pct(x0), "y": pct(y0), "width": pct(x1 - x0), "height": pct(y1 - y0), "rotation": 0,
                      "rectanglelabels": [label]}}


def predict_body(image: str, context: list | None) -> dict:
    return {"tasks": [{"id": 7, "data": {"picture": image}}], "model_version": "", "project": "3.1700000000",
            "label_config": CONFIG, "params": {"login": None, "password": None,
                                               "context": None if context is None else {"result": context}}}


def segment_prompt(stack, prompt: dict, key: str = KEYS["a"]) -> tuple[np.ndarray, float]:
    """SegmentPrompt's best mask for the same prompt in pixels, over the HTTP/JSON API."""
    status, doc = call(stack, "POST", "/v1/images:segment", headers=bearer(key), body={
        "image": {"encoded": base64.b64encode(PHOTO).decode()}, "prompts": [prompt],
        "options": {"bestMaskOnly": True, "maskFormat": "MASK_FORMAT_BITMAP"}})
    assert status == 200, doc
    mask = doc["results"][0]["masks"][0]
    bits = np.unpackbits(np.frombuffer(base64.b64decode(mask["bitmap"]), np.uint8))[:SIZE * SIZE]
    return bits.reshape(SIZE, SIZE).astype(bool), mask["predictedIou"]


def prediction(doc: dict, label: str) -> tuple[np.ndarray, float]:
    """The one brush result of a one-task answer, checked for its fields; (its mask, its score)."""
    (task,) = doc["results"]
    (result,) = task["result"]
    assert {k: result[k] for k in ("from_name", "to_name", "type", "original_width", "original_height")} == {
        "from_name": "brush", "to_name": "img", "type": "brushlabels", "original_width": SIZE,
        "original_height": SIZE}
    assert result["value"]["format"] == "rle" and result["value"]["brushlabels"] == [label]
    assert task["score"] == result["score"] and task["model_version"]
    return brush_mask(result["value"]["rle"], SIZE, SIZE), result["score"]


def test_health_and_setup(stack):
    for path in ("/label-studio/health", "/label-studio/", "/label-studio"):
        assert call(stack, "GET", path) == (200, {"status": "UP", "model_class": "maskserve"})
    status, info = call(stack, "GET", "/v1/model", headers=bearer(KEYS["a"]))
    body = {"project": "3.1700000000", "schema": CONFIG, "hostname": "http://169.254.169.254",
            "access_token": "ignored"}
    assert call(stack, "POST", "/label-studio/setup", headers=basic(KEYS["a"]), body=body) == \
        (200, {"model_version": info["modelVersion"]})
    refused(stack, "/label-studio/setup", 401, "UNAUTHENTICATED", body=body)
    message = refused(stack, "/label-studio/setup", 400, "MALFORMED_REQUEST", headers=bearer(KEYS["a"]),
                      body={**body, "schema": '<View><Image name="i" value="$i"/></View>'})
    assert "BrushLabels" in message
    assert refused(stack, "/label-studio/webhook", 501, None, body={"action": "START_TRAINING"})
    assert refused(stack, "/label-studio/train", 501, None, body={})


def test_a_keypoint_on_an_inline_image_is_segment_prompts_best_mask(stack):
    status, doc = call(stack, "POST", "/label-studio/predict", headers=bearer(KEYS["a"]),
                       body=predict_body(DATA_URI, [keypoint(*POINT)]))
    assert status == 200, doc
    mask, score = prediction(doc, "Sky")  # the keypoint's label, one of the brush's
    expected, iou = segment_prompt(stack, {"points": [{"x": POINT[0], "y": POINT[1], "label": 1}]})
    assert mask.any() and (mask == expected).all() and score == pytest.approx(iou, abs=1e-6)
    # a negative click with it (Alt in Label Studio), and a label that is no brush label → the first one
    status, doc = call(stack, "POST", "/label-studio/predict", headers=bearer(KEYS["a"]), body=predict_body(
        DATA_URI, [keypoint(*POINT, label="Other"), keypoint(100.0, 60.0, positive=False, label="Other")]))
    mask, _ = prediction(doc, "Person")
    expected, _ = segment_prompt(stack, {"points": [{"x": POINT[0], "y": POINT[1], "label": 1},
                                                    {"x": 100.0, "y": 60.0, "label": 0}]})
    assert (mask == expected).all()


def test_a_rectangle_on_an_image_fetched_from_label_studio(stack, label_studio):
    before = len(label_studio.seen)
    status, doc = call(stack, "POST", "/label-studio/predict", headers=basic(KEYS["a"]),
                       body=predict_body("/data/upload/3/astronaut.jpg", [rectangle(*BOX)]))
    assert status == 200, doc
    mask, score = prediction(doc, "Person")
    expected, iou = segment_prompt(stack, {"box": dict(zip(("x0", "y0", "x1", "y1"), BOX))})
    assert mask.any() and (mask == expected).all() and score == pytest.approx(iou, abs=1e-6)
    assert label_studio.seen[before:] == [("/ls/data/upload/3/astronaut.jpg", f"Token {TOKEN}")]
    # the next click on the same image (its absolute URL this time is another URL) ...
    absolute = f"http://127.0.0.1:{label_studio.port}/ls/data/upload/3/astronaut.jpg"
    for image in ("/data/upload/3/astronaut.jpg", absolute):
        status, doc = call(stack, "POST", "/label-studio/predict", headers=bearer(KEYS["a"]),
                           body=predict_body(image, [rectangle(*BOX), keypoint(*POINT)]))
        assert status == 200, doc
    assert len(label_studio.seen) == before + 2  # ... is not downloaded again; the absolute URL once
    status, doc = call(stack, "POST", "/label-studio/predict", headers=bearer(KEYS["b"]),
                       body=predict_body("/data/upload/3/astronaut.jpg", [rectangle(*BOX)]))
    assert status == 200 and len(label_studio.seen) == before + 3  # another tenant's images are its own
    message = refused(stack, "/label-studio/predict", 400, "INVALID_IMAGE", headers=bearer(KEYS["a"]),
                      body=predict_body("/data/upload/3/missing.jpg", [rectangle(*BOX)]))
    assert "HTTP 404" in message


def test_images_outside_label_studio_are_refused_unfetched(stack, label_studio, elsewhere):
    seen = len(label_studio.seen)
    for url in (f"http://127.0.0.1:{elsewhere.port}/astronaut.jpg",  # another host
                f"http://127.0.0.1:{label_studio.port}/other/astronaut.jpg",  # Label Studio's host, outside its path
                f"http://127.0.0.1:{label_studio.port}/ls/../other/astronaut.jpg",
                f"http://x@127.0.0.1:{label_studio.port}/ls/data/upload/3/astronaut.jpg",
                f"https://127.0.0.1:{label_studio.port}/ls/data/upload/3/astronaut.jpg",  # another scheme
                f"//127.0.0.1:{elsewhere.port}/ls/data/upload/3/astronaut.jpg",
                "file:///etc/passwd", "s3://bucket/astronaut.jpg", "astronaut.jpg"):
        message = refused(stack, "/label-studio/predict", 400, "INVALID_IMAGE", headers=bearer(KEYS["a"]),
                          body=predict_body(url, [keypoint(*POINT)]))
        assert "MASKSERVE_LABEL_STUDIO_URL" in message and "tasks[0].data.picture" in message, (url, message)
    assert len(label_studio.seen) == seen
    message = refused(stack, "/label-studio/predict", 400, "INVALID_IMAGE", headers=bearer(KEYS["a"]),
                      body=predict_body("/data/upload/3/moved.jpg", [keypoint(*POINT)]))
    assert "HTTP 302" in message  # a redirect is not followed
    assert elsewhere.seen == []


def test_credentials_bearer_or_basic_and_nothing_else(stack):
    body = predict_body(DATA_URI, [keypoint(*POINT)])
    assert call(stack, "POST", "/label-studio/predict", headers=basic(KEYS["b"], user=""), body=body)[0] == 200
    refused(stack, "/label-studio/predict", 401, "UNAUTHENTICATED", body=body)
    refused(stack, "/label-studio/predict", 401, "UNAUTHENTICATED", headers=basic(access.new_key()), body=body)
    refused(stack, "/label-studio/predict", 401, "UNAUTHENTICATED", headers=bearer(access.new_key()), body=body)
    refused(stack, "/label-studio/predict", 401, "UNAUTHENTICATED", headers={"Authorization": "Basic %%%"},
            body=body)
    refused(stack, "/label-studio/predict", 401, "UNAUTHENTICATED", headers=basic(""), body=body)
    refused(stack, "/label-studio/predict", 403, "RPC_NOT_ALLOWED", headers=bearer(KEYS["ro"]), body=body)
    refused(stack, "/label-studio/predict", 401, "UNAUTHENTICATED", data=b"{not json")  # who, before what


def test_malformed_requests_and_tasks_without_clicks(stack):
    h = bearer(KEYS["a"])
    assert call(stack, "POST", "/label-studio/predict", headers=h, body=predict_body(DATA_URI, None)) == \
        (200, {"results": []})  # batch pre-annotation: no clicks, no prediction
    assert call(stack, "POST", "/label-studio/predict", headers=h, body=predict_body(DATA_URI, [])) == \
        (200, {"results": []})
    good = predict_body(DATA_URI, [keypoint(*POINT)])
    for body, field in [
        ({**good, "tasks": {"id": 1}}, "tasks"),
        ({**good, "params": {"context": {"result": {"x": 1}}}}, "params.context.result"),
        (predict_body(DATA_URI, [{**keypoint(*POINT), "value": {"x": "50", "y": 1, "keypointlabels": []}}]),
         "params.context.result[0].value.x"),
        (predict_body(DATA_URI, [{**rectangle(*BOX), "value": {"x": 1, "y": 1}}]),
         "params.context.result[0].value.width"),
        ({**good, "label_config": None}, "label_config"),
        ({**good, "label_config": "<View><Image name='img' value='$picture'/>"}, "label_config"),
        ({**good, "label_config": '<!DOCTYPE x [<!ENTITY a "aaaa">]><View>&a;</View>'}, "label_config"),
        ({**good, "tasks": [{"id": 1, "data": {"image": DATA_URI}}]}, "tasks[0].data.picture"),
    ]:
        got, doc = call(stack, "POST", "/label-studio/predict", headers=h, body=body)
        assert got == 400 and doc["details"][0]["reason"] == "MALFORMED_REQUEST", (field, doc)
        assert doc["details"][1]["fieldViolations"][0]["field"] == field, doc
    for data in (b"{not json", b"[1, 2]", b'"tasks"'):
        refused(stack, "/label-studio/predict", 400, "MALFORMED_REQUEST", headers=h, data=data)
    refused(stack, "/label-studio/predict", 400, "INVALID_IMAGE", headers=h,
            body=predict_body("data:image/jpeg;base64,%%%not base64", [keypoint(*POINT)]))
    refused(stack, "/label-studio/predict", 400, "INVALID_IMAGE", headers=h,
            body=predict_body("data:image/jpeg;base64," + base64.b64encode(b"not an image").decode(),
                              [keypoint(*POINT)]))
