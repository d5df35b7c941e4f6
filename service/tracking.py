"""Tracking sessions: where a `TrackObjects` stream's state lives, and how it outlives its replica.

A session is a `TrackingSession` (engines/tracking.py) in the process of the stream that drives it. It is
checkpointed to the queue's Redis — under its tenant's name, with a TTL, its bytes counted in the tenant's
embedding quota — every `track_checkpoint_s`, when its stream ends and when the replica drains (SIGTERM), so a
client that reconnects to any replica with the session id resumes from the last checkpoint. One stream drives
a session at a time: a resume takes it over, and the stream it was taken from ends (ABORTED) at its next
checkpoint instead of overwriting the newer one.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import threading
import time

from maskserve.engines.tracking import Tracker, TrackingSession

from . import keys, metrics
from .access import Caller
from .config import Settings
from .errors import Reason
from .failures import ServiceError

SESSION_ID = re.compile(r"[0-9a-f]{32}")

# Take a session over and read its state in one step: a checkpoint of the stream it is taken from can no longer
# land after the state was read. KEYS: the session's hash. ARGV: the new owner token, TTL. Returns {state,
# image_id} (nil state: no session).
TAKE_OVER = """
local found = redis.call('HMGET', KEYS[1], 'state', 'image_id')
if not found[1] then return {false, false} end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return found
"""

# Write a checkpoint only while this stream still owns the session. KEYS: the session's hash. ARGV: owner token,
# state, image_id, TTL. Returns 1 (written) or 0 (another stream took the session over).
CHECKPOINT = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', ARGV[2], 'image_id', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""


def not_found(session_id: str) -> ServiceError:
    shown = session_id if len(session_id) <= 64 else f"{session_id[:16]}… ({len(session_id)} characters)"
    return ServiceError(Reason.SESSION_NOT_FOUND, f"no tracking session {shown!r} (unknown, another tenant's, or "
                                                  "expired): start a new one")


class Live:
    """One session driven by one stream: its engine state and what the stream chose."""

    def __init__(self, session_id: str, caller: Caller, drop_stale: bool, mask_format: int,
                 expected_frames: int | None) -> None:
        self.id, self.caller = session_id, caller
        self.owner = secrets.token_hex(8)
        self.drop_stale, self.mask_format = drop_stale, mask_format
        self.expected_frames = expected_frames
        self.engine: TrackingSession | None = None  # made at the first frame (it fixes the frame size)
        self.image_id = ""  # the current frame's
        self.dropped = 0  # frames skipped since the last tracked one
        self.checkpointed = time.monotonic()
        self.lock = threading.Lock()  # the engine is used from the tracking pool's threads


class Sessions:
    def __init__(self, settings: Settings, manifest, model_dir, queue_redis) -> None:
        self.settings, self.version = settings, manifest.model_version
        self.redis = queue_redis
        self.embedding_bytes = manifest.embedding_nbytes(settings.embedding_dtype)
        self.tracker = Tracker(model_dir, manifest, threads=settings.ort_threads or None) \
            if manifest.tracking else None
        self.script = queue_redis.register_script(CHECKPOINT)
        self.take_over = queue_redis.register_script(TAKE_OVER)
        self.live: dict[str, Live] = {}
        self.per_tenant: dict[str, int] = {}
        self.draining = False

    def require_tracker(self) -> Tracker:
        if self.tracker is None:
            raise ServiceError(Reason.TRACKING_NOT_SUPPORTED, "this model cannot track video: TrackObjects needs a "
                                                              "SAM 2.1 model directory (GetModelInfo lists a model's "
                                                              "capabilities)")
        return self.tracker

    def key(self, caller: Caller, session_id: str) -> str:
        return keys.session_key(self.version, keys.ref(caller.tenant, session_id))

    async def open(self, caller: Caller, start, run) -> tuple[Live, bool]:
        """The session a stream's `start` names: a new one, or one resumed from Redis. `run` runs a function on
        the tracking pool. → (session, resumed)."""
        tracker = self.require_tracker()
        limit = self.settings.track_sessions
        if limit and self.per_tenant.get(caller.tenant, 0) >= limit:
            from .quotas import QuotaExceeded

            raise QuotaExceeded("tracking_sessions", 1.0, f"tenant {caller.tenant!r} has {limit} tracking sessions "
                                                          f"open on this replica, its limit; end one first")
        if start.expected_frames == 1:
            raise ServiceError(Reason.INVALID_TRACK_REQUEST, "expected_frames is at least 2, or 0 for a live stream")
        self.per_tenant[caller.tenant] = self.per_tenant.get(caller.tenant, 0) + 1  # the slot, before any wait
        try:
            live, resumed = await self._open(caller, start, run, tracker)
        except BaseException:
            self.per_tenant[caller.tenant] -= 1
            raise
        self.live[live.owner] = live
        return live, resumed

    async def _open(self, caller: Caller, start, run, tracker) -> tuple[Live, bool]:
        expected = start.expected_frames or None
        ttl = self.settings.track_session_ttl_s
        if not start.session_id:
            live = Live(secrets.token_hex(16), caller, start.drop_stale_frames, start.mask_format, expected)
            await self.redis.hset(self.key(caller, live.id), "owner", live.owner)
            await self.redis.expire(self.key(caller, live.id), ttl)
            return live, False
        sid = start.session_id
        if not SESSION_ID.fullmatch(sid):
            raise not_found(sid)
        live = Live(sid, caller, start.drop_stale_frames, start.mask_format, expected)
        state, image_id = await self.take_over(keys=[self.key(caller, sid)], args=[live.owner, ttl])
        if not state:
            raise not_found(sid)
        live.engine = await run(TrackingSession.restore, tracker, state)
        live.image_id = (image_id or b"").decode()
        metrics.TRACKING_RESUMES.inc()
        return live, True

    def close(self, live: Live) -> None:
        if self.live.pop(live.owner, None) is not None:
            self.per_tenant[live.caller.tenant] -= 1

    def due(self, live: Live) -> bool:
        return self.draining or time.monotonic() - live.checkpointed >= self.settings.track_checkpoint_s

    async def checkpoint(self, live: Live, run) -> int:
        """Write the session's state (its bytes, counted in the tenant's quota). → bytes written."""
        if live.engine is None:
            return 0

        def state() -> tuple[bytes, str]:
            with live.lock:  # the state and its frame's image_id as of the same frame
                return live.engine.state_bytes(), live.image_id
        data, image_id = await run(state)
        started = time.perf_counter()
        await self._hold(live, len(data))
        if not await self.script(keys=[self.key(live.caller, live.id)],
                                 args=[live.owner, data, image_id, self.settings.track_session_ttl_s]):
            raise ServiceError(Reason.SESSION_TAKEN_OVER, f"tracking session {live.id} was resumed by another "
                                                          "stream; this one ends")
        live.checkpointed = time.monotonic()
        metrics.STAGE.labels("track_checkpoint").observe(time.perf_counter() - started)
        metrics.TRACKING_CHECKPOINT_BYTES.observe(len(data))
        return len(data)

    async def _hold(self, live: Live, nbytes: int) -> None:
        """A checkpoint holds its size in the tenant's embedding quota, as so many embeddings' worth, for its TTL."""
        caller = live.caller
        mb = caller.limits.embedding_mb
        if not caller.tenant or not mb:
            return
        held_key = keys.held_key(self.version, caller.tenant)
        now = time.time()
        units = max(1, math.ceil(nbytes / self.embedding_bytes))
        members = [f"track:{live.id}:{k}" for k in range(units)]
        limit = max(1, mb * 2**20 // self.embedding_bytes)
        await self.redis.zremrangebyscore(held_key, "-inf", now)
        mine = await self.redis.zmscore(held_key, members) if await self.redis.exists(held_key) else [None] * units
        held = await self.redis.zcard(held_key)
        if held + sum(s is None for s in mine) > limit:
            from .quotas import QuotaExceeded

            raise QuotaExceeded("embedding_bytes", 1.0, f"tenant {caller.tenant!r} holds its limit of {mb} MiB of "
                                                        f"embeddings and sessions; the checkpoint of session "
                                                        f"{live.id} ({nbytes} bytes) is not written")
        until = now + self.settings.track_session_ttl_s
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(held_key, {m: until for m in members})
            pipe.expireat(held_key, int(until) + 1)
            await pipe.execute()

    async def drain(self, run) -> None:
        """SIGTERM: checkpoint every live session now; their streams checkpoint after every message from here on."""
        self.draining = True
        for live in list(self.live.values()):
            try:
                await self.checkpoint(live, run)
            except Exception:  # noqa: BLE001 - one session's failure must not stop the others' checkpoints
                metrics.REDIS_ERRORS.inc()
