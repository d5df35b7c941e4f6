"""The decoder process: gRPC prompts answered from the shared embedding store.

Stateless: any replica answers any request. `build` makes the service's parts from the settings (the model,
Redis, the pools, the access file) and hands them to the `Segmenter`; `_handlers` routes every method of
the proto's service to its module in `rpcs/` through the same concerns (`calls`): tracing, metrics, error
mapping, authentication, admission.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from maskserve import engines

from . import (access, allocator, calls, errors, http, logs, metrics, quotas, redis_clients, refinement, tls, tracing,
               tracking)
from .calls import SERVICE_NAME
from .config import Settings
from .decoding import Decoding
from .embeddings import Embeddings
from .errors import Reason
from .failures import ServiceError
from .proto import pb
from .servicer import Segmenter

log = logging.getLogger("maskserve.decoder")
# Health names: "" and SERVICE_NAME follow readiness (Redis reachable); LIVENESS only says the process runs,
# so a Redis outage makes pods unready instead of restarting them.
LIVENESS = "maskserve.v1.Liveness"


def build(settings: Settings) -> tuple[Segmenter, list]:
    """The service and the concerns every call goes through, from the settings."""
    model_dir = engines.resolve(settings.model_dir or None, settings.engine_cache)
    model = engines.load(model_dir, encoder=False, threads=settings.ort_threads or None)
    options = dict(socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
    cache = redis_clients.connect(settings, asyncio=True, **options)  # embeddings
    queue = redis_clients.connect(settings, queue=True, asyncio=True, **options) \
        if settings.queue_redis_url else cache
    pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
    # Automatic mask generation runs for seconds: on threads of its own, so prompts are not queued behind it.
    everything_pool = ThreadPoolExecutor(settings.everything_concurrency, thread_name_prefix="everything")
    local_quotas = quotas.Local()
    tracking_pool = ThreadPoolExecutor(settings.track_concurrency, thread_name_prefix="track")
    service = Segmenter(settings, model.manifest, Embeddings(settings, model.manifest, cache, queue, pool),
                        Decoding(settings, model_dir, model), refinement.Refinements(queue, settings.logits_cache_entries),
                        pool, everything_pool, local_quotas, tracking.Sessions(settings, model.manifest, model_dir, queue),
                        tracking_pool)
    limits = access.Limits.from_settings(settings)
    access_file = access.AccessFile(settings.auth_file, limits) if settings.auth_file else None
    concerns = [calls.Tracing(), calls.Metrics(), calls.Errors(),
                calls.Authentication(access_file, access.Caller("", "anonymous", frozenset({"*"}), limits)),
                calls.Admission(local_quotas)]
    metrics.WAITING_IMAGES.set_function(lambda: len(service.embeddings.waiters))
    metrics.LRU_ENTRIES.set_function(lambda: len(service.embeddings.lru.items))
    return service, concerns


def _parser(cls):
    """Requests are parsed here rather than by gRPC, whose own deserializer answers malformed protobuf bytes
    with UNKNOWN: here they are INVALID_ARGUMENT, like any other bad input."""
    def parse(raw: bytes):
        try:
            return cls.FromString(raw)
        except DecodeError:
            field = _not_utf8(cls.DESCRIPTOR, raw)
            if field:  # protobuf says only "malformed": the field is found here, so the caller knows which
                message = f"{field} is not UTF-8 text (a protobuf string must be)"
                raise ServiceError(Reason.MALFORMED_REQUEST, message, errors.bad_request(field, message)) from None
            raise ServiceError(Reason.MALFORMED_REQUEST, f"the request is not a valid {cls.DESCRIPTOR.full_name} "
                               "(malformed protobuf)") from None
    return parse


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        value, pos, shift = value | (byte & 0x7F) << shift, pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _not_utf8(descriptor, raw: bytes, prefix: str = "") -> str | None:
    """The path (`phrases[1]`, `image_id`...) of the first string field whose bytes are not UTF-8, walking
    the wire format by the message's descriptor; None if there is none, or the bytes are malformed otherwise."""
    pos, seen = 0, {}
    try:
        while pos < len(raw):
            tag, pos = _varint(raw, pos)
            wire = tag & 7
            if wire in (1, 5):
                pos += 8 if wire == 1 else 4
            elif wire == 0:
                _, pos = _varint(raw, pos)
            elif wire == 2:
                length, pos = _varint(raw, pos)
                value, pos = raw[pos:pos + length], pos + length
                field = descriptor.fields_by_number.get(tag >> 3)
                if field is None:
                    continue
                index = seen[field.number] = seen.get(field.number, -1) + 1
                path = prefix + field.name + (f"[{index}]" if field.is_repeated else "")
                if field.type == field.TYPE_STRING:
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError:
                        return path
                elif field.type == field.TYPE_MESSAGE and (found := _not_utf8(field.message_type, value, path + ".")):
                    return found
            else:
                return None
    except IndexError:
        return None
    return None


def _handlers(service: Segmenter, concerns: list) -> grpc.GenericRpcHandler:
    """Every method of the proto's service: its module in `rpcs/`, behind every concern."""
    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["Segmenter"].methods:
        run = calls.invoker(service, concerns, method)
        parse = _parser(getattr(pb, method.input_type.name))
        serialize = getattr(pb, method.output_type.name).SerializeToString
        if method.client_streaming:
            async def handler(raw_requests, context, run=run, parse=parse):
                async def requests():
                    async for raw in raw_requests:
                        yield parse(raw)
                async for response in run(requests, context):
                    yield response
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(handler, response_serializer=serialize)
        elif method.server_streaming:
            async def handler(raw, context, run=run, parse=parse):
                async for response in run(lambda: parse(raw), context):
                    yield response
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(handler, response_serializer=serialize)
        else:
            async def handler(raw, context, run=run, parse=parse):
                return await run(lambda: parse(raw), context)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(handler, response_serializer=serialize)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


async def _watch_health(service: Segmenter, health_servicer, every_s: float = 1.0) -> None:
    """Readiness follows Redis: NOT_SERVING while the store is unreachable, SERVING when it is back. The cause
    (refused connection, wrong password, ...) is logged when it starts and once a minute while it lasts."""
    status, logged = None, 0.0
    while True:
        try:
            for name, client in (("cache", service.embeddings.redis), ("queue", service.embeddings.queue)):
                where = name
                await client.ping()
            new = health_pb2.HealthCheckResponse.SERVING
        except Exception as exc:  # noqa: BLE001
            new = health_pb2.HealthCheckResponse.NOT_SERVING
            metrics.REDIS_ERRORS.inc()
            if new != status or time.monotonic() - logged > 60:
                log.error("not serving: the %s Redis cannot be used: %s: %s", where, type(exc).__name__, exc)
                logged = time.monotonic()
        if new != status:
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, new)
            if status is not None and new == health_pb2.HealthCheckResponse.SERVING:
                log.info("serving again: Redis is reachable")
            status = new
        await asyncio.sleep(every_s)


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    limit = settings.max_message_mb * 2**20
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
        # Bounded connection age so clients re-resolve and spread over new replicas (Kubernetes).
        ("grpc.max_connection_age_ms", 300_000), ("grpc.max_connection_age_grace_ms", 30_000),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a port shared with another server
    ])
    service, concerns = build(settings)
    server.add_generic_rpc_handlers((_handlers(service, concerns),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    for name in ("", SERVICE_NAME):  # ready only once Redis has answered (`_watch_health`)
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if settings.tls:
        certificates = tls.ReloadingCertificates(settings.tls_cert_file, settings.tls_key_file,
                                                 settings.tls_client_ca_file)
        port = server.add_secure_port(address, certificates.credentials())
    elif settings.tls_client_ca_file:
        raise ValueError("MASKSERVE_TLS_CLIENT_CA_FILE (mutual TLS) needs MASKSERVE_TLS_CERT_FILE and _KEY_FILE")
    else:
        port = server.add_insecure_port(address)
    servers = [server]
    if settings.health_port:  # kubelet's gRPC probes speak plaintext only: health, and nothing else, there
        probes = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probes)
        probes.add_insecure_port(f"{settings.grpc_host}:{settings.health_port}")
        servers.append(probes)
    web = await http.start(service, concerns, settings) if settings.http_port else None  # a port in use: stop here
    for s in servers:
        await s.start()
    tasks = [asyncio.create_task(service.embeddings.listen()), asyncio.create_task(_watch_health(service, health_servicer))]
    log.info("decoder: model %s on port %d%s (%s, authentication %s)", service.version, port,
             f", HTTP on {settings.http_port}" if web else "",
             "mutual TLS" if settings.tls_client_ca_file else "TLS" if settings.tls else "plaintext",
             "on" if settings.auth_file else "off")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("draining: in-flight RPCs get up to 20 s")
    await service.sessions.drain(lambda fn, *args: loop.run_in_executor(service.tracking_pool, fn, *args))
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if web is not None:
        await web.shutdown()
    await server.stop(grace=20)
    if web is not None:
        await web.cleanup()
    for s in servers[1:]:
        await s.stop(grace=None)
    for t in tasks:
        t.cancel()


def main(settings: Settings) -> None:
    logs.setup()
    allocator.reuse_large_blocks()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, "decoder", settings.metrics_host)
    tracing.setup("maskserve-decoder", settings.otlp_endpoint)
    try:
        asyncio.run(serve(settings))
    finally:
        tracing.shutdown()
