"""The decoder's HTTP/JSON port: every RPC at the route its `google.api.http` option declares, the OpenAPI
document, the web annotator.

A request runs the RPC's own module behind the same concerns as over gRPC (`calls.invoker`; `HttpContext`
stands in for gRPC's servicer context): the same keys (`Authorization: Bearer`), tenants, quotas, limits,
metrics and errors. Bodies and answers are protobuf's JSON mapping (unknown fields refused); an image may come
as a multipart upload instead of base64. Errors are the `google.rpc.Status` as JSON, under the HTTP status
Google's mapping gives its code. Server-streamed answers are NDJSON (or server-sent events on `Accept:
text/event-stream`); client-streamed RPCs are WebSockets at their route, one JSON (text) or protobuf (binary)
message a frame. Browsers authenticate a WebSocket with the subprotocol `bearer.<API key>` (they cannot set
headers on one) beside `maskserve.v1`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import grpc
from aiohttp import WSCloseCode, WSMsgType, web
from google.api import annotations_pb2
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from maskserve.build import download

from . import calls, errors, openapi, watch
from .errors import Reason
from .failures import ServiceError
from .proto import pb

log = logging.getLogger("maskserve.http")

# Google's mapping of gRPC codes to HTTP statuses (google/rpc/code.proto).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
CODES = {code.value[0]: code for code in grpc.StatusCode}
SUBPROTOCOL = "maskserve.v1"
BEARER_PROTOCOL = "bearer."
WEB = resources.files("maskserve.service") / "web"  # the annotator's static files
JSON = "application/json"


@dataclass(frozen=True)
class Route:
    method: object  # the proto's MethodDescriptor
    verb: str  # "get" or "post"
    path: str  # aiohttp's pattern: `{field}` a path variable
    body: str  # "*": the whole request is the body; "": none (GET: fields from the query)

    @property
    def websocket(self) -> bool:
        return self.method.client_streaming


def routes() -> list[Route]:
    """Every RPC's route, from its google.api.http option (an RPC without one has none)."""
    found = []
    for method in pb.DESCRIPTOR.services_by_name["Segmenter"].methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb is not None:
            found.append(Route(method, verb, getattr(rule, verb), rule.body))
    return found


class Aborted(Exception):
    """A call's failure, as its concerns report it (gRPC's abort_with_status)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def failure(code: grpc.StatusCode, reason: Reason | None, message: str, *details) -> status_pb2.Status:
    """A google.rpc.Status made here (not by a call): with the ErrorInfo every error of ours has."""
    status = errors.status(code, message, ([errors.error_info(reason)] if reason else []) + list(details))
    return _status_of(status)


def _status_of(status: grpc.Status) -> status_pb2.Status:
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=status.code.value[0], message=status.details)


class HttpContext:
    """What the concerns and handlers ask of gRPC's servicer context, for an HTTP request."""

    def __init__(self, request: web.Request, key: str | None = None) -> None:
        self.request = request
        metadata = [(k.lower(), v) for k, v in request.headers.items() if k.lower() in ("authorization", "traceparent",
                                                                                       "tracestate")]
        if key is not None:
            metadata.append(("authorization", f"Bearer {key}"))
        self.metadata = tuple(metadata)
        timeout = request.headers.get("X-Server-Timeout")  # seconds, as Google's HTTP APIs take it
        try:
            self.deadline = time.monotonic() + float(timeout) if timeout else None
        except ValueError:
            raise ServiceError(Reason.MALFORMED_REQUEST, "X-Server-Timeout must be a number of seconds") from None

    def invocation_metadata(self):
        return self.metadata

    def auth_context(self) -> dict:
        cert = self.request.transport.get_extra_info("peercert") if self.request.transport else None
        if not cert:
            return {}
        sans = [v for kind, v in cert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
        cns = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
        return {"x509_subject_alternative_name": sans, "x509_common_name": cns}

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise Aborted(_status_of(status))


def to_json(message) -> str:
    return json_format.MessageToJson(message, indent=None, always_print_fields_with_no_presence=True)


def error_response(status: status_pb2.Status, http_status: int | None = None) -> web.Response:
    code = CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    response = web.Response(text=json_format.MessageToJson(status, indent=None), content_type=JSON,
                            status=http_status or HTTP_STATUS[code])
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            response.headers["Retry-After"] = str(max(1, round(retry.retry_delay.ToTimedelta().total_seconds())))
    return response


def malformed(message: str, field: str = "body") -> ServiceError:
    return ServiceError(Reason.MALFORMED_REQUEST, message, errors.bad_request(field, message))


BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}\Z")


def _check_base64(value, descriptor, where: str = "") -> None:
    """protobuf's JSON parser reads bytes leniently (invalid characters dropped: '%%%' is b''): strictly here."""
    if not isinstance(value, dict):
        return
    for name, v in value.items():
        field = descriptor.fields_by_camelcase_name.get(name) or descriptor.fields_by_name.get(name)
        if field is None:
            continue
        for i, item in enumerate(v if isinstance(v, list) else [v]):
            path = f"{where}{name}" + (f"[{i}]" if isinstance(v, list) else "")
            if field.type == field.TYPE_BYTES and isinstance(item, str) and not BASE64.match(item):
                raise malformed(f"{path} is not base64", path)
            if field.message_type is not None:
                _check_base64(item, field.message_type, path + ".")


def parse_json(text: str | bytes, message) -> None:
    """`message` from protobuf's JSON mapping, strictly: unknown fields and bad base64 refused."""
    try:
        doc = json.loads(text or "{}")
        _check_base64(doc, message.DESCRIPTOR)
        json_format.ParseDict(doc, message)
    except (json_format.ParseError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise malformed(f"not a valid {message.DESCRIPTOR.name} in JSON: {exc}") from None


class Gateway:
    """The HTTP application: routes from the proto, each to its RPC behind the concerns."""

    def __init__(self, service, concerns: list, settings) -> None:
        self.service, self.concerns, self.settings = service, concerns, settings
        self.allowed = {o.strip().rstrip("/") for o in settings.http_allowed_origins.split(",") if o.strip()}
        self.max_body = settings.max_message_mb * 2**20 * 4 // 3 + 2**16  # the gRPC limit, in base64
        self.model_dir = Path(service.decoding.model_dir)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors, self._origins, self._isolated])
        for route in routes():
            run = calls.invoker(self.service, self.concerns, route.method)
            handler = self._websocket if route.websocket else self._streamed if route.method.server_streaming \
                else self._unary
            app.router.add_route("GET" if route.websocket else route.verb.upper(), route.path,
                                 lambda request, route=route, run=run, handler=handler: handler(request, route, run))
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/v1/model/decoder.onnx", self._decoder_model)
        app.router.add_get("/", lambda request: web.FileResponse(WEB / "index.html"))
        app.router.add_get("/static/ort/{name}", self._web_runtime)
        app.router.add_static("/static/", Path(str(WEB)), append_version=True)
        from . import label_studio  # Label Studio's ML backend protocol, under /label-studio/
        label_studio.add_routes(app, self)
        return app

    # -- cross-cutting --------------------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler):
        """Every failure as a google.rpc.Status: the call's own, a refused request, an unknown route."""
        try:
            return await handler(request)
        except Aborted as exc:
            return error_response(exc.status)
        except ServiceError as exc:  # failed before a call started (its headers)
            return error_response(failure(exc.code, exc.reason, str(exc), *exc.details))
        except web.HTTPRequestEntityTooLarge:
            message = f"the request body is over {self.max_body} bytes (MASKSERVE_MAX_MESSAGE_MB, in base64)"
            return error_response(failure(grpc.StatusCode.RESOURCE_EXHAUSTED, None, message), 413)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}.get(
                exc.status, grpc.StatusCode.INVALID_ARGUMENT)
            message = f"{request.method} {request.path}: {exc.reason}"
            return error_response(failure(code, None, message), exc.status)

    def _own_origin(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    @web.middleware
    async def _origins(self, request: web.Request, handler):
        """Cross-origin calls only from allowed origins (`MASKSERVE_HTTP_ALLOWED_ORIGINS`): a browser sends
        `Origin` on every cross-origin request and WebSocket, so another site's page cannot use a visitor's
        access (or a service reachable only from the visitor's network)."""
        origin = request.headers.get("Origin")
        if origin is None or origin == self._own_origin(request):
            return await handler(request)
        if "*" not in self.allowed and origin.rstrip("/") not in self.allowed:
            message = (f"cross-origin request from {errors.clip(origin, 200)!r} refused: allow the origin with "
                       "MASKSERVE_HTTP_ALLOWED_ORIGINS")
            return error_response(failure(grpc.StatusCode.PERMISSION_DENIED, None, message))
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Expose-Headers": "Retry-After"}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers={
                **cors, "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": "authorization, content-type, x-server-timeout, traceparent",
                "Access-Control-Max-Age": "600"})
        response = await handler(request)
        response.headers.update(cors)
        return response

    @web.middleware
    async def _isolated(self, request: web.Request, handler):
        """The page is cross-origin isolated: ONNX Runtime Web then gets SharedArrayBuffer, and two threads."""
        response = await handler(request)
        if request.path == "/" or request.path.startswith("/static/"):
            response.headers.update({"Cross-Origin-Opener-Policy": "same-origin",
                                     "Cross-Origin-Embedder-Policy": "require-corp"})
        return response

    # -- requests ---------------------------------------------------------------------------------------------
    async def _request(self, request: web.Request, route: Route):
        """The body read (JSON or multipart), and a function making the RPC's request of it, the path and the
        query: the call runs it behind its concerns, so bad input fails after authentication, and is counted."""
        kind, body, form = request.content_type, None, None
        if route.body and kind == JSON:
            body = await request.read()
        elif route.body and kind == "multipart/form-data":
            form = await request.post()

        def make():
            message = getattr(pb, route.method.input_type.name)()
            if body is not None:
                parse_json(body, message)
            elif form is not None:
                self._multipart(form, message)
            elif route.body:
                raise malformed(f"Content-Type {kind!r}: send {JSON} (the request in protobuf's JSON mapping) or "
                                 "multipart/form-data (an image file and the request)", "Content-Type")
            elif request.query:
                try:
                    json_format.ParseDict(dict(request.query), message)
                except json_format.ParseError as exc:
                    raise malformed(f"query: {exc}", "query") from None
            for name, value in request.match_info.items():
                setattr(message, name, value)
            return message
        return make

    @staticmethod
    def _multipart(form, message) -> None:
        """Parts: `request` (the request in JSON, optional) and a file part named after an image field."""
        images = {f.name for f in message.DESCRIPTOR.fields if f.message_type is pb.Image.DESCRIPTOR}
        unknown = set(form) - images - {"request"}
        if unknown:
            raise malformed(f"unknown form parts {sorted(unknown)}: send `request` (JSON) and an image as "
                             f"{' or '.join(sorted(images)) or 'no image part'}")
        if "request" in form:
            text = form["request"]
            parse_json(text.file.read() if isinstance(text, web.FileField) else text, message)
        for name in images & set(form):
            part = form[name]
            getattr(message, name).encoded = part.file.read() if isinstance(part, web.FileField) else part.encode()

    async def _unary(self, request: web.Request, route: Route, run) -> web.Response:
        context = HttpContext(request)
        response = await run(await self._request(request, route), context)
        return web.Response(text=to_json(response), content_type=JSON)

    async def _streamed(self, request: web.Request, route: Route, run) -> web.StreamResponse:
        """NDJSON, or server-sent events; a failure after the first message is a last `{"error": Status}`."""
        context = HttpContext(request)
        responses = run(await self._request(request, route), context).__aiter__()
        try:
            first = await responses.__anext__()  # a call that fails at once answers with its status
        except StopAsyncIteration:
            first = None
        events = "text/event-stream" in request.headers.get("Accept", "")
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream" if events else "application/x-ndjson",
                                          "Cache-Control": "no-cache"})
        await out.prepare(request)

        async def send(text: str, event: str = "message") -> None:
            await out.write((f"event: {event}\ndata: {text}\n\n" if events else text + "\n").encode())

        try:
            if first is not None:
                await send(to_json(first))
                async for response in responses:
                    await send(to_json(response))
        except Aborted as exc:
            text = json_format.MessageToJson(exc.status, indent=None)
            if events:
                await send(text, "error")
            else:
                await send(f'{{"error": {text}}}')
        await out.write_eof()
        return out

    async def _websocket(self, request: web.Request, route: Route, run) -> web.WebSocketResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        key = next((p[len(BEARER_PROTOCOL):] for p in offered if p.startswith(BEARER_PROTOCOL)), None)
        context = HttpContext(request, key)
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,) if SUBPROTOCOL in offered else (),
                                   heartbeat=30, max_msg_size=self.max_body)
        await ws.prepare(request)
        parse = getattr(pb, route.method.input_type.name)
        binary = False

        async def requests():
            nonlocal binary
            while True:
                try:
                    msg = await ws.receive(timeout=self.settings.http_idle_s)
                except asyncio.TimeoutError:
                    raise ServiceError(Reason.STREAM_IDLE, f"nothing sent for {self.settings.http_idle_s:g} s "
                                       "(MASKSERVE_HTTP_IDLE_S): the stream is ended") from None
                if msg.type == WSMsgType.TEXT:
                    binary, message = False, parse()
                    parse_json(msg.data, message)
                elif msg.type == WSMsgType.BINARY:
                    binary = True
                    try:
                        message = parse.FromString(msg.data)
                    except DecodeError:
                        raise malformed(f"a binary message is not a valid {parse.DESCRIPTOR.name}") from None
                else:  # an error or a close
                    return
                yield message

        close, reason = WSCloseCode.OK, b""
        try:
            async for response in run(requests, context):
                if ws.closed:
                    break
                if binary:
                    await ws.send_bytes(response.SerializeToString())
                else:
                    await ws.send_str(to_json(response))
        except Aborted as exc:  # the call's status as a last text frame, and in the close code: 4000 + code
            if not ws.closed:
                await ws.send_str(json.dumps({"error": json_format.MessageToDict(exc.status)}))
            # a close reason is at most 123 bytes of UTF-8
            close, reason = 4000 + exc.status.code, exc.status.message.encode()[:120].decode(errors="ignore").encode()
        except ConnectionResetError:
            pass
        if not ws.closed:
            await ws.close(code=close, message=reason)
        return ws

    # -- the rest -----------------------------------------------------------------------------------------
    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=openapi.text(), content_type=JSON)

    async def _web_runtime(self, request: web.Request) -> web.FileResponse:
        """ONNX Runtime Web, from where `maskserve web pull` put it (not in the package: 15 MB)."""
        name = request.match_info["name"]
        path = download.web_runtime_dir() / name
        if name not in download.ORT_WEB_FILES or not path.is_file():
            message = f"{name}: ONNX Runtime Web {download.ORT_WEB_VERSION} is not installed here; run `maskserve web pull`"
            return error_response(failure(grpc.StatusCode.NOT_FOUND, None, message))
        kind = "text/javascript" if name.endswith(".mjs") else "application/wasm"
        return web.FileResponse(path, headers={"Content-Type": kind, "Cache-Control": "public, max-age=86400"})

    async def _decoder_model(self, request: web.Request) -> web.StreamResponse:
        """The decoder graph, for the page's in-browser decoding: to callers allowed GetModelInfo."""
        call = calls.Call("GetModelInfo", HttpContext(request), streaming=False, per_message=False)
        async with calls.chain(self.concerns, call):
            path = self.model_dir / self.service.manifest.decoder["file"]
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream",
                                               "Cache-Control": "private, max-age=3600"})


def ssl_context(settings) -> tuple[ssl.SSLContext, watch.Watched] | tuple[None, None]:
    """The gRPC port's certificates (and client CA), re-read when the files change: each handshake picks up
    the latest good pair."""
    if not settings.tls:
        return None, None

    def load() -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_client_ca_file:
            ctx.load_verify_locations(settings.tls_client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    files = [f for f in (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) if f]
    watched = watch.Watched(files, load, errors=(OSError, ssl.SSLError, ValueError))
    front = load()
    front.sni_callback = lambda sock, name, ctx: setattr(sock, "context", watched.current()) or None
    return front, watched


async def start(service, concerns: list, settings) -> web.AppRunner:
    runner = web.AppRunner(Gateway(service, concerns, settings).app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    context, _ = ssl_context(settings)
    # gRPC's "[::]" is every interface, IPv4 too; aiohttp's is None (an IPv6-only "::" fails where IPv6 is off)
    host = None if settings.grpc_host in ("[::]", "::", "0.0.0.0", "") else settings.grpc_host.strip("[]")
    try:
        await web.TCPSite(runner, host, settings.http_port, ssl_context=context, reuse_port=False).start()
    except OSError as exc:
        await runner.cleanup()
        raise SystemExit(f"MASKSERVE_HTTP_PORT={settings.http_port}: cannot listen on {host or '*'}: "
                         f"{exc.strerror or exc}") from None
    return runner
