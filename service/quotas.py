"""Per-tenant quotas: request rate and open streams on each replica, queued jobs and embeddings held across
the deployment. A call over a quota is refused with RESOURCE_EXHAUSTED and how long to wait.

Rate and streams are counted in process (a Redis round trip per request would cost more than the decode);
jobs and embeddings are state in Redis, so they are counted there, in sorted sets on the queue's Redis
(which never evicts), scored by when each entry lapses: a lost job or an expired embedding stops counting by
itself.
"""

from __future__ import annotations

import threading
import time

from . import jobs, keys
from .access import Caller


class QuotaExceeded(Exception):
    def __init__(self, reason: str, retry_after_s: float, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # rate, streams, queued_jobs, embedding_bytes: the metric label; errors.Reason.quota
        self.retry_after_s = max(0.001, retry_after_s)


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: float) -> None:
        self.tokens, self.stamp = burst, time.monotonic()


class Local:
    """Token buckets and open-stream counts per tenant, for this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buckets: dict[str, _Bucket] = {}
        self.streams: dict[str, int] = {}

    def admit(self, caller: Caller) -> None:
        rate = caller.limits.rate
        if rate <= 0:
            return
        burst = caller.limits.burst or max(1.0, rate)
        with self.lock:
            bucket = self.buckets.get(caller.tenant)
            if bucket is None:
                bucket = self.buckets[caller.tenant] = _Bucket(burst)
            now = time.monotonic()
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / rate
        raise QuotaExceeded("rate", wait, f"tenant {caller.tenant!r} is over its rate of {rate:g} requests/s "
                                          f"(burst {burst:g}); retry in {wait:.3f} s")

    def open_stream(self, caller: Caller):
        """Count one more open stream for the tenant; returns the function that closes it."""
        limit = caller.limits.streams
        with self.lock:
            open_now = self.streams.get(caller.tenant, 0)
            if limit and open_now >= limit:
                raise QuotaExceeded("streams", 1.0, f"tenant {caller.tenant!r} has {open_now} streams open, its "
                                                    f"limit; close one or retry later")
            self.streams[caller.tenant] = open_now + 1

        def close() -> None:
            with self.lock:
                self.streams[caller.tenant] -= 1
        return close


# Atomic check-and-count of one new job: a replica's check and its add cannot interleave with another's.
# KEYS: queued set, held set. ARGV: now, pending TTL, max queued (0 = any), max held+queued (0 = any), member.
# Returns {0} (counted), {1} (too many queued) or {2, seconds until the oldest embedding lapses}.
ADMIT_JOB = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local queued = redis.call('ZCARD', KEYS[1])
local held = redis.call('ZCARD', KEYS[2])
if tonumber(ARGV[3]) > 0 and queued >= tonumber(ARGV[3]) then return {1, 0} end
if tonumber(ARGV[4]) > 0 and queued + held >= tonumber(ARGV[4]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if oldest[2] then return {2, tostring(tonumber(oldest[2]) - now)} end
  return {2, tostring(ARGV[2])}
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return {0, 0}
"""


class Shared:
    """Queued jobs and embeddings held per tenant, counted in the queue's Redis."""

    def __init__(self, queue_redis, model_version: str, embedding_bytes: int) -> None:
        self.script = queue_redis.register_script(ADMIT_JOB)
        self.version = model_version
        self.embedding_bytes = embedding_bytes

    def held_limit(self, caller: Caller) -> int:
        mb = caller.limits.embedding_mb
        return max(1, mb * 2**20 // self.embedding_bytes) if mb else 0

    async def admit_job(self, caller: Caller, ref: str) -> None:
        limits = caller.limits
        if not caller.tenant or not (limits.queued_jobs or limits.embedding_mb):
            return
        held_limit = self.held_limit(caller)
        verdict, seconds = await self.script(
            keys=[keys.queued_key(self.version, caller.tenant), keys.held_key(self.version, caller.tenant)],
            args=[time.time(), jobs.PENDING_TTL_S, limits.queued_jobs, held_limit, ref])
        if verdict == 1:
            raise QuotaExceeded("queued_jobs", 1.0, f"tenant {caller.tenant!r} has {limits.queued_jobs} images "
                                                    "waiting for the encoder pool, its limit; retry later")
        if verdict == 2:
            raise QuotaExceeded("embedding_bytes", float(seconds),
                                f"tenant {caller.tenant!r} holds its limit of {limits.embedding_mb} MiB of "
                                f"embeddings ({held_limit} images); one expires in {float(seconds):.0f} s")
