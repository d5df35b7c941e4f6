"""The encode job protocol: a Redis stream per model version, read by the encoder pool as one consumer group.
Both sides are here — `Producer` (the decoder service, asyncio) and `Consumer` (an encoder worker) — so the
entry's fields and each step's Redis commands are written down once (the names of the keys: `keys`).

Producers merge identical work with a `pending` marker (SET NX); workers acknowledge and delete an entry
only after its embedding is stored, and take over entries another worker left unacknowledged (XAUTOCLAIM).
An entry delivered too often goes to the dead-letter stream (`keys.dead_letter_stream`) and its image gets an
error record (`keys.error_key`) that waiters turn into an error. Completion is announced on a pub/sub channel;
waiters also poll, because pub/sub drops messages while a connection is down.

With tenants, every key names the image by its *ref* (`keys.ref`: `tenant/image_id`, the image_id alone when
authentication is off): one tenant's embeddings, markers and errors are out of reach of another's image_ids,
and each entry carries its tenant for the per-tenant bookkeeping (`quotas`): a job counts in its tenant's
`queued` set until it is stored or dead-lettered, an embedding in its `held` set until its TTL lapses.
"""

from __future__ import annotations

import logging
import time

import redis

from . import keys

log = logging.getLogger("maskserve.jobs")

PENDING_TTL_S = 600  # a queued job's marker; after it lapses a waiter may queue the image again
ERROR_TTL_S = 600
DEAD_LETTERS_KEPT = 10000


def hold(pipe, model_version: str, tenant: str, image_ref: str, until: float, renew: bool = False) -> None:
    """(On a pipeline) the tenant holds this embedding until `until`; `renew` only moves an existing entry."""
    if not tenant:
        return
    key = keys.held_key(model_version, tenant)
    pipe.zadd(key, {image_ref: until}, xx=renew)
    if not renew:  # lapsed entries leave
        pipe.zremrangebyscore(key, "-inf", time.time())
    pipe.expireat(key, int(until) + 1)  # and the set itself with its last embedding (all share one TTL)


class QueueFull(Exception):
    pass


class Producer:
    """The decoder's side: queue an image once per tenant, and see how its job stands."""

    def __init__(self, queue_redis, stream: str, model_version: str, max_queue: int) -> None:
        self.redis, self.stream, self.version, self.max_queue = queue_redis, stream, model_version, max_queue

    async def enqueue(self, image_ref: str, payload: bytes, admit=None, trace: dict | None = None) -> bool:
        """Queue the image unless its tenant has it queued already (then share that job: False). `admit(ref)`,
        if given, may refuse the job (a quota) by raising; a refused or failed job leaves no marker. `trace`:
        the W3C trace context fields (traceparent) the entry carries to the encoder."""
        pending = keys.pending_key(self.version, image_ref)
        if not await self.redis.set(pending, 1, nx=True, ex=PENDING_TTL_S):
            return False
        try:
            if await self.redis.xlen(self.stream) >= self.max_queue:
                raise QueueFull(f"the encode queue is full ({self.max_queue} images waiting); retry later")
            if admit is not None:
                await admit(image_ref)
        except BaseException:
            await self.redis.delete(pending)
            raise
        await self.redis.delete(keys.error_key(self.version, image_ref))  # a new attempt after an old failure
        await self.redis.xadd(self.stream, {"image_id": image_ref, "payload": payload, "model_version": self.version,
                                            "tenant": keys.tenant_of(image_ref), "enqueued": repr(time.time()),
                                            **(trace or {})})
        return True

    async def state(self, image_ref: str) -> tuple[str | None, bool]:
        """(the reason it was dead-lettered, or None; whether its job is still queued or in work)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.error_key(self.version, image_ref))
            pipe.exists(keys.pending_key(self.version, image_ref))
            error, pending = await pipe.execute()
        return (error.decode() if error is not None else None), bool(pending)


class Consumer:
    """An encoder worker's side: read, take over, finish or dead-letter entries, and hand them back."""

    def __init__(self, queue_redis, stream: str, model_version: str, name: str) -> None:
        self.redis, self.stream, self.version, self.name = queue_redis, stream, model_version, name

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, keys.GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_ms: int) -> list:
        """Up to `count` new entries [(entry_id, fields)], waiting at most `block_ms` for the first."""
        reply = self.redis.xreadgroup(keys.GROUP, self.name, {self.stream: ">"}, count=count, block=block_ms)
        return reply[0][1] if reply else []

    def claim(self, idle_ms: int, count: int, max_deliveries: int) -> tuple[list, int]:
        """(entries other workers took and left unacknowledged for `idle_ms`, now this worker's; how many of
        them, delivered more than `max_deliveries` times, were dead-lettered instead)."""
        _, entries, _ = self.redis.xautoclaim(self.stream, keys.GROUP, self.name, idle_ms, "0-0", count=count)
        alive, dead = [], 0
        for entry_id, fields in entries or ():
            info = self.redis.xpending_range(self.stream, keys.GROUP, entry_id, entry_id, 1)
            deliveries = info[0]["times_delivered"] if info else 1
            if deliveries > max_deliveries:
                self.dead_letter(entry_id, fields, f"encoding failed {deliveries - 1} times")
                dead += 1
            else:
                alive.append((entry_id, fields))
        return alive, dead

    def dead_letter(self, entry_id, fields, reason: str) -> None:
        """Give up on an entry: its reason to the dead-letter stream and to its waiters (`err:`), done."""
        image_ref = fields.get(b"image_id", b"?").decode()
        log.warning("job %s (image %s) dead-lettered: %s", entry_id, image_ref, reason)
        pipe = self.redis.pipeline()
        pipe.xadd(keys.dead_letter_stream(self.stream), {"image_id": image_ref, "reason": reason, "worker": self.name},
                  maxlen=DEAD_LETTERS_KEPT, approximate=True)
        pipe.set(keys.error_key(self.version, image_ref), reason, ex=ERROR_TTL_S)
        self._finish(pipe, entry_id, fields, image_ref)
        pipe.execute()

    def done(self, entries: list, held_until: float) -> None:
        """Entries whose embeddings are stored (they must be, before this): acknowledged, announced, counted
        as held by their tenants until `held_until`."""
        pipe = self.redis.pipeline()
        for entry_id, fields in entries:
            image_ref = fields[b"image_id"].decode()
            pipe.delete(keys.error_key(self.version, image_ref))
            hold(pipe, self.version, fields.get(b"tenant", b"").decode(), image_ref, held_until)
            self._finish(pipe, entry_id, fields, image_ref)
        pipe.execute()

    def _finish(self, pipe, entry_id, fields, image_ref: str) -> None:
        tenant = fields.get(b"tenant", b"").decode()
        pipe.delete(keys.pending_key(self.version, image_ref))
        if tenant:
            pipe.zrem(keys.queued_key(self.version, tenant), image_ref)
        pipe.xack(self.stream, keys.GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.publish(keys.done_channel(self.version), image_ref)

    def hand_back(self, entry_ids: list, idle_ms: int) -> None:
        """Make entries this worker holds claimable by any other worker now, not after `idle_ms`: their idle
        time is set past it (XCLAIM IDLE, not counted as a delivery)."""
        if entry_ids:
            self.redis.xclaim(self.stream, keys.GROUP, self.name, 0, entry_ids, idle=idle_ms, justid=True)

    def depth(self) -> int:
        return self.redis.xlen(self.stream)
