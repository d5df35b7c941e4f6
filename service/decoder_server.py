"""The decoder service: gRPC prompts answered from the shared embedding store.

Stateless: any replica answers any request. Each RPC handler below reads as its request's story; the parts
it tells live in their own modules: `embeddings` (find an embedding, or queue the image and wait for it),
`decoding` (prompts → masks on worker threads), `refinement` (earlier answers by handle), `failures` (what
each failure answers), `access` and `quotas` (who calls, and how much they may).

With an access file every call is authenticated first, then admitted by its tenant's quotas, and from there
on names images only inside its tenant's space (`jobs.ref`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from maskserve import engines
from maskserve.engines import automatic, prompts as prompt_lib

from . import (access, allocator, errors, everything, failures, images, jobs, logs, metrics, quotas, redis_clients,
               refinement, tls, tracing)
from .config import Settings
from .decoding import Decoding, to_prompt
from .embeddings import Embeddings
from .failures import ServiceError
from .proto import pb, pb_grpc
from .tracing import tracer

log = logging.getLogger("maskserve.decoder")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmenter"].full_name
# Health names: "" and SERVICE_NAME follow readiness (Redis reachable); LIVENESS only says the process runs,
# so a Redis outage makes pods unready instead of restarting them.
LIVENESS = "maskserve.v1.Liveness"


def _rpc(method):
    """Metrics and error mapping for a unary RPC: every failure leaves with a status and a message."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context):
        metrics.IN_FLIGHT.inc()
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never crashes the server
            code, status = failures.outcome(exc)
            await context.abort_with_status(status)
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.REQUEST_LATENCY.labels(name).observe(time.perf_counter() - start)
            failures.count(name, code)

    return wrapper


def _streaming_rpc(method):
    """`_rpc` for a server-streaming RPC, which also counts as one of its tenant's open streams."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self, request, context):
        metrics.IN_FLIGHT.inc()
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        close_stream = None
        try:
            caller = access.caller()
            close_stream = self.local_quotas.open_stream(caller)
            async for response in method(self, request, context):
                caller = self.recheck(context, name, caller)  # a revoked key ends the stream
                yield response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never crashes the server
            code, status = failures.outcome(exc)
            await context.abort_with_status(status)
        finally:
            if close_stream is not None:
                close_stream()
            metrics.IN_FLIGHT.dec()
            metrics.REQUEST_LATENCY.labels(name).observe(time.perf_counter() - start)
            failures.count(name, code)

    return wrapper


def _progress(stage: str, done: int, total: int) -> pb.SegmentEverythingResponse:
    return pb.SegmentEverythingResponse(progress=pb.EverythingProgress(stage=stage, done=done, total=total))


class Segmenter(pb_grpc.SegmenterServicer):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        model_dir = engines.resolve(settings.model_dir or None, settings.engine_cache)
        model = engines.load(model_dir, encoder=False, threads=settings.ort_threads or None)
        self.manifest = model.manifest
        self.version = self.manifest.model_version
        options = dict(socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
        self.redis = redis_clients.connect(settings, asyncio=True, **options)  # embeddings
        self.queue = redis_clients.connect(settings, queue=True, asyncio=True, **options) \
            if settings.queue_redis_url else self.redis
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        # Automatic mask generation runs for seconds: on threads of its own, so prompts are not queued behind it.
        self.everything_pool = ThreadPoolExecutor(settings.everything_concurrency, thread_name_prefix="everything")
        self.embeddings = Embeddings(settings, self.manifest, self.redis, self.queue, self.pool)
        self.decoding = Decoding(settings, model_dir, model)
        self.refinements = refinement.Refinements(self.queue, settings.logits_cache_entries)
        self.access = access.AccessFile(settings.auth_file, access.Limits.from_settings(settings)) \
            if settings.auth_file else None
        self.anonymous = access.Caller("", "anonymous", frozenset({"*"}), access.Limits.from_settings(settings))
        self.local_quotas = quotas.Local()
        metrics.WAITING_IMAGES.set_function(lambda: len(self.embeddings.waiters))
        metrics.LRU_ENTRIES.set_function(lambda: len(self.embeddings.lru.items))

    # -- who is calling ---------------------------------------------------------------------------------
    async def admit(self, context, rpc: str, rate: bool = True) -> None:
        """Authenticate the call, check its RPC is allowed and (with `rate`) take one request from its tenant's
        rate; the caller is then `access.caller()` for the rest of the call. A refusal is counted and aborts."""
        try:
            caller = self.anonymous
            if self.access is not None:
                caller = self.access.authenticate(context.invocation_metadata(), context.auth_context)
                if not caller.may(rpc):
                    access.CALLER.set(caller)
                    raise access.AccessError(True, f"{caller.name!r} (tenant {caller.tenant!r}) may not call {rpc}")
            access.CALLER.set(caller)
            if rate:
                self.local_quotas.admit(caller)
        except (access.AccessError, quotas.QuotaExceeded) as exc:
            code, status = failures.outcome(exc)
            failures.count(rpc, code)
            await context.abort_with_status(status)

    def recheck(self, context, rpc: str, caller: access.Caller) -> access.Caller:
        """A long call's credentials checked again, as the access file may have changed since it began: the
        caller now, or an AccessError that ends the call (a revoked key does not live on in an open stream)."""
        if self.access is None:
            return caller
        now = self.access.authenticate(context.invocation_metadata(), context.auth_context)
        if now.tenant != caller.tenant:
            raise access.AccessError(False, "the call's credentials now belong to another tenant; call again")
        if not now.may(rpc):
            raise access.AccessError(True, f"{now.name!r} (tenant {now.tenant!r}) may no longer call {rpc}")
        if now is not caller:
            access.CALLER.set(now)
        return now

    # -- RPCs -----------------------------------------------------------------------------------------
    @_rpc
    async def EncodeImage(self, request, context):
        image_id, ready, (h, w) = await self.embeddings.image_for(request.image, context, wait=request.wait)
        return pb.EncodeImageResponse(image_id=image_id, ready=ready, width=w, height=h, model_version=self.version)

    @_rpc
    async def SegmentPrompt(self, request, context):
        if request.WhichOneof("target") == "image":
            image_id, _, _ = await self.embeddings.image_for(request.image, context)
        elif request.image_id:
            image_id = request.image_id
        else:
            raise prompt_lib.PromptError("give an image_id from EncodeImage, or the image itself", "image_id")
        results = await self._segment(image_id, request.prompts, request.options)
        return pb.SegmentPromptResponse(image_id=image_id, results=results, model_version=self.version)

    @_rpc
    async def GetModelInfo(self, request, context):
        m = self.manifest
        return pb.ModelInfo(model_type=m.model_type, model_version=self.version, backend=m.backend,
                            image_size=m.image_size, low_res_side=m.mask_input_size,
                            max_points=self.settings.max_points, max_prompts=self.settings.max_prompts,
                            family=m.family)

    @_streaming_rpc
    async def SegmentEverything(self, request, context):
        """The image and its crops are encoded as images (through the queue and the store, with progress as
        each arrives); each crop's point grid is decoded on the generator's threads; the crops' masks are
        merged and sent in pages."""
        s = self.settings
        options = everything.options_from_proto(request.options).validate(
            s.everything_max_crop_layers, s.everything_max_points, family=self.manifest.family)
        image_id, size, crops = await self._everything_images(request, options)
        timings: dict[str, float] = {}
        async with contextlib.aclosing(self._encode_crops(crops, context, timings)) as encoding:
            async for progress in encoding:
                yield progress
        found = []
        async with contextlib.aclosing(self._decode_crops(crops, size, options, timings, found)) as decoding:
            async for progress in decoding:
                yield progress
        if options.min_mask_region_area and self.manifest.family == "sam":
            yield _progress("cleanup", 0, 1)
        result = await asyncio.get_running_loop().run_in_executor(
            self.everything_pool, automatic.finish, found, size, options, self.manifest.family, timings)
        for stage, seconds in timings.items():
            metrics.EVERYTHING_STAGE.labels(stage).observe(seconds)
        for page in everything.pages(result, image_id, self.version, timings):
            yield pb.SegmentEverythingResponse(masks=page)

    async def StreamSegment(self, request_iterator, context):
        """Frames, image_ids and prompts in order, each answered on its own message: a failure is reported on
        the message and the stream goes on; a prompt marked drop_if_stale is skipped when a newer one waits."""
        caller = access.caller()
        try:
            close_stream = self.local_quotas.open_stream(caller)
        except quotas.QuotaExceeded as exc:
            code, status = failures.outcome(exc)
            failures.count("StreamSegment", code)
            await context.abort_with_status(status)
        queue, reader = _read_ahead(request_iterator)
        current: str | None = None  # the image the stream's prompts are about
        metrics.IN_FLIGHT.inc()
        try:
            while (req := await queue.get()) is not None:
                start = time.perf_counter()
                try:
                    caller = self.recheck(context, "StreamSegment", caller)
                except access.AccessError as exc:  # ends the stream, not just this message
                    code, status = failures.outcome(exc)
                    failures.count("StreamSegment", code)
                    await context.abort_with_status(status)
                try:
                    response, current = await self._stream_message(req, queue, caller, current, context)
                    code = grpc.StatusCode.OK
                except Exception as exc:  # noqa: BLE001 - reported on the message, the stream goes on
                    code, error = failures.stream_error(exc)
                    response = pb.StreamSegmentResponse(sequence=req.sequence, error=error)
                yield response
                metrics.REQUEST_LATENCY.labels("StreamSegment").observe(time.perf_counter() - start)
                failures.count("StreamSegment", code)
        finally:
            metrics.IN_FLIGHT.dec()
            close_stream()
            reader.cancel()

    # -- the stories' parts ---------------------------------------------------------------------------
    async def _segment(self, image_id: str, proto_prompts, options) -> list:
        """Prompts on one stored image → PromptResults, each with the handle a later prompt refines it by."""
        if not proto_prompts:
            raise prompt_lib.PromptError("no prompts: give at least one prompt with a point or a box")
        if len(proto_prompts) > self.settings.max_prompts:
            raise prompt_lib.PromptError(f"{len(proto_prompts)} prompts in one call; at most "
                                         f"{self.settings.max_prompts} are allowed")
        ref, emb = await self.embeddings.require(image_id)
        budget = [refinement.MAX_REMAKE]  # decoder runs this call may spend making expired logits again
        prompts = [await self._prompt(ref, image_id, emb, i, p, budget) for i, p in enumerate(proto_prompts)]
        refining = any(p.HasField("mask_from") for p in proto_prompts)
        results, answers = await asyncio.get_running_loop().run_in_executor(  # in this call's context: its
            self.pool, contextvars.copy_context().run, self.decoding.answer, emb, prompts, options,  # spans nest
            options.return_low_res_logits or refining)
        for p, result, answer in zip(proto_prompts, results, answers):
            result.logits_handle = await self.refinements.handle(ref, image_id, p, options.single_mask)
            if p.HasField("mask_from"):  # an interactive loop: its next click will refine this answer
                self.refinements.keep(ref, result.logits_handle, answer.low_res_logits)
        return results

    async def _prompt(self, ref: str, image_id: str, emb, i: int, p: pb.Prompt, budget: list[int]) -> prompt_lib.Prompt:
        """A request's i-th prompt, its `mask_from` handle resolved to logits; errors name prompts[i]."""
        try:
            prompt = to_prompt(p)
            if p.HasField("mask_from"):
                if p.HasField("mask_input"):
                    raise prompt_lib.PromptError("give a prompt mask_input or mask_from, not both", "mask_from")

                def make(recipe_prompt, multimask):
                    return asyncio.get_running_loop().run_in_executor(
                        self.pool, self.decoding.logits, emb, recipe_prompt, multimask)
                prompt.mask_input = await self.refinements.resolve(ref, image_id, p.mask_from, make, to_prompt,
                                                                   budget)
            return prompt
        except prompt_lib.PromptError as exc:
            exc.field = f"prompts[{i}]" + (f".{exc.field}" if exc.field else "")
            raise

    async def _stream_message(self, req, queue: asyncio.Queue, caller, current: str | None, context):
        """One StreamSegment message's answer, and the image the stream is about after it."""
        item = req.WhichOneof("item")
        if item == "prompt" and req.drop_if_stale:
            if any(r is not None and r.WhichOneof("item") == "prompt" for r in queue._queue):
                return pb.StreamSegmentResponse(sequence=req.sequence, dropped=True), current
        self.local_quotas.admit(caller)  # every message that does work is a request for the rate
        if item == "frame":
            current, _, _ = await self.embeddings.image_for(req.frame, context)
            return pb.StreamSegmentResponse(sequence=req.sequence, image_id=current), current
        if item == "image_id":
            if not await self.embeddings.renew(self.embeddings.ref(req.image_id)):
                raise failures.unknown_image(req.image_id)
            return pb.StreamSegmentResponse(sequence=req.sequence, image_id=req.image_id), req.image_id
        if item == "prompt":
            if current is None:
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, "send a frame or an image_id before prompts",
                                   "NO_IMAGE_YET")
            (result,) = await self._segment(current, [req.prompt], req.options)
            return pb.StreamSegmentResponse(sequence=req.sequence, result=result), current
        raise prompt_lib.PromptError("empty stream message: set frame, image_id or prompt")

    async def _everything_images(self, request, options: automatic.Options):
        """(image_id, original size, [(crop box, layer, crop's ref, its payload)]) for a request; a crop is an
        image like any other: content-addressed, queued, cached."""
        target = request.WhichOneof("target")
        if target == "image_id":
            if options.crop_n_layers:
                raise automatic.ParameterError("crop_n_layers", "crops are cut from the image's pixels: send the "
                                               "image itself, not its image_id")
            ref, emb = await self.embeddings.require(request.image_id)
            h, w = emb.original_size
            return request.image_id, (h, w), [([0, 0, w, h], 0, ref, None)]
        if target != "image":
            raise prompt_lib.PromptError("give an image_id from EncodeImage, or the image itself", "image_id")
        payload = images.canonical_payload(request.image)
        rgb = await self.embeddings.decoded(payload)
        tenant = access.caller().tenant
        image_id = images.image_id(payload, self.version, tenant)
        crops = []
        for box, layer in automatic.crop_boxes(rgb.shape[:2], options.crop_n_layers, options.crop_overlap_ratio):
            if layer == 0:
                crops.append((box, 0, jobs.ref(tenant, image_id), payload))
            else:
                crop_payload = images.rgb_payload(rgb[box[1]:box[3], box[0]:box[2]])
                crops.append((box, layer, jobs.ref(tenant, images.image_id(crop_payload, self.version, tenant)),
                              crop_payload))
        return image_id, rgb.shape[:2], crops

    async def _encode_crops(self, crops, context, timings: dict):
        """Queue the crops the store lacks and wait for all; progress as each embedding arrives."""
        t = time.perf_counter()
        missing = [(ref, p) for _, _, ref, p in crops if p is not None and not await self.embeddings.renew(ref)]
        yield _progress("encoding", len(crops) - len(missing), len(crops))
        for ref, p in missing:
            await self.embeddings.enqueue(ref, p)
        waits = [asyncio.ensure_future(self.embeddings.wait_encoded(ref, p, context)) for ref, p in missing]
        try:
            for i, done in enumerate(asyncio.as_completed(waits)):
                await done
                yield _progress("encoding", len(crops) - len(missing) + i + 1, len(crops))
        finally:
            for w in waits:
                w.cancel()
        timings["encode"] = time.perf_counter() - t

    async def _decode_crops(self, crops, size, options: automatic.Options, timings: dict, found: list):
        """Each crop's point grid on the generator's threads, into `found`; progress four times a second. A
        cancelled call stops its decoder work at the next batch."""
        grids = options.layer_grids()
        total = sum(len(grids[layer]) for _, layer, _, _ in crops)
        progress = [0]
        cancel = threading.Event()

        def advance(n: int) -> None:
            progress[0] += n
            metrics.EVERYTHING_POINTS.inc(n)

        loop = asyncio.get_running_loop()
        try:
            for box, layer, ref, _ in crops:
                emb = await self.embeddings.get(ref)
                if emb is None:
                    raise ServiceError(grpc.StatusCode.UNAVAILABLE, "a crop's embedding left the store before it "
                                       "was decoded (the store is short of memory); retry", "EMBEDDING_EVICTED",
                                       errors.retry_info(5.0))
                work = loop.run_in_executor(self.everything_pool, self.decoding.everything_crop, emb, box,
                                            grids[layer], size, options, cancel, advance, timings)
                work.add_done_callback(lambda f: f.cancelled() or f.exception())  # a cancelled call's is dropped
                while True:
                    finished, _ = await asyncio.wait({work}, timeout=0.25)
                    yield _progress("decoding", progress[0], total)
                    if finished:
                        break
                found.append(work.result())
        finally:
            cancel.set()


def _read_ahead(request_iterator) -> tuple[asyncio.Queue, asyncio.Task]:
    """A stream's requests read into a queue as they arrive, so a prompt can see whether newer ones wait
    behind it; None marks the end."""
    queue: asyncio.Queue = asyncio.Queue()

    async def read():
        try:
            async for req in request_iterator:
                await queue.put(req)
        finally:
            await queue.put(None)
    return queue, asyncio.create_task(read())


def _handlers(servicer: Segmenter) -> grpc.GenericRpcHandler:
    """The Segmenter's methods with requests parsed here rather than by gRPC, whose own deserializer answers
    malformed protobuf bytes with UNKNOWN: here they are INVALID_ARGUMENT, like any other bad input."""
    from google.protobuf.message import DecodeError

    def parser(cls):
        async def parse(raw: bytes, context):
            try:
                return cls.FromString(raw)
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"the request is not a valid {cls.DESCRIPTOR.full_name} (malformed protobuf)")
        return parse

    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["Segmenter"].methods:
        parse, impl = parser(getattr(pb, method.input_type.name)), getattr(servicer, method.name)
        serialize = getattr(pb, method.output_type.name).SerializeToString
        rpc = method.name
        if method.client_streaming:  # each message of the stream is a request for the rate (see StreamSegment)
            async def handler(raw_requests, context, parse=parse, impl=impl, rpc=rpc):
                with _server_span(context, rpc):
                    await servicer.admit(context, rpc, rate=False)
                    async def requests():
                        async for raw in raw_requests:
                            yield await parse(raw, context)
                    async for response in impl(requests(), context):
                        yield response
            handlers[rpc] = grpc.stream_stream_rpc_method_handler(handler, response_serializer=serialize)
        elif method.server_streaming:
            async def handler(raw, context, parse=parse, impl=impl, rpc=rpc):
                with _server_span(context, rpc):
                    await servicer.admit(context, rpc)
                    async for response in impl(await parse(raw, context), context):
                        yield response
            handlers[rpc] = grpc.unary_stream_rpc_method_handler(handler, response_serializer=serialize)
        else:
            async def handler(raw, context, parse=parse, impl=impl, rpc=rpc):
                with _server_span(context, rpc):
                    await servicer.admit(context, rpc)
                    return await impl(await parse(raw, context), context)
            handlers[rpc] = grpc.unary_unary_rpc_method_handler(handler, response_serializer=serialize)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _server_span(context, rpc: str):
    """The call's span, a child of the caller's (`traceparent` metadata) when it sent one."""
    return tracer.start_as_current_span(f"{SERVICE_NAME}/{rpc}", context=tracing.from_metadata(
        context.invocation_metadata()), kind=tracing.SERVER, attributes={"rpc.system": "grpc", "rpc.method": rpc})


async def _watch_health(segmenter: Segmenter, health_servicer, every_s: float = 1.0) -> None:
    """Readiness follows Redis: NOT_SERVING while the store is unreachable, SERVING when it is back. The cause
    (refused connection, wrong password, ...) is logged when it starts and once a minute while it lasts."""
    status, logged = None, 0.0
    while True:
        try:
            for name, client in (("cache", segmenter.redis), ("queue", segmenter.queue)):
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
    segmenter = Segmenter(settings)
    server.add_generic_rpc_handlers((_handlers(segmenter),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
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
    for s in servers:
        await s.start()
    tasks = [asyncio.create_task(segmenter.embeddings.listen()), asyncio.create_task(_watch_health(segmenter, health_servicer))]
    log.info("decoder: model %s on port %d (%s, authentication %s)", segmenter.version, port,
             "mutual TLS" if settings.tls_client_ca_file else "TLS" if settings.tls else "plaintext",
             "on" if segmenter.access else "off")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("draining: in-flight RPCs get up to 20 s")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=20)
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
