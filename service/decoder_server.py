"""The decoder service: gRPC prompts answered from the shared embedding store.

Stateless: any replica answers any request. Embeddings come from a bounded in-process LRU, else Redis;
an image not yet encoded is queued for the encoder pool and waited for within the call's deadline.
Decoder runs and mask encoding happen on a small thread pool so the event loop stays responsive.

With an access file every call is authenticated first (`access`), then admitted by its tenant's quotas
(`quotas`), and from there on names images only inside its tenant's space (`jobs.ref`).
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

import cv2
import grpc
import numpy as np
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from maskserve import engines
from maskserve.engines import automatic, masks, prompts as prompt_lib

from . import (access, allocator, errors, everything, images, jobs, metrics, quotas, redis_clients, refinement,
               store, tls, tracing)
from .tracing import tracer
from .config import Settings
from .proto import pb, pb_grpc

log = logging.getLogger("maskserve.decoder")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmenter"].full_name
# Health names: "" and SERVICE_NAME follow readiness (Redis reachable); LIVENESS only says the process runs,
# so a Redis outage makes pods unready instead of restarting them.
LIVENESS = "maskserve.v1.Liveness"


class ServiceError(Exception):
    """A status with its message, a stable reason (google.rpc.ErrorInfo) and any other details."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str, *details) -> None:
        super().__init__(message)
        self.code, self.reason, self.details = code, reason, list(details)


def _unknown_image(image_id: str, why: str = "unknown, or expired from the store") -> ServiceError:
    message = f"no embedding for image_id {image_id!r} ({why}); send the image with EncodeImage again"
    return ServiceError(grpc.StatusCode.NOT_FOUND, message, "IMAGE_NOT_FOUND",
                        errors.resource_info("maskserve.v1.Embedding", image_id, message))


def _explain(exc: BaseException) -> tuple[grpc.StatusCode, str, list]:
    """(status, message, google.rpc details) for any failure: every status comes with an ErrorInfo (a stable
    reason a program can switch on), bad input with the field, waits with how long."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc), [errors.error_info(exc.reason), *exc.details]
    if isinstance(exc, quotas.QuotaExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), [
            errors.error_info(f"QUOTA_{exc.reason.upper()}", tenant=access.caller().tenant),
            errors.retry_info(exc.retry_after_s)]
    if isinstance(exc, access.AccessError):
        if exc.denied:
            return grpc.StatusCode.PERMISSION_DENIED, str(exc), [errors.error_info("RPC_NOT_ALLOWED")]
        return grpc.StatusCode.UNAUTHENTICATED, str(exc), [errors.error_info("UNAUTHENTICATED")]
    if isinstance(exc, prompt_lib.PromptError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), [
            errors.error_info("INVALID_PROMPT"), errors.bad_request(exc.field or "prompts", str(exc))]
    if isinstance(exc, images.ImageError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), [
            errors.error_info("INVALID_IMAGE"), errors.bad_request("image", str(exc))]
    if isinstance(exc, automatic.ParameterError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), [
            errors.error_info("INVALID_PARAMETER"), errors.bad_request(f"options.{exc.parameter}", str(exc))]
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ConnectionError)):
        return grpc.StatusCode.UNAVAILABLE, "the embedding store (Redis) is unavailable; retry shortly", [
            errors.error_info("STORE_UNAVAILABLE"), errors.retry_info(1.0)]
    if isinstance(exc, redis.ResponseError) and ("maxmemory" in str(exc) or str(exc).startswith("OOM")):
        # a `noeviction` Redis at its memory limit refuses writes: back off, like a full queue
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "the job queue's Redis is out of memory; retry later", [
            errors.error_info("QUEUE_OUT_OF_MEMORY"), errors.retry_info(5.0)]
    if isinstance(exc, refinement.HandleExpired):
        return grpc.StatusCode.NOT_FOUND, str(exc), [errors.error_info("HANDLE_EXPIRED")]
    if isinstance(exc, asyncio.TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the image was encoded", [
            errors.error_info("NOT_ENCODED_IN_TIME")]
    log.exception("unexpected error")
    return grpc.StatusCode.INTERNAL, f"internal error: {exc.__class__.__name__}: {exc}", [
        errors.error_info("INTERNAL")]


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    code, message, _ = _explain(exc)
    return code, message


async def _abort(context, exc: BaseException):
    await context.abort_with_status(errors.status(*_explain(exc)))


def _count(rpc: str, code: grpc.StatusCode) -> None:
    metrics.REQUESTS.labels(rpc, code.name, _tenant()).inc()


def _tenant() -> str:
    return access.caller().tenant


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
            code, _ = _status_of(exc)
            Segmenter.refused(exc)
            await _abort(context, exc)
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.REQUEST_LATENCY.labels(name).observe(time.perf_counter() - start)
            _count(name, code)

    return wrapper


def _to_prompt(p) -> prompt_lib.Prompt:
    coords = labels = box = mask = None
    if p.points:
        coords = np.array([[q.x, q.y] for q in p.points], np.float64)
        labels = np.array([q.label for q in p.points], np.int64)
    if p.HasField("box"):
        box = np.array([p.box.x0, p.box.y0, p.box.x1, p.box.y1], np.float64)
    if p.HasField("mask_input"):
        side = p.mask_input.side
        if len(p.mask_input.data) != 4 * side * side:
            raise prompt_lib.PromptError(f"mask_input holds {len(p.mask_input.data)} bytes; a {side}x{side} "
                                     f"float32 grid is {4 * side * side}", "mask_input")
        mask = np.frombuffer(p.mask_input.data, "<f4").reshape(1, side, side)
    return prompt_lib.Prompt(coords, labels, box, mask)


class Segmenter(pb_grpc.SegmenterServicer):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        model_dir = engines.resolve(settings.model_dir or None, settings.engine_cache)
        self.model = engines.load(model_dir, encoder=False, threads=settings.ort_threads or None)
        self.manifest = self.model.manifest
        # ONNX Runtime: a decode that starts while another runs gets one thread instead of all of them. Runs
        # side by side on one core each do more work than runs contending for every core (on 2 cores with 4
        # clients: about 1.5x the throughput), and a lone request still gets every core.
        self.narrow_decoder = None
        if self.manifest.backend == "onnxruntime" and settings.decode_threads > 1 and settings.ort_threads != 1:
            self.narrow_decoder = engines.load(model_dir, encoder=False, threads=1).decoder
        self.decoding = 0
        self.decoding_lock = threading.Lock()
        self.version = self.manifest.model_version
        options = dict(socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
        self.redis = redis_clients.connect(settings, asyncio=True, **options)  # embeddings
        self.queue = redis_clients.connect(settings, queue=True, asyncio=True, **options) \
            if settings.queue_redis_url else self.redis
        self.stream = settings.stream(self.version)
        self.producer = jobs.Producer(self.queue, self.stream, self.version, settings.max_queue)
        self.lru = store.LRU(settings.lru_entries)
        self.access = access.AccessFile(settings.auth_file, access.Limits.from_settings(settings)) \
            if settings.auth_file else None
        self.anonymous = access.Caller("", "anonymous", frozenset({"*"}), access.Limits.from_settings(settings))
        self.local_quotas = quotas.Local()
        embedding_bytes = int(np.prod(self.manifest.embedding_shape)) * np.dtype(settings.embedding_dtype).itemsize
        self.shared_quotas = quotas.Shared(self.queue, self.version, embedding_bytes)
        self.refinements = refinement.Refinements(self.redis, self.version, settings.logits_ttl_s,
                                                  settings.logits_cache_entries)
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        # Automatic mask generation runs for seconds: on threads of its own, so prompts are not queued behind it.
        self.everything_pool = ThreadPoolExecutor(settings.everything_concurrency, thread_name_prefix="everything")
        self.waiters: dict[str, set[asyncio.Event]] = {}  # image ref → the events of the calls waiting for it
        self.renewing: set[asyncio.Task] = set()
        metrics.WAITING_IMAGES.set_function(lambda: len(self.waiters))
        metrics.LRU_ENTRIES.set_function(lambda: len(self.lru.items))

    # -- embeddings -----------------------------------------------------------------------------------
    def _ref(self, image_id: str) -> str:
        """The caller's name for an image in Redis (see jobs.ref). An id that is not one of ours is refused like an
        unknown one, so that no string can step outside the caller's space."""
        if not images.IMAGE_ID.fullmatch(image_id):
            raise _unknown_image(image_id, "not an image_id that EncodeImage returns")
        return jobs.ref(access.caller().tenant, image_id)

    async def _embedding(self, ref: str) -> store.Embedding | None:
        """The embedding from this process's LRU, else from Redis. Every use renews its TTL in Redis (a sliding
        lifetime: an image in use does not expire), and an LRU entry whose Redis key is gone is dropped, so
        this process never holds on to what the store has lost."""
        k = store.key(self.version, ref)
        found = self.lru.get(k)
        if found is not None:
            metrics.CACHE.labels("hit").inc()
            task = asyncio.create_task(self._renew(ref))  # off the request's path
            self.renewing.add(task)
            task.add_done_callback(self.renewing.discard)
            return found
        start = time.perf_counter()
        with tracer.start_as_current_span("embedding_fetch"):
            blob = await self.redis.getex(k, ex=self.settings.embedding_ttl_s)
        if blob is None:
            metrics.CACHE.labels("miss").inc()
            return None
        await self._renew_held(ref)
        found = store.unpack(blob)
        metrics.STAGE.labels("embedding_fetch").observe(time.perf_counter() - start)
        metrics.CACHE.labels("redis").inc()
        self.lru.put(k, found, owner=jobs.tenant_of(ref))
        return found

    async def _renew(self, ref: str) -> bool:
        """Renew an embedding's TTL; False (and out of the LRU) when the store no longer has it."""
        k = store.key(self.version, ref)
        try:
            if await self.redis.expire(k, self.settings.embedding_ttl_s):
                await self._renew_held(ref)
                return True
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError):
            return False  # unknown while Redis is away: keep serving from the LRU
        self.lru.discard(k)
        return False

    async def _renew_held(self, ref: str) -> None:
        """A tenant with an embedding quota holds an embedding as long as its TTL runs."""
        tenant = jobs.tenant_of(ref)
        if tenant and access.caller().limits.embedding_mb:
            async with self.queue.pipeline(transaction=False) as pipe:
                jobs.hold(pipe, self.version, tenant, ref, time.time() + self.settings.embedding_ttl_s, renew=True)
                await pipe.execute()

    async def _enqueue(self, ref: str, payload: bytes) -> None:
        """Queue the image for the encoder pool (or share the job its tenant has queued), within the quotas."""
        caller = access.caller()
        try:
            with tracer.start_as_current_span("enqueue"):  # the job carries this span's context to the encoder
                await self.producer.enqueue(ref, payload, admit=lambda r: self.shared_quotas.admit_job(caller, r),
                                            trace=tracing.carrier())
        except jobs.QueueFull as exc:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), "QUEUE_FULL",
                               errors.retry_info(1.0)) from None

    async def _wait_encoded(self, ref: str, payload: bytes, context) -> None:
        """Until the embedding is stored, the job is dead-lettered (error) or the deadline passes. Each call
        registers its own wake-up event and removes it when it ends: no bookkeeping outlives a call."""
        image_id = ref.rpartition("/")[2]
        event = asyncio.Event()
        try:
            while True:
                event.clear()
                self.waiters.setdefault(ref, set()).add(event)
                if await self.redis.exists(store.key(self.version, ref)):
                    return
                error, pending = await self.producer.state(ref)
                if await self.redis.exists(store.key(self.version, ref)):  # finished meanwhile
                    return
                if error is not None:
                    raise ServiceError(grpc.StatusCode.INTERNAL,
                                       f"the encoder could not encode image {image_id}: {error}", "ENCODE_FAILED")
                if not pending:  # the job was lost (e.g. Redis restarted empty): queue it again
                    await self._enqueue(ref, payload)
                remaining = context.time_remaining() if context is not None else None
                if remaining is not None and remaining <= 0.01:
                    raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       f"image {image_id} was not encoded before the deadline; it stays queued",
                                       "NOT_ENCODED_IN_TIME")
                try:
                    await asyncio.wait_for(event.wait(), timeout=min(0.25, remaining or 0.25))
                except asyncio.TimeoutError:
                    pass
        finally:
            waiting = self.waiters.get(ref)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self.waiters[ref]

    async def _listen(self) -> None:
        """Wake waiters when the encoder pool announces an embedding; reconnects after Redis outages."""
        while True:
            try:
                pubsub = self.queue.pubsub()
                await pubsub.subscribe(jobs.done_channel(self.version))
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        for event in self.waiters.pop(message["data"].decode(), ()):
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the waiters poll meanwhile
                await asyncio.sleep(0.5)

    async def _image_for(self, image, context, wait: bool = True) -> tuple[str, bool, tuple[int, int]]:
        """(image_id, in the store, (H, W)); `ready` is true only when Redis holds the embedding now."""
        payload = images.canonical_payload(image)
        tenant = access.caller().tenant
        image_id = images.image_id(payload, self.version, tenant)
        ref = jobs.ref(tenant, image_id)
        if await self._renew(ref):
            emb = self.lru.get(store.key(self.version, ref))
            return image_id, True, emb.original_size if emb is not None else images.image_size(payload)
        # A new image: decode it fully here, so a bad one is refused now and never reaches the queue.
        rgb = await asyncio.get_running_loop().run_in_executor(
            self.pool, images.decode_payload, payload, self.settings.max_image_pixels)
        images.check_fits(*rgb.shape[:2], self.manifest.image_size)
        await self._enqueue(ref, payload)
        if wait:
            with tracer.start_as_current_span("wait_for_encoder"):
                await self._wait_encoded(ref, payload, context)
        return image_id, wait, rgb.shape[:2]

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
            self.refused(exc)
            _count(rpc, _status_of(exc)[0])
            await _abort(context, exc)

    @staticmethod
    def refused(exc: BaseException) -> None:
        if isinstance(exc, quotas.QuotaExceeded):
            reason = exc.reason
        elif isinstance(exc, access.AccessError):
            reason = "permission_denied" if exc.denied else "unauthenticated"
        else:
            return
        metrics.REJECTED.labels(_tenant(), reason).inc()

    # -- decoding -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _decoder(self):
        """The decoder for a run: all threads when it runs alone, one when another run is under way."""
        with self.decoding_lock:
            decoder = self.narrow_decoder if self.decoding and self.narrow_decoder else self.model.decoder
            self.decoding += 1
        try:
            yield decoder
        finally:
            with self.decoding_lock:
                self.decoding -= 1

    def _answer(self, emb: store.Embedding, prompts: list, options, full_logits: bool) -> tuple[list, list]:
        with self._decoder() as decoder, tracer.start_as_current_span("decode", attributes={"prompts": len(prompts)}):
            start = time.perf_counter()
            answers = self._decode(decoder, emb, prompts, not options.single_mask, full_logits)
            metrics.STAGE.labels("decode").observe(time.perf_counter() - start)
        with tracer.start_as_current_span("postprocess"):
            start = time.perf_counter()
            results = [self._result(a, emb.original_size, options) for a in answers]
            metrics.STAGE.labels("postprocess").observe(time.perf_counter() - start)
        return results, answers

    def _decode(self, decoder, emb: store.Embedding, prompts: list, multimask: bool, full_logits: bool) -> list:
        if emb.decoder_features is None:  # first prompt on this image in this process
            emb.decoder_features = decoder.prepare(emb.array)
        return prompt_lib.decode(decoder, self.manifest, emb.array, emb.original_size, prompts,
                                 multimask_output=multimask, max_points=self.settings.max_points,
                                 features=emb.decoder_features, full_logits=full_logits)

    def _make_logits(self, emb: store.Embedding, prompt, multimask: bool) -> np.ndarray:
        """An earlier answer's low-res logits made again, whole, for a prompt that refines it by handle."""
        with self._decoder() as decoder:
            return self._decode(decoder, emb, [prompt], multimask, True)[0].low_res_logits

    def _result(self, answer: prompt_lib.Answer, original_size, options) -> pb.PromptResult:
        keep = range(len(answer.iou_predictions))
        if options.best_mask_only:
            keep = [int(np.argmax(answer.iou_predictions))]
        h, w = original_size
        result = pb.PromptResult()
        fmt = options.mask_format
        # COCO RLE is column-major: it is made in the transposed frame (W, H), where its runs are contiguous;
        # packed bits and PNG are row-major, made in the image's frame. One mask at a time: its full-size maps
        # are still in cache from the upscale to the encoding.
        transposed = fmt in (pb.MASK_FORMAT_UNSPECIFIED, pb.MASK_FORMAT_COCO_RLE)
        for k in keep:
            low = answer.low_res_logits[k]
            if transposed:
                full = prompt_lib.full_resolution_map(cv2.transpose(low), self.manifest, (w, h))
            else:
                full = prompt_lib.full_resolution_map(low, self.manifest, (h, w))
            binary = full > 0.0
            x, y, bw, bh = masks.bbox_xywh(binary)
            if transposed:
                x, y, bw, bh = y, x, bh, bw
            m = result.masks.add(width=w, height=h, predicted_iou=float(answer.iou_predictions[k]),
                                 stability_score=masks.stability_score(full), area=int(np.count_nonzero(binary)),
                                 output_index=k)
            m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height = x, y, bw, bh
            if transposed:
                m.rle.counts = masks.encode_rle_transposed(binary)
            elif fmt == pb.MASK_FORMAT_PNG:
                m.png = masks.encode_png(binary)
            elif fmt == pb.MASK_FORMAT_BITMAP:
                m.bitmap = masks.encode_bitmap(binary)
            if options.return_low_res_logits:
                side = answer.low_res_logits.shape[-1]
                m.low_res_logits.side = side
                m.low_res_logits.data = answer.low_res_logits[k].astype("<f4").tobytes()
        return result

    async def _segment(self, image_id: str, proto_prompts, options) -> list:
        if not proto_prompts:
            raise prompt_lib.PromptError("no prompts: give at least one prompt with a point or a box")
        if len(proto_prompts) > self.settings.max_prompts:
            raise prompt_lib.PromptError(f"{len(proto_prompts)} prompts in one call; at most "
                                         f"{self.settings.max_prompts} are allowed")
        ref = self._ref(image_id)
        emb = await self._embedding(ref)
        if emb is None:
            raise _unknown_image(image_id)
        loop = asyncio.get_running_loop()

        def make(prompt, multimask):
            return loop.run_in_executor(self.pool, self._make_logits, emb, prompt, multimask)

        prompts, refining = [], False
        for i, p in enumerate(proto_prompts):
            try:
                prompt = _to_prompt(p)
                if p.HasField("mask_from"):
                    if p.HasField("mask_input"):
                        raise prompt_lib.PromptError("give a prompt mask_input or mask_from, not both", "mask_from")
                    prompt.mask_input = await self.refinements.resolve(ref, image_id, p.mask_from, make, _to_prompt)
                    refining = True
            except prompt_lib.PromptError as exc:
                exc.field = f"prompts[{i}]" + (f".{exc.field}" if exc.field else "")
                raise
            prompts.append(prompt)
        results, answers = await loop.run_in_executor(  # in this call's context: its spans nest under the RPC's
            self.pool, contextvars.copy_context().run, self._answer, emb, prompts, options,
            options.return_low_res_logits or refining)
        for p, result, answer in zip(proto_prompts, results, answers):
            result.logits_handle = refinement.handle(image_id, p, options.single_mask)
            if p.HasField("mask_from"):  # an interactive loop: its next click will refine this answer
                await self.refinements.keep(ref, result.logits_handle, answer.low_res_logits)
        return results

    # -- RPCs -----------------------------------------------------------------------------------------
    @_rpc
    async def EncodeImage(self, request, context):
        image_id, ready, (h, w) = await self._image_for(request.image, context, wait=request.wait)
        return pb.EncodeImageResponse(image_id=image_id, ready=ready, width=w, height=h, model_version=self.version)

    @_rpc
    async def SegmentPrompt(self, request, context):
        if request.WhichOneof("target") == "image":
            image_id, _, _ = await self._image_for(request.image, context)
        elif request.image_id:
            image_id = request.image_id
        else:
            raise prompt_lib.PromptError("give an image_id from EncodeImage, or the image itself", "image_id")
        results = await self._segment(image_id, request.prompts, request.options)
        return pb.SegmentPromptResponse(image_id=image_id, results=results, model_version=self.version)

    # -- automatic mask generation -------------------------------------------------------------------
    async def _everything_images(self, request, options: automatic.Options):
        """(image_id, original size, [(crop box, layer, crop's ref, its payload)]) for a request."""
        target = request.WhichOneof("target")
        if target == "image_id":
            if options.crop_n_layers:
                raise automatic.ParameterError("crop_n_layers", "crops are cut from the image's pixels: send the "
                                               "image itself, not its image_id")
            emb = await self._embedding(self._ref(request.image_id))
            if emb is None:
                raise _unknown_image(request.image_id)
            h, w = emb.original_size
            return request.image_id, (h, w), [([0, 0, w, h], 0, self._ref(request.image_id), None)]
        if target != "image":
            raise prompt_lib.PromptError("give an image_id from EncodeImage, or the image itself", "image_id")
        payload = images.canonical_payload(request.image)
        rgb = await asyncio.get_running_loop().run_in_executor(
            self.pool, images.decode_payload, payload, self.settings.max_image_pixels)
        images.check_fits(*rgb.shape[:2], self.manifest.image_size)
        tenant = access.caller().tenant
        image_id = images.image_id(payload, self.version, tenant)
        crops = []  # (box, layer, the crop's ref, its payload)
        for box, layer in automatic.crop_boxes(rgb.shape[:2], options.crop_n_layers, options.crop_overlap_ratio):
            if layer == 0:
                crops.append((box, 0, jobs.ref(tenant, image_id), payload))
            else:  # a crop is an image like any other: content-addressed, queued, cached
                crop_payload = images.rgb_payload(rgb[box[1]:box[3], box[0]:box[2]])
                crop_id = images.image_id(crop_payload, self.version, tenant)
                crops.append((box, layer, jobs.ref(tenant, crop_id), crop_payload))
        return image_id, rgb.shape[:2], crops

    async def SegmentEverything(self, request, context):
        metrics.IN_FLIGHT.inc()
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        cancel = threading.Event()
        close_stream = None
        try:
            close_stream = self.local_quotas.open_stream(access.caller())
            s = self.settings
            options = everything.options_from_proto(request.options).validate(
                s.everything_max_crop_layers, s.everything_max_points)
            image_id, size, crops = await self._everything_images(request, options)
            timings: dict[str, float] = {}
            t = time.perf_counter()
            missing = [(cid, p) for _, _, cid, p in crops
                       if p is not None and not await self._renew(cid)]
            yield pb.SegmentEverythingResponse(progress=pb.EverythingProgress(
                stage="encoding", done=len(crops) - len(missing), total=len(crops)))
            for cid, p in missing:
                await self._enqueue(cid, p)
            waits = [asyncio.ensure_future(self._wait_encoded(cid, p, context)) for cid, p in missing]
            try:
                for i, done in enumerate(asyncio.as_completed(waits)):
                    await done
                    yield pb.SegmentEverythingResponse(progress=pb.EverythingProgress(
                        stage="encoding", done=len(crops) - len(missing) + i + 1, total=len(crops)))
            finally:
                for w in waits:
                    w.cancel()
            timings["encode"] = time.perf_counter() - t
            grids = options.layer_grids()
            total = sum(len(grids[layer]) for _, layer, _, _ in crops)
            progress = [0]

            def advance(n: int) -> None:
                progress[0] += n
                metrics.EVERYTHING_POINTS.inc(n)

            loop = asyncio.get_running_loop()
            found = []
            for box, layer, cid, _ in crops:
                emb = await self._embedding(cid)
                if emb is None:
                    raise ServiceError(grpc.StatusCode.UNAVAILABLE, "a crop's embedding left the store before it was "
                                       "decoded (the store is short of memory); retry", "EMBEDDING_EVICTED",
                                       errors.retry_info(5.0))
                work = loop.run_in_executor(self.everything_pool, self._everything_crop, emb, box, grids[layer],
                                            size, options, cancel, advance, timings)
                work.add_done_callback(lambda f: f.cancelled() or f.exception())  # a cancelled call's is dropped
                while True:
                    finished, _ = await asyncio.wait({work}, timeout=0.25)
                    yield pb.SegmentEverythingResponse(progress=pb.EverythingProgress(
                        stage="decoding", done=progress[0], total=total))
                    if finished:
                        break
                found.append(work.result())
            if options.min_mask_region_area:
                yield pb.SegmentEverythingResponse(progress=pb.EverythingProgress(stage="cleanup", done=0, total=1))
            result = await loop.run_in_executor(self.everything_pool, self._everything_merge, found, size,
                                                options, timings)
            for stage, seconds in timings.items():
                metrics.EVERYTHING_STAGE.labels(stage).observe(seconds)
            for page in everything.pages(result, image_id, self.version, timings):
                yield pb.SegmentEverythingResponse(masks=page)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never crashes the server
            code, _ = _status_of(exc)
            self.refused(exc)
            await _abort(context, exc)
        finally:
            cancel.set()  # a cancelled call stops its decoder work at the next batch
            if close_stream is not None:
                close_stream()
            metrics.IN_FLIGHT.dec()
            metrics.REQUEST_LATENCY.labels("SegmentEverything").observe(time.perf_counter() - start)
            _count("SegmentEverything", code)

    def _everything_crop(self, emb, box, grid, size, options, cancel, advance, timings):
        with self._decoder() as decoder:
            if emb.decoder_features is None:
                emb.decoder_features = decoder.prepare(emb.array)
            return automatic.process_crop(decoder, self.manifest, emb.array, emb.decoder_features, box, grid, size,
                                          options, cancel=cancel, progress=advance, timings=timings)

    @staticmethod
    def _everything_merge(found, size, options, timings):
        t = time.perf_counter()
        result = automatic.merge_crops(found, size, options)
        timings["crop_merge"] = time.perf_counter() - t
        if options.min_mask_region_area > 0:
            t = time.perf_counter()
            result = automatic.clean_up(result, options.min_mask_region_area,
                                        max(options.box_nms_thresh, options.crop_nms_thresh))
            timings["cleanup"] = time.perf_counter() - t
        return result

    @_rpc
    async def GetModelInfo(self, request, context):
        m = self.manifest
        return pb.ModelInfo(model_type=m.model_type, model_version=self.version, backend=m.backend,
                            image_size=m.image_size, low_res_side=m.mask_input_size,
                            max_points=self.settings.max_points, max_prompts=self.settings.max_prompts)

    async def StreamSegment(self, request_iterator, context):
        """Requests are read ahead into a queue so a prompt can see whether newer ones wait behind it."""
        queue: asyncio.Queue = asyncio.Queue()

        async def read():
            try:
                async for req in request_iterator:
                    await queue.put(req)
            finally:
                await queue.put(None)

        caller = access.caller()
        try:
            close_stream = self.local_quotas.open_stream(caller)
        except quotas.QuotaExceeded as exc:
            self.refused(exc)
            _count("StreamSegment", grpc.StatusCode.RESOURCE_EXHAUSTED)
            await _abort(context, exc)
        reader = asyncio.create_task(read())
        current: str | None = None
        metrics.IN_FLIGHT.inc()
        try:
            while (req := await queue.get()) is not None:
                item = req.WhichOneof("item")
                start = time.perf_counter()
                try:
                    if item != "prompt" or not req.drop_if_stale:
                        self.local_quotas.admit(caller)  # every message that does work is a request
                    if item == "frame":
                        current, _, _ = await self._image_for(req.frame, context)
                        yield pb.StreamSegmentResponse(sequence=req.sequence, image_id=current)
                    elif item == "image_id":
                        if not await self._renew(self._ref(req.image_id)):
                            raise _unknown_image(req.image_id)
                        current = req.image_id
                        yield pb.StreamSegmentResponse(sequence=req.sequence, image_id=current)
                    elif item == "prompt":
                        newer = any(r is not None and r.WhichOneof("item") == "prompt" for r in queue._queue)
                        if req.drop_if_stale and newer:
                            yield pb.StreamSegmentResponse(sequence=req.sequence, dropped=True)
                            continue
                        if req.drop_if_stale:
                            self.local_quotas.admit(caller)
                        if current is None:
                            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                               "send a frame or an image_id before prompts", "NO_IMAGE_YET")
                        (result,) = await self._segment(current, [req.prompt], req.options)
                        yield pb.StreamSegmentResponse(sequence=req.sequence, result=result)
                    else:
                        raise prompt_lib.PromptError("empty stream message: set frame, image_id or prompt")
                    code = grpc.StatusCode.OK
                except Exception as exc:  # noqa: BLE001 - reported on the message, the stream goes on
                    code, message = _status_of(exc)
                    self.refused(exc)
                    error = pb.Error(code=code.value[0], message=message)
                    if isinstance(exc, quotas.QuotaExceeded):
                        error.retry_after_ms = max(1, round(exc.retry_after_s * 1000))
                    yield pb.StreamSegmentResponse(sequence=req.sequence, error=error)
                metrics.REQUEST_LATENCY.labels("StreamSegment").observe(time.perf_counter() - start)
                _count("StreamSegment", code)
        finally:
            metrics.IN_FLIGHT.dec()
            close_stream()
            reader.cancel()


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


async def _watch_health(segmenter: Segmenter, health_servicer) -> None:
    """Readiness follows Redis: NOT_SERVING while the store is unreachable, SERVING when it is back."""
    status = None
    while True:
        try:
            await segmenter.redis.ping()
            await segmenter.queue.ping()
            new = health_pb2.HealthCheckResponse.SERVING
        except Exception:  # noqa: BLE001
            new = health_pb2.HealthCheckResponse.NOT_SERVING
            metrics.REDIS_ERRORS.inc()
        if new != status:
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, new)
            status = new
        await asyncio.sleep(1.0)


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
    tasks = [asyncio.create_task(segmenter._listen()), asyncio.create_task(_watch_health(segmenter, health_servicer))]
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    allocator.reuse_large_blocks()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, "decoder", settings.metrics_host)
    tracing.setup("maskserve-decoder", settings.otlp_endpoint)
    try:
        asyncio.run(serve(settings))
    finally:
        tracing.shutdown()
