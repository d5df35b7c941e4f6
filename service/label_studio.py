"""Label Studio's ML backend protocol on the HTTP port, under `/label-studio/`: Label Studio's "ML backend URL" is
then `https://decoder:8443/label-studio`, and its smart keypoints and rectangles segment with the model served.

    GET  /label-studio/health, /label-studio/   {"status": "UP", "model_class": "maskserve"} (open, like gRPC health)
    POST /label-studio/setup    {"project", "schema": label config, ...}  →  {"model_version"}
    POST /label-studio/predict  {"tasks": [{"id", "data": {"image": URL}}], "label_config",
                                 "params": {"context": {"result": [keypointlabels / rectanglelabels]}}}
                                →  {"results": [{"result": [brushlabels], "score", "model_version"}]}
    POST /label-studio/webhook, /label-studio/train   501: maskserve does not train

A prediction is the best mask (highest predicted IoU) for the context's points (`is_positive`: foreground or
background) and box (percent of the image), one per task, as a `brushlabels` result of the label config's first
BrushLabels control, in Label Studio's own brush RLE (`brush_rle`). A task without a context (batch
pre-annotation) gets no prediction: `{"results": []}`, as the reference SAM backend answers.

Setup and predict run as the SegmentPrompt RPC behind the same concerns (`calls`): the caller's key as
`Authorization: Bearer <key>` or HTTP Basic with the key as the password (Label Studio's "basic auth" fields),
its tenant, quotas, metrics and google.rpc.Status errors. Images: `data:` URIs decoded here; http(s) URLs only
under MASKSERVE_LABEL_STUDIO_URL (relative `/data/upload/...` resolved against it), fetched with its token,
without redirects, bounded in size and time; anything else is refused. The `hostname` and `access_token` a
setup call carries are ignored: where images come from is the operator's choice alone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import aiohttp
import grpc
import numpy as np
from aiohttp import web
from yarl import URL

from . import calls, errors, rpcs
from .errors import Reason
from .failures import ServiceError
from .http import HttpContext, error_response, failure, malformed
from .proto import pb

log = logging.getLogger("maskserve.label_studio")

PREFIX = "/label-studio"
MODEL_CLASS = "maskserve"
FETCH_TIMEOUT_S = 30.0  # one image download from Label Studio, at most (less where the call's deadline is nearer)
CACHE_ENTRIES = 4096  # (tenant, URL) → image_id remembered in this process, so a click does not download again
RLE_SIZES = (3, 4, 8, 16)  # bits of a run's length, by its 2-bit size class (the reference encoder's choice)
NEGATIVE_LABELS = {"negative", "background", "bg", "exclude"}  # a keypoint without `is_positive` so labelled
URL_SETTING, TOKEN_SETTING = "MASKSERVE_LABEL_STUDIO_URL", "MASKSERVE_LABEL_STUDIO_TOKEN_FILE"


# -- Label Studio's brush RLE ---------------------------------------------------------------------------------
def brush_rle(mask: np.ndarray) -> list[int]:
    """A (H, W) mask → Label Studio's brush RLE (what label_studio_sdk.converter.brush.mask2rle makes of `mask *
    255`): the mask as RGBA bytes (255 in all four channels inside it, 0 outside), run-length packed as
    thi-ng/rle-pack packs it, as the list of its bytes.

    The bit stream (most significant bit first): 32 bits the number of values (H·W·4), 5 bits the word size
    less one (8 bits a value), four 4-bit run-length sizes less one (3, 4, 8, 16), then chunks: 1 bit repeat
    (1) or literal (0), 2 bits which size, that many bits the count less one, then the value once (repeat) or
    count values (literal); then 1 to 8 zero bits, to the byte. Every run here repeats (a pixel is four equal
    values), and a run longer than 2^16 values is cut in pieces: the bytes are mask2rle's, byte for byte."""
    pixels = np.where(np.asarray(mask).ravel() != 0, 255, 0).astype(np.uint8)
    if pixels.size == 0:
        raise ValueError("an empty mask has no brush RLE")
    starts = np.concatenate(([0], np.flatnonzero(pixels[1:] != pixels[:-1]) + 1))
    lengths = np.diff(np.append(starts, pixels.size)).astype(np.int64) * 4
    pieces = -(-lengths // 2**16)
    run = np.repeat(np.arange(starts.size), pieces)
    counts = np.full(run.size, 2**16, np.int64)
    counts[np.cumsum(pieces) - 1] = lengths - 2**16 * (pieces - 1)
    size = np.select([counts <= 8, counts <= 16, counts <= 256], [0, 1, 2], 3)
    width = np.array(RLE_SIZES, np.int64)[size]
    chunks = ((1 << (2 + width + 8)) | (size << (width + 8)) | ((counts - 1) << 8)
              | pixels[starts][run].astype(np.int64))
    header = (pixels.size * 4) << 21 | 7 << 16
    for i, bits in enumerate(RLE_SIZES):
        header |= (bits - 1) << (12 - 4 * i)
    codes = np.concatenate(([header], chunks)).astype(np.uint64)
    widths = np.concatenate(([53], 11 + width))
    owner = np.repeat(np.arange(codes.size), widths)
    place = np.arange(owner.size) - np.repeat(np.cumsum(widths) - widths, widths)
    shift = (widths[owner] - 1 - place).astype(np.uint64)
    packed = np.packbits(((codes[owner] >> shift) & np.uint64(1)).astype(np.uint8)).tolist()
    return packed + [0] if owner.size % 8 == 0 else packed  # 1 to 8 zero bits close it, as mask2rle's do


# -- the label config ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    from_name: str  # the BrushLabels control's name
    to_name: str  # the Image it labels
    image_key: str  # the task data field the Image shows (`value="$image"` → "image")
    labels: tuple[str, ...]  # the BrushLabels' labels


@lru_cache(maxsize=64)
def parse_config(text: str, field: str = "label_config") -> Config:
    """The first BrushLabels control of a labeling config and the Image it names."""
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise malformed("the label config must not declare a DOCTYPE or entities", field)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise malformed(f"the label config is not valid XML: {exc}", field) from None
    brush = next((e for e in root.iter() if e.tag.lower() == "brushlabels"), None)
    if brush is None or not brush.get("name") or not brush.get("toName"):
        raise malformed("the label config has no BrushLabels control (with `name` and `toName`): maskserve "
                         "answers with brush masks", field)
    to_name = brush.get("toName").split(",")[0].strip()
    image = next((e for e in root.iter() if e.tag.lower() == "image" and e.get("name") == to_name), None)
    if image is None:
        raise malformed(f"the BrushLabels' toName {to_name!r} names no Image in the label config", field)
    labels = tuple(e.get("value") for e in brush.iter() if e.tag.lower() == "label" and e.get("value"))
    key = (image.get("value") or "$image").lstrip("$")
    return Config(brush.get("name"), to_name, key, labels)


# -- the annotator's clicks -----------------------------------------------------------------------------------
@dataclass
class Clicks:
    points: list[tuple[float, float, bool]]  # x, y in percent of the image, foreground
    box: tuple[float, float, float, float, float] | None  # x, y, width, height in percent, rotation in degrees
    labels: list[str]  # the labels the clicks carried, in order

    def prompt(self, width: int, height: int) -> pb.Prompt:
        """In the image's pixels (the percentages are of the image as shown, which is the image as encoded:
        upright by EXIF, as browsers show it)."""
        prompt = pb.Prompt()
        for x, y, positive in self.points:
            prompt.points.add(x=_clamp(x * width / 100, width), y=_clamp(y * height / 100, height),
                              label=pb.POINT_LABEL_FOREGROUND if positive else pb.POINT_LABEL_BACKGROUND)
        if self.box is not None:
            x, y, w, h, rotation = self.box
            x0, y0, w, h = x * width / 100, y * height / 100, w * width / 100, h * height / 100
            turn = math.radians(rotation)  # Label Studio turns a rectangle about its top-left corner
            corners = [(x0 + dx * math.cos(turn) - dy * math.sin(turn), y0 + dx * math.sin(turn) + dy * math.cos(turn))
                       for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
            xs, ys = [c[0] for c in corners], [c[1] for c in corners]
            prompt.box.CopyFrom(pb.Box(x0=_clamp(min(xs), width), y0=_clamp(min(ys), height),
                                       x1=_clamp(max(xs), width), y1=_clamp(max(ys), height)))
        return prompt

    def label(self, config: Config) -> list[str]:
        """The last click's label that is one of the BrushLabels' labels, else the first of those."""
        chosen = next((label for label in reversed(self.labels) if label in config.labels), None)
        return [chosen or config.labels[0]] if config.labels else []


def _clamp(v: float, side: int) -> float:
    return min(max(v, 0.0), float(side))


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise malformed(f"{field} must be a number (percent of the image)", field)
    return float(value)


def parse_clicks(context) -> Clicks | None:
    """The interactive context's keypoints and rectangle (the last one: SAM takes one box); None without any."""
    if context is None:
        return None
    if not isinstance(context, dict):
        raise malformed("params.context must be an object", "params.context")
    results = context.get("result")
    if results is None:
        return None
    if not isinstance(results, list):
        raise malformed("params.context.result must be a list of results", "params.context.result")
    clicks = Clicks([], None, [])
    for i, item in enumerate(results):
        where = f"params.context.result[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise malformed(f"{where} must be a result with a `value` object", where)
        kind, value = str(item.get("type", "")).lower(), item["value"]
        if kind not in ("keypointlabels", "rectanglelabels"):
            continue  # other tools' results: nothing to prompt with
        x, y = _number(value.get("x"), f"{where}.value.x"), _number(value.get("y"), f"{where}.value.y")
        labels = value.get(kind) or value.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise malformed(f"{where}.value.{kind} must be a list of labels", f"{where}.value.{kind}")
        clicks.labels += labels[:1]
        if kind == "keypointlabels":
            positive = item.get("is_positive")
            if positive is None:  # older Label Studio: a label may say it
                positive = not (labels and labels[0].strip().lower() in NEGATIVE_LABELS)
            clicks.points.append((x, y, bool(positive)))
        else:
            w, h = _number(value.get("width"), f"{where}.value.width"), _number(value.get("height"),
                                                                               f"{where}.value.height")
            clicks.box = (x, y, w, h, _number(value.get("rotation", 0), f"{where}.value.rotation"))
    return clicks if clicks.points or clicks.box else None


def _object(body: bytes) -> dict:
    try:
        doc = json.loads(body or b"{}")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise malformed(f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise malformed("the body must be a JSON object")
    return doc


# -- images ---------------------------------------------------------------------------------------------------
def _refused(message: str, field: str) -> ServiceError:
    return ServiceError(Reason.INVALID_IMAGE, message, errors.bad_request(field, message))


def data_uri(uri: str, field: str) -> bytes:
    """`data:[<type>][;base64],<data>` → its bytes."""
    head, comma, data = uri.partition(",")
    if not comma:
        raise _refused(f"{field} is not a data: URI (no comma)", field)
    try:
        if head.lower().endswith(";base64"):
            return base64.b64decode(re.sub(r"\s+", "", urllib.parse.unquote(data)), validate=True)
        return urllib.parse.unquote_to_bytes(data)
    except (binascii.Error, ValueError):
        raise _refused(f"{field} is a data: URI whose base64 does not decode", field) from None


class Recent:
    """A bounded, expiring map (tenant, URL) → (image_id, (H, W)): the last images fetched, per tenant."""

    def __init__(self, entries: int, ttl_s: float) -> None:
        self.entries, self.ttl_s = entries, ttl_s
        self.items: OrderedDict[tuple[str, str], tuple[float, str, tuple[int, int]]] = OrderedDict()

    def get(self, key):
        found = self.items.get(key)
        if found is None or time.monotonic() - found[0] > self.ttl_s:
            self.items.pop(key, None)
            return None
        self.items.move_to_end(key)
        return found[1], found[2]

    def put(self, key, image_id: str, size: tuple[int, int]) -> None:
        self.items[key] = (time.monotonic(), image_id, size)
        self.items.move_to_end(key)
        while len(self.items) > self.entries:
            self.items.popitem(last=False)

    def drop(self, key) -> None:
        self.items.pop(key, None)


def _is_jwt(token: str) -> bool:
    """Label Studio's personal access tokens are JWTs (sent as Bearer); its legacy tokens are not (Token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        return isinstance(json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))), dict)
    except ValueError:
        return False


class Source:
    """Where task images may come from: MASKSERVE_LABEL_STUDIO_URL and its token."""

    def __init__(self, settings) -> None:
        self.text = settings.label_studio_url.strip()
        self.token_file = settings.label_studio_token_file
        self.limit = settings.max_message_mb * 2**20  # an image as large as a request may carry
        self.base = None
        if self.text:
            try:
                self.base = URL(self.text)
            except ValueError:
                self.base = None
            if self.base is None or self.base.scheme not in ("http", "https") or not self.base.host \
                    or self.base.user or self.base.query_string or self.base.fragment:
                raise SystemExit(f"{URL_SETTING}={self.text!r}: expected Label Studio's base URL, "
                                 "http(s)://host[:port][/path]")
            self.path = self.base.path.rstrip("/")
        if self.token_file:
            self.token()  # an unreadable token file: refuse to start

    def token(self) -> str:
        try:
            with open(self.token_file) as f:
                return f.read().strip()
        except OSError as exc:
            raise SystemExit(f"{TOKEN_SETTING}={self.token_file!r}: cannot read it ({exc.strerror or exc})") \
                from None

    def resolve(self, url: str, field: str) -> URL:
        """The URL to fetch for a task's image URL, or a refusal that names the setting."""
        shown = errors.clip(url, 200)
        if url.startswith(("upload/", "/upload/")):  # as label_studio_sdk's get_local_path mends them
            url = "/data/" + url.lstrip("/")
        relative = url.startswith("/") and not url.startswith("//")
        if self.base is None:
            raise _refused(f"{field}: {shown!r} cannot be fetched: no Label Studio is configured; the operator sets "
                           f"{URL_SETTING} (images are fetched only from there), or send the image inline as a "
                           "data: URI", field)
        try:
            target = URL(self.text.rstrip("/") + url if relative else url)
        except ValueError:
            target = None
        if target is None or not target.is_absolute() or target.scheme not in ("http", "https") or target.user \
                or target.password is not None or (target.scheme, target.host, target.port) != \
                (self.base.scheme, self.base.host, self.base.port) \
                or not (target.path == self.path or target.path.startswith(self.path + "/")):
            raise _refused(f"{field}: {shown!r} is not under the Label Studio URL {self.text} ({URL_SETTING}): "
                           "maskserve fetches task images only from there (or takes them inline as data: URIs)",
                           field)
        return target

    async def fetch(self, session: aiohttp.ClientSession, target: URL, field: str, deadline: float | None) -> bytes:
        """The image's bytes: one GET with the token, no redirects, at most `limit` bytes, in time."""
        headers = {"Accept": "image/*"}
        if self.token_file:
            token = self.token()
            headers["Authorization"] = f"{'Bearer' if _is_jwt(token) else 'Token'} {token}"
        timeout = FETCH_TIMEOUT_S if deadline is None else max(0.01, min(FETCH_TIMEOUT_S, deadline))
        shown = errors.clip(str(target), 200)
        try:
            async with session.get(target, headers=headers, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                if r.status != 200:
                    hint = f"; check {TOKEN_SETTING}" if r.status in (301, 302, 303, 307, 401, 403) else ""
                    raise _refused(f"{field}: Label Studio answered HTTP {r.status} for {shown}{hint}", field)
                if (r.content_length or 0) > self.limit:
                    raise _refused(f"{field}: the image at {shown} is {r.content_length} bytes; at most {self.limit} "
                                   "are read (MASKSERVE_MAX_MESSAGE_MB)", field)
                data = bytearray()
                async for piece in r.content.iter_chunked(2**16):
                    data += piece
                    if len(data) > self.limit:
                        raise _refused(f"{field}: the image at {shown} is over {self.limit} bytes "
                                       "(MASKSERVE_MAX_MESSAGE_MB)", field)
                return bytes(data)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            why = f"no answer within {timeout:g} s" if isinstance(exc, asyncio.TimeoutError) else \
                f"{exc.__class__.__name__}: {exc}"
            raise _refused(f"{field}: could not fetch {shown} from Label Studio ({why})", field) from None


# -- the routes -----------------------------------------------------------------------------------------------
def basic_key(value: str) -> str | None:
    """The password (the API key) of HTTP Basic credentials, or None when they are not `base64(user:key)`."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, ValueError):
        return None
    user, colon, key = decoded.partition(":")
    return key if colon and key else None


class Context(HttpContext):
    """HttpContext, with HTTP Basic credentials read as the key they carry (`Bearer <password>`)."""

    def __init__(self, request: web.Request, authenticating: bool) -> None:
        super().__init__(request)
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            key = basic_key(value)
            if key is None and authenticating:
                raise ServiceError(Reason.UNAUTHENTICATED, "the HTTP Basic credentials must be base64 of "
                                   "`user:API key` (Label Studio: the ML backend's basic auth user and password)")
            self.metadata = tuple((k, v) for k, v in self.metadata if k != "authorization") + \
                ((("authorization", f"Bearer {key}"),) if key else ())


class LabelStudio:
    def __init__(self, gateway) -> None:
        self.service, self.concerns, self.settings = gateway.service, gateway.concerns, gateway.settings
        self.authenticating = any(isinstance(c, calls.Authentication) and c.access_file is not None
                                  for c in self.concerns)
        self.source = Source(self.settings)
        self.recent = Recent(CACHE_ENTRIES, self.settings.embedding_ttl_s)
        self.segment = rpcs.handler("SegmentPrompt")
        self.session: aiohttp.ClientSession | None = None

    def add(self, app: web.Application) -> None:
        for path in (PREFIX, PREFIX + "/", PREFIX + "/health"):
            app.router.add_get(path, self.health)
        app.router.add_post(PREFIX + "/setup", self.setup)
        app.router.add_post(PREFIX + "/predict", self.predict)
        app.router.add_post(PREFIX + "/webhook", self.no_training)
        app.router.add_post(PREFIX + "/train", self.no_training)
        app.on_cleanup.append(self._close)

    async def _close(self, app) -> None:
        if self.session is not None:
            await self.session.close()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "UP", "model_class": MODEL_CLASS})

    async def no_training(self, request: web.Request) -> web.Response:
        return error_response(failure(grpc.StatusCode.UNIMPLEMENTED, None, "maskserve serves a trained model and "
                                      "does not train: turn off training for this ML backend in Label Studio"))

    def _call(self, request: web.Request) -> calls.Call:
        """The request as a SegmentPrompt call: its caller authenticated by the concerns."""
        return calls.Call("SegmentPrompt", Context(request, self.authenticating), streaming=False, per_message=False)

    async def setup(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with calls.chain(self.concerns, self._call(request)):
            doc = _object(body)
            schema = doc.get("schema")
            if schema is not None and not isinstance(schema, str):
                raise malformed("schema must be the label config (XML text)", "schema")
            if schema:
                parse_config(schema, "schema")  # a project this backend cannot serve is told so on connecting
        return web.json_response({"model_version": self.service.version})

    async def predict(self, request: web.Request) -> web.Response:
        body = await request.read()
        call = self._call(request)
        async with calls.chain(self.concerns, call):
            doc = _object(body)
            tasks, params = doc.get("tasks"), doc.get("params") or {}
            if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
                raise malformed("tasks must be a list of tasks (objects with `data`)", "tasks")
            if not isinstance(params, dict):
                raise malformed("params must be an object", "params")
            clicks = parse_clicks(params.get("context"))
            if clicks is None:  # pre-annotation without clicks: SAM needs a prompt, so no prediction
                return web.json_response({"results": []})
            config = doc.get("label_config")
            if not isinstance(config, str) or not config:
                raise malformed("label_config (the project's labeling config) is required", "label_config")
            config = parse_config(config)
            results = [await self._task(call, config, clicks, i, task) for i, task in enumerate(tasks)]
        return web.json_response({"results": results})

    async def _task(self, call: calls.Call, config: Config, clicks: Clicks, i: int, task: dict) -> dict:
        field = f"tasks[{i}].data.{config.image_key}"
        data = task.get("data")
        url = data.get(config.image_key) if isinstance(data, dict) else None
        if not isinstance(url, str) or not url:
            raise malformed(f"{field} must be the image's URL (the Image {config.to_name!r} shows "
                             f"${config.image_key})", field)
        for attempt in range(2):
            image_id, (height, width), cached = await self._image(call, url, field)
            request = pb.SegmentPromptRequest(
                image_id=image_id, prompts=[clicks.prompt(width, height)],
                options=pb.OutputOptions(best_mask_only=True, mask_format=pb.MASK_FORMAT_BITMAP))
            try:
                response = await self.segment(self.service, request, call)
                break
            except ServiceError as exc:  # its embedding expired from the store: fetch and encode it again
                if not (cached and attempt == 0 and exc.reason == Reason.IMAGE_NOT_FOUND):
                    raise
                self.recent.drop((call.tenant, url))
        mask = response.results[0].masks[0]
        bits = np.unpackbits(np.frombuffer(mask.bitmap, np.uint8), count=mask.width * mask.height)
        score = round(float(mask.predicted_iou), 6)
        return {"result": [{
            "id": uuid.uuid4().hex[:10], "from_name": config.from_name, "to_name": config.to_name,
            "type": "brushlabels", "original_width": mask.width, "original_height": mask.height,
            "image_rotation": 0, "value": {"format": "rle", "rle": brush_rle(bits.reshape(mask.height, mask.width)),
                                           "brushlabels": clicks.label(config)},
            "score": score, "readonly": False}], "score": score, "model_version": self.service.version}

    async def _image(self, call: calls.Call, url: str, field: str) -> tuple[str, tuple[int, int], bool]:
        """(image_id, (H, W), whether it came from the cache) of a task's image, encoded for the caller."""
        if url[:5].lower() == "data:":
            payload = data_uri(url, field)
        else:
            target = self.source.resolve(url, field)
            found = self.recent.get((call.tenant, url))
            if found is not None:
                return found[0], found[1], True
            if self.session is None:
                self.session = aiohttp.ClientSession()
            payload = await self.source.fetch(self.session, target, field, call.context.time_remaining())
        image_id, _, size = await self.service.embeddings.image_for(call.caller, pb.Image(encoded=payload),
                                                                    call.context)
        if url[:5].lower() != "data:":
            self.recent.put((call.tenant, url), image_id, tuple(size))
        return image_id, tuple(size), False


def add_routes(app: web.Application, gateway) -> None:
    LabelStudio(gateway).add(app)
