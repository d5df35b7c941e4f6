"""The HTTP/JSON port against a real stack (TLS, API keys, tenants, quotas, an allowed origin): every RPC at its
route from the proto, answers equal to gRPC's, errors as google.rpc.Status under Google's HTTP mapping, streams
as NDJSON, server-sent events and WebSockets, bad input refused without harm, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import ssl

import aiohttp
import grpc
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format
from PIL import Image

from conftest import metric
from maskserve.engines import families, model_dir as model_dirs
from maskserve.service import access, http, openapi
from maskserve.service.proto import pb, pb_grpc
from maskserve.service.stack import LocalStack, free_port

trustme = pytest.importorskip("trustme")

KEYS = {t: access.new_key() for t in ("a", "b", "ro", "slow")}
ORIGIN = "https://annotator.example"
PHOTO = open(__import__("maskserve").__path__[0] + "/data/astronaut.jpg", "rb").read()
POINT = {"points": [{"x": 250, "y": 200, "label": 1}]}


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("http")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(d / "server.crt")
    cert.private_key_pem.write_to_path(d / "server.key")
    ca.cert_pem.write_to_path(d / "ca.pem")
    doc = {"tenants": {"a": {}, "b": {}, "ro": {}, "slow": {"rate": 0.01, "burst": 1}},
           "keys": [{"name": f"{t}-key", "tenant": t, "sha256": access.key_hash(k),
                     "rpcs": ["GetModelInfo"] if t == "ro" else ["*"]} for t, k in KEYS.items()]}
    (d / "access.json").write_text(json.dumps(doc))
    env = {"MASKSERVE_TLS_CERT_FILE": str(d / "server.crt"), "MASKSERVE_TLS_KEY_FILE": str(d / "server.key"),
           "MASKSERVE_AUTH_FILE": str(d / "access.json"), "MASKSERVE_HTTP_ALLOWED_ORIGINS": ORIGIN,
           "MASKSERVE_MAX_MESSAGE_MB": "2", "MASKSERVE_HTTP_IDLE_S": "3"}
    credentials = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes())
    with LocalStack(extra_env=env, log_dir=d, credentials=credentials, http_port=free_port()) as stack:
        stack.ssl = ssl.create_default_context(cafile=str(d / "ca.pem"))
        stack.grpc_credentials = credentials
        yield stack
        assert stack.decoder.poll() is None, "the decoder died during the HTTP tests"


def request(stack, method: str, path: str, *, key: str | None = KEYS["a"], body=None, data=None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one HTTP request."""
    async def go():
        h = dict(headers or {})
        if key:
            h["Authorization"] = f"Bearer {key}"
        async with aiohttp.ClientSession() as s:
            async with s.request(method, stack.url + path, json=body, data=data, headers=h, ssl=stack.ssl) as r:
                return r.status, dict(r.headers), await r.read()
    return asyncio.run(go())


def ok(stack, method: str, path: str, **kw) -> dict:
    status, _, raw = request(stack, method, path, **kw)
    assert status == 200, raw
    return json.loads(raw)


def error(stack, method: str, path: str, status: int, reason: str | None = None, **kw) -> dict:
    """The request fails with this HTTP status, a google.rpc.Status body and (where given) this ErrorInfo reason."""
    got, headers, raw = request(stack, method, path, **kw)
    assert got == status, raw
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(raw)
    assert set(doc) <= {"code", "message", "details"} and doc["message"]
    assert http.HTTP_STATUS[http.CODES[doc["code"]]] == status or status in (405, 413)  # HTTP's own
    if reason:
        infos = [d for d in doc.get("details", []) if d["@type"].endswith("google.rpc.ErrorInfo")]
        assert infos and infos[0]["reason"] == reason, doc
    return doc


def grpc_stub(stack, key: str = KEYS["a"]):
    channel = grpc.secure_channel(stack.target, stack.grpc_credentials)
    return pb_grpc.SegmenterStub(channel), [("authorization", f"Bearer {key}")]


@pytest.fixture(scope="module")
def encoded(web_stack) -> str:
    doc = ok(web_stack, "POST", "/v1/images:encode", body={"image": {"encoded": base64.b64encode(PHOTO).decode()},
                                                            "wait": True})
    assert doc["ready"] is True and (doc["width"], doc["height"]) == (512, 512)
    return doc["imageId"]


def test_every_rpc_has_a_route_and_the_openapi_document_is_valid_and_served(web_stack):
    from openapi_spec_validator import validate

    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Segmenter"].methods}
    assert {r.method.name for r in http.routes()} == methods
    served = ok(web_stack, "GET", "/openapi.json", key=None)
    assert served == json.loads(openapi.text())
    validate(served)
    operations = {op["operationId"] for path in served["paths"].values() for op in path.values()}
    assert methods <= operations


def test_json_answers_equal_grpc_answers(web_stack, encoded):
    stub, md = grpc_stub(web_stack)
    grpc_id = stub.EncodeImage(pb.EncodeImageRequest(image=pb.Image(encoded=PHOTO), wait=True), metadata=md).image_id
    assert grpc_id == encoded  # the same image, the same id
    body = {"imageId": encoded, "prompts": [POINT, {"box": {"x0": 100, "y0": 80, "x1": 300, "y1": 330}}],
            "options": {"maskFormat": "MASK_FORMAT_BITMAP"}}
    over_http = ok(web_stack, "POST", "/v1/images:segment", body=body)
    request = json_format.ParseDict(body, pb.SegmentPromptRequest())
    over_grpc = json.loads(http.to_json(stub.SegmentPrompt(request, metadata=md)))
    for a, b in zip(over_http["results"], over_grpc["results"], strict=True):
        assert a["masks"] == b["masks"]
    info = ok(web_stack, "GET", "/v1/model")
    assert info == json.loads(http.to_json(stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md)))


def test_an_image_as_a_multipart_upload(web_stack, encoded):
    form = aiohttp.FormData()
    form.add_field("image", PHOTO, filename="astronaut.jpg", content_type="image/jpeg")
    form.add_field("request", json.dumps({"prompts": [POINT], "options": {"bestMaskOnly": True}}))
    doc = ok(web_stack, "POST", "/v1/images:segment", data=form)
    assert doc["imageId"] == encoded and len(doc["results"][0]["masks"]) == 1


def test_the_embedding_in_float16_decodes_to_the_services_mask(web_stack, encoded, tiny_model_dir):
    """What the web annotator does on hover: the decoder graph run on GetEmbedding's arrays."""
    doc = ok(web_stack, "GET", f"/v1/images/{encoded}/embedding")
    feeds = {t["name"]: np.frombuffer(base64.b64decode(t["float16"]), "<f2").astype(np.float32).reshape(
        [int(n) for n in t["shape"]]) for t in doc["arrays"]}
    status, _, graph = request(web_stack, "GET", "/v1/model/decoder.onnx")
    assert status == 200 and graph == (tiny_model_dir / "decoder.onnx").read_bytes()
    manifest = model_dirs.Manifest.load(tiny_model_dir)
    family = families.of(manifest)
    coords, labels = family.prompt_points(np.array([[250.0, 200.0]]), np.array([1]), (512, 512), manifest.image_size)
    iou, low = ort.InferenceSession(graph).run(None, {
        **feeds, "point_coords": coords[None].astype(np.float32), "point_labels": labels[None].astype(np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32), "has_mask_input": np.zeros(1, np.float32)})
    _, chosen = family.choose(iou, low, True)
    local = family.upscale_logits(chosen[0], (512, 512), manifest.image_size, 256) > 0
    served = ok(web_stack, "POST", "/v1/images:segment", body={"imageId": encoded, "prompts": [POINT],
                                                               "options": {"maskFormat": "MASK_FORMAT_BITMAP"}})
    for i, mask in enumerate(served["results"][0]["masks"]):
        bits = np.unpackbits(np.frombuffer(base64.b64decode(mask["bitmap"]), np.uint8))[:512 * 512]
        theirs = bits.reshape(512, 512).astype(bool)
        iou = (theirs & local[i]).sum() / max(1, (theirs | local[i]).sum())
        assert iou >= 0.99, (i, iou)
    error(web_stack, "GET", f"/v1/images/{encoded}/embedding", 404, "IMAGE_NOT_FOUND", key=KEYS["b"])  # a's image


def test_segment_everything_as_ndjson_and_as_server_sent_events(web_stack, encoded):
    body = {"imageId": encoded, "options": {"pointsPerSide": 8, "predIouThresh": 0.5, "stabilityScoreThresh": 0.5}}
    status, headers, raw = request(web_stack, "POST", "/v1/images:segmentEverything", body=body)
    assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    pages = [line["masks"] for line in lines if "masks" in line]
    assert pages[-1]["last"] and pages[-1]["totalMasks"] == sum(len(p.get("masks", [])) for p in pages) > 0
    status, headers, raw = request(web_stack, "POST", "/v1/images:segmentEverything", body=body,
                                   headers={"Accept": "text/event-stream"})
    events = [json.loads(e.split("data: ", 1)[1]) for e in raw.decode().strip().split("\n\n")]
    assert headers["Content-Type"].startswith("text/event-stream")
    def masks(pages):  # progress messages and the seconds per stage come as the work goes
        return [{k: v for k, v in p.items() if k != "stageSeconds"} for p in pages]
    assert masks([e["masks"] for e in events if "masks" in e]) == masks(pages)
    body["options"]["pointsPerSide"] = 0  # refused before the first message: a plain error answer
    error(web_stack, "POST", "/v1/images:segmentEverything", 400, "INVALID_PARAMETER", body=body)


def test_errors_are_google_rpc_statuses_with_googles_http_mapping(web_stack, encoded):
    error(web_stack, "GET", "/v1/model", 401, "UNAUTHENTICATED", key=None)
    error(web_stack, "GET", "/v1/model", 401, "UNAUTHENTICATED", key=access.new_key())
    error(web_stack, "POST", "/v1/images:segment", 401, "UNAUTHENTICATED", key=None, body={"x": 1})  # who, first
    error(web_stack, "POST", "/v1/images:segment", 403, "RPC_NOT_ALLOWED", key=KEYS["ro"], body={})
    error(web_stack, "POST", "/v1/images:segment", 400, "INVALID_PROMPT", body={"imageId": encoded})
    error(web_stack, "POST", "/v1/images:segment", 404, "IMAGE_NOT_FOUND", key=KEYS["b"],
          body={"imageId": encoded, "prompts": [POINT]})  # another tenant's image is no image of b's
    doc = error(web_stack, "POST", "/v1/images:segment", 400, "MALFORMED_REQUEST", body={"imageId": encoded, "x": 1})
    assert "no field named" in doc["message"] and doc["details"][1]["fieldViolations"][0]["field"] == "body"
    error(web_stack, "POST", "/v1/images:segment", 400, "MALFORMED_REQUEST", data=b'{"imageId": ',
          headers={"Content-Type": "application/json"})
    error(web_stack, "POST", "/v1/images:encode", 400, "MALFORMED_REQUEST", body={"image": {"encoded": "%%%"}})
    error(web_stack, "POST", "/v1/images:segment", 400, "MALFORMED_REQUEST", data=b"imageId=1",
          headers={"Content-Type": "application/x-www-form-urlencoded"})
    error(web_stack, "POST", "/v1/images:encode", 400, "INVALID_IMAGE",
          body={"image": {"encoded": base64.b64encode(b"not an image").decode()}})
    error(web_stack, "POST", "/v1/images:encode", 413, data=b"{" + b" " * (3 * 2**20) + b"}",
          headers={"Content-Type": "application/json"})
    error(web_stack, "GET", "/v1/nothing", 404)
    error(web_stack, "DELETE", "/v1/model", 405)
    request(web_stack, "GET", "/v1/model", key=KEYS["slow"])
    status, headers, raw = request(web_stack, "GET", "/v1/model", key=KEYS["slow"])
    assert status == 429 and int(headers["Retry-After"]) >= 1 and b"QUOTA_RATE" in raw
    assert metric(web_stack.metrics_ports[0], 'maskserve_requests_total{code="UNAUTHENTICATED",rpc="GetModelInfo",'
                                              'tenant=""}') >= 2
    ok(web_stack, "GET", "/v1/model")  # unharmed


def test_a_requests_deadline_is_its_x_server_timeout(web_stack):
    """As a gRPC deadline: an image not encoded in time is 504 (its job stays queued); a malformed one is 400."""
    fresh = io.BytesIO()
    Image.fromarray(np.random.default_rng(11).integers(0, 255, (96, 128, 3), np.uint8)).save(fresh, "PNG")
    body = {"image": {"encoded": base64.b64encode(fresh.getvalue()).decode()}, "prompts": [POINT]}
    error(web_stack, "POST", "/v1/images:segment", 504, "NOT_ENCODED_IN_TIME", body=body,
          headers={"X-Server-Timeout": "0.001"})
    error(web_stack, "POST", "/v1/images:segment", 400, "MALFORMED_REQUEST", body=body,
          headers={"X-Server-Timeout": "soon"})


def test_cross_origin_calls_only_from_allowed_origins(web_stack):
    error(web_stack, "GET", "/v1/model", 403, headers={"Origin": "https://evil.example"})
    status, headers, _ = request(web_stack, "GET", "/v1/model", headers={"Origin": ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers, _ = request(web_stack, "OPTIONS", "/v1/images:segment", key=None, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204 and "authorization" in headers["Access-Control-Allow-Headers"]
    assert request(web_stack, "GET", "/v1/model", headers={"Origin": web_stack.url})[0] == 200  # its own page


async def _ws(stack, path: str, messages: list, *, protocols=(), key: str | None = KEYS["a"], binary=False):
    """Send `messages` (dicts, or raw str/bytes) on a WebSocket; (the answers, the close code)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(stack.url.replace("http", "ws") + path, ssl=stack.ssl, headers=headers,
                                protocols=protocols) as ws:
            answers = []
            for m in messages:
                if isinstance(m, dict) and binary:
                    await ws.send_bytes(json_format.ParseDict(m, pb.StreamSegmentRequest()).SerializeToString())
                elif isinstance(m, dict):
                    await ws.send_str(json.dumps(m))
                elif isinstance(m, bytes):
                    await ws.send_bytes(m)
                else:
                    await ws.send_str(m)
                got = await ws.receive(timeout=60)
                if got.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
                answers.append(pb.StreamSegmentResponse.FromString(got.data) if got.type == aiohttp.WSMsgType.BINARY
                               else json.loads(got.data))
                if "error" in answers[-1] and isinstance(answers[-1]["error"], dict) and "details" in answers[-1][
                        "error"]:
                    await ws.receive(timeout=10)
                    break
            await ws.close()
            return answers, ws.close_code


def test_stream_segment_over_a_websocket(web_stack, encoded):
    messages = [{"sequence": "1", "imageId": encoded}, {"sequence": "2", "prompt": POINT,
                                                         "options": {"maskFormat": "MASK_FORMAT_NONE"}}]
    answers, code = asyncio.run(_ws(web_stack, "/v1/streams/segment", messages))
    assert answers[0] == {"sequence": "1", "imageId": encoded}
    assert answers[1]["sequence"] == "2" and len(answers[1]["result"]["masks"]) == 3 and code == 1000
    # binary frames: protobuf in, protobuf out
    answers, _ = asyncio.run(_ws(web_stack, "/v1/streams/segment", messages, binary=True))
    assert answers[0].image_id == encoded and len(answers[1].result.masks) == 3
    # a browser's credentials: the API key as a subprotocol
    answers, _ = asyncio.run(_ws(web_stack, "/v1/streams/segment", messages[:1], key=None,
                                 protocols=(http.SUBPROTOCOL, http.BEARER_PROTOCOL + KEYS["a"])))
    assert answers[0]["imageId"] == encoded


def test_a_websocket_that_sends_garbage_or_no_credentials_is_closed_with_its_status(web_stack, encoded):
    answers, code = asyncio.run(_ws(web_stack, "/v1/streams/segment", ["{not json"]))
    assert code == 4000 + grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[-1]["error"]["details"][0]["reason"] == "MALFORMED_REQUEST"
    answers, code = asyncio.run(_ws(web_stack, "/v1/streams/segment", [b"\xff\xff\xff"]))
    assert code == 4000 + grpc.StatusCode.INVALID_ARGUMENT.value[0]
    answers, code = asyncio.run(_ws(web_stack, "/v1/streams/segment", [{"imageId": encoded}], key=None))
    assert code == 4000 + grpc.StatusCode.UNAUTHENTICATED.value[0] and not answers[0]["error"].get("imageId")
    answers, code = asyncio.run(_ws(web_stack, "/v1/streams/track", [{"start": {}}]))  # the tiny model is SAM
    assert code == 4000 + grpc.StatusCode.FAILED_PRECONDITION.value[0]

    async def silent():  # a WebSocket that sends nothing is ended after MASKSERVE_HTTP_IDLE_S
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(web_stack.url.replace("http", "ws") + "/v1/streams/segment", ssl=web_stack.ssl,
                                    headers={"Authorization": f"Bearer {KEYS['a']}"}) as ws:
                last = await ws.receive(timeout=30)
                await ws.receive(timeout=10)
                return json.loads(last.data), ws.close_code
    last, code = asyncio.run(silent())
    assert code == 4000 + grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert last["error"]["details"][0]["reason"] == "STREAM_IDLE"
    ok(web_stack, "GET", "/v1/model")  # unharmed
