"""The decoder's side of the embedding store and the job queue: find an image's embedding (in-process LRU,
else Redis), or queue the image for the encoder pool and wait for it within the call's deadline.

Every name here is a tenant's ref (`keys.ref`): an image_id alone never reaches Redis. The caller comes
as an argument (`access.Caller`), from the call that asks.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

import numpy as np
import redis

from maskserve.engines.prompts import PromptError

from . import errors, images, jobs, keys, metrics, quotas, store, tracing
from .access import Caller
from .config import Settings
from .errors import Reason
from .failures import ServiceError, unknown_image
from .tracing import tracer


class Embeddings:
    def __init__(self, settings: Settings, manifest, redis_client, queue, pool: Executor) -> None:
        self.settings, self.manifest = settings, manifest
        self.version = manifest.model_version
        self.redis, self.queue, self.pool = redis_client, queue, pool
        self.producer = jobs.Producer(queue, settings.stream(self.version), self.version, settings.max_queue)
        self.lru = store.LRU(settings.lru_entries)
        self.shared_quotas = quotas.Shared(queue, self.version, manifest.embedding_nbytes(settings.embedding_dtype))
        self.waiters: dict[str, set[asyncio.Event]] = {}  # image ref → the events of the calls waiting for it
        self.renewing: set[asyncio.Task] = set()

    @staticmethod
    def ref(caller: Caller, image_id: str) -> str:
        """The caller's name for an image in Redis (see keys.ref). An id that is not one of ours is refused like
        an unknown one, so that no string can step outside the caller's space; one too long to be an id is
        INVALID_ARGUMENT, and is never echoed."""
        if len(image_id) > images.MAX_ID_CHARS:
            message = (f"image_id is {len(image_id)} characters long; an image_id (from EncodeImage) is 32, and "
                       f"at most {images.MAX_ID_CHARS} are read")
            raise ServiceError(Reason.INVALID_IMAGE_ID, message, errors.bad_request("image_id", message))
        if not images.IMAGE_ID.fullmatch(image_id):
            raise unknown_image(image_id, "not an image_id that EncodeImage returns")
        return keys.ref(caller.tenant, image_id)

    async def require(self, caller: Caller, image_id: str) -> tuple[str, store.StoredEmbedding]:
        """(ref, embedding) of an image the caller names; NOT_FOUND when the store does not have it."""
        ref = self.ref(caller, image_id)
        found = await self.get(caller, ref)
        if found is None:
            raise unknown_image(image_id)
        return ref, found

    async def get(self, caller: Caller, ref: str) -> store.StoredEmbedding | None:
        """The embedding from this process's LRU, else from Redis. Every use renews its TTL in Redis (a sliding
        lifetime: an image in use does not expire), and an LRU entry whose Redis key is gone is dropped, so
        this process never holds on to what the store has lost."""
        k = keys.embedding_key(self.version, ref)
        found = self.lru.get(k)
        if found is not None:
            metrics.CACHE.labels("hit").inc()
            task = asyncio.create_task(self.renew(caller, ref))  # off the request's path
            self.renewing.add(task)
            task.add_done_callback(self.renewing.discard)
            return found
        start = time.perf_counter()
        with tracer.start_as_current_span("embedding_fetch"):
            blob = await self.redis.getex(k, ex=self.settings.embedding_ttl_s)
        if blob is None:
            metrics.CACHE.labels("miss").inc()
            return None
        await self._renew_held(caller, ref)
        found = store.unpack(blob)
        metrics.STAGE.labels("embedding_fetch").observe(time.perf_counter() - start)
        metrics.CACHE.labels("redis").inc()
        self.lru.put(k, found, owner=keys.tenant_of(ref))
        return found

    async def renew(self, caller: Caller, ref: str) -> bool:
        """Renew an embedding's TTL; False (and out of the LRU) when the store no longer has it."""
        k = keys.embedding_key(self.version, ref)
        try:
            if await self.redis.expire(k, self.settings.embedding_ttl_s):
                await self._renew_held(caller, ref)
                return True
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError):
            return False  # unknown while Redis is away: keep serving from the LRU
        self.lru.discard(k)
        return False

    async def keep_for(self, caller: Caller, image_id: str, seconds: int) -> None:
        """Let an image's embedding lapse `seconds` from now (a video frame, once tracked), and its tenant stop
        holding it then; a later use renews it as usual."""
        ref = self.ref(caller, image_id)
        try:
            await self.redis.expire(keys.embedding_key(self.version, ref), seconds)
            tenant = keys.tenant_of(ref)
            if tenant and caller.limits.embedding_mb:
                async with self.queue.pipeline(transaction=False) as pipe:
                    jobs.hold(pipe, self.version, tenant, ref, time.time() + seconds, renew=True)
                    await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError):
            pass  # it lapses with its usual lifetime

    async def _renew_held(self, caller: Caller, ref: str) -> None:
        """A tenant with an embedding quota holds an embedding as long as its TTL runs."""
        tenant = keys.tenant_of(ref)
        if tenant and caller.limits.embedding_mb:
            async with self.queue.pipeline(transaction=False) as pipe:
                jobs.hold(pipe, self.version, tenant, ref, time.time() + self.settings.embedding_ttl_s, renew=True)
                await pipe.execute()

    async def decoded(self, payload: bytes) -> np.ndarray:
        """The image's pixels, decoded fully here so that a bad image is refused now, never in the queue."""
        rgb = await asyncio.get_running_loop().run_in_executor(
            self.pool, images.decode_payload, payload, self.settings.max_image_pixels)
        images.check_fits(*rgb.shape[:2], self.manifest.image_size)
        return rgb

    async def image_for(self, caller: Caller, image, context, wait: bool = True) -> tuple[str, bool, tuple[int, int]]:
        """(image_id, in the store, (H, W)) for an image a call sends: known already, or queued (and with
        `wait` waited for). `ready` is true only when Redis holds the embedding now."""
        payload = images.canonical_payload(image)
        image_id = images.image_id(payload, self.version, caller.tenant)
        ref = keys.ref(caller.tenant, image_id)
        if await self.renew(caller, ref):
            emb = self.lru.get(keys.embedding_key(self.version, ref))
            return image_id, True, emb.original_size if emb is not None else images.image_size(payload)
        rgb = await self.decoded(payload)
        await self.enqueue(caller, ref, payload)
        if wait:
            with tracer.start_as_current_span("wait_for_encoder"):
                await self.wait_encoded(caller, ref, payload, context)
        return image_id, wait, rgb.shape[:2]

    async def target(self, caller: Caller, request, context) -> str:
        """The image_id a call's `target` names: its image_id, or the image it sends (encoded first)."""
        if request.WhichOneof("target") == "image":
            return (await self.image_for(caller, request.image, context))[0]
        if request.image_id:
            return request.image_id
        raise PromptError("give an image_id from EncodeImage, or the image itself", "image_id")

    async def enqueue(self, caller: Caller, ref: str, payload: bytes) -> None:
        """Queue the image for the encoder pool (or share the job its tenant has queued), within the quotas."""
        try:
            with tracer.start_as_current_span("enqueue"):  # the job carries this span's context to the encoder
                await self.producer.enqueue(ref, payload, admit=lambda r: self.shared_quotas.admit_job(caller, r),
                                            trace=tracing.carrier())
        except jobs.QueueFull as exc:
            raise ServiceError(Reason.QUEUE_FULL, str(exc), errors.retry_info(1.0)) from None

    async def wait_encoded(self, caller: Caller, ref: str, payload: bytes, context) -> None:
        """Until the embedding is stored, the job is dead-lettered (error) or the deadline passes. Each call
        registers its own wake-up event and removes it when it ends: no bookkeeping outlives a call."""
        image_id = ref.rpartition("/")[2]
        event = asyncio.Event()
        try:
            while True:
                event.clear()
                self.waiters.setdefault(ref, set()).add(event)
                if await self.redis.exists(keys.embedding_key(self.version, ref)):
                    return
                error, pending = await self.producer.state(ref)
                if await self.redis.exists(keys.embedding_key(self.version, ref)):  # finished meanwhile
                    return
                if error is not None:
                    raise ServiceError(Reason.ENCODE_FAILED, f"the encoder could not encode image {image_id}: {error}")
                if not pending:  # the job was lost (e.g. Redis restarted empty): queue it again
                    await self.enqueue(caller, ref, payload)
                remaining = context.time_remaining() if context is not None else None
                if remaining is not None and remaining <= 0.01:
                    raise ServiceError(Reason.NOT_ENCODED_IN_TIME,
                                       f"image {image_id} was not encoded before the deadline; it stays queued")
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

    async def listen(self) -> None:
        """Wake waiters when the encoder pool announces an embedding; reconnects after Redis outages."""
        while True:
            try:
                pubsub = self.queue.pubsub()
                await pubsub.subscribe(keys.done_channel(self.version))
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        for event in self.waiters.pop(message["data"].decode(), ()):
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the waiters poll meanwhile
                await asyncio.sleep(0.5)
