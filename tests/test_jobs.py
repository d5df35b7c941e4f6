"""The job protocol on its own, against a real redis-server: both sides' steps and what each leaves in Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from maskserve.service import jobs, keys
from maskserve.service.stack import free_port, start_redis, stop

VERSION, STREAM = "m-1", "jobs:m-1"


@pytest.fixture()
def url(tmp_path):
    port = free_port()
    server = start_redis(port, tmp_path)
    yield f"redis://127.0.0.1:{port}/0"
    stop(server)


def produce(url, *steps):
    """Run producer steps (coroutines taking a Producer) in order; their results."""
    async def main():
        client = aioredis.from_url(url)
        try:
            producer = jobs.Producer(client, STREAM, VERSION, max_queue=3)
            return [await step(producer) for step in steps]
        finally:
            await client.aclose()
    return asyncio.run(main())


def consumer(url, name="w1") -> jobs.Consumer:
    c = jobs.Consumer(redis.Redis.from_url(url), STREAM, VERSION, name)
    c.ensure_group()
    c.ensure_group()  # idempotent
    return c


def test_a_tenant_queues_an_image_once_and_tenants_apart(url):
    a, b = keys.ref("a", "0" * 32), keys.ref("b", "0" * 32)
    assert produce(url, lambda p: p.enqueue(a, b"x"), lambda p: p.enqueue(a, b"x"), lambda p: p.enqueue(b, b"x"),
                   lambda p: p.state(a)) == [True, False, True, (None, True)]
    r = redis.Redis.from_url(url)
    entries = r.xrange(STREAM)
    assert [e[1][b"image_id"] for e in entries] == [a.encode(), b.encode()]
    assert {e[1][b"tenant"] for e in entries} == {b"a", b"b"} and entries[0][1][b"model_version"] == VERSION.encode()
    assert entries[0][1][b"payload"] == b"x" and float(entries[0][1][b"enqueued"]) > 0


def test_a_refused_job_leaves_no_trace(url):
    async def refuse(_ref):
        raise RuntimeError("over quota")

    refs = [f"{i:032x}" for i in range(5)]
    results = produce(url, *[lambda p, r=r: p.enqueue(r, b"x") for r in refs[:3]])
    assert results == [True, True, True]
    with pytest.raises(jobs.QueueFull):
        produce(url, lambda p: p.enqueue(refs[3], b"x"))
    r = redis.Redis.from_url(url)
    r.xtrim(STREAM, maxlen=0)
    with pytest.raises(RuntimeError):
        produce(url, lambda p: p.enqueue(refs[4], b"x", admit=refuse))
    assert not r.exists(keys.pending_key(VERSION, refs[3])) and not r.exists(keys.pending_key(VERSION, refs[4]))
    assert r.xlen(STREAM) == 0


def test_done_acknowledges_announces_and_counts_the_embedding_held(url):
    image = keys.ref("t", "1" * 32)
    produce(url, lambda p: p.enqueue(image, b"x"))
    r = redis.Redis.from_url(url)
    r.zadd(keys.queued_key(VERSION, "t"), {image: 1.0})  # as the quota script counts it
    pubsub = r.pubsub()
    pubsub.subscribe(keys.done_channel(VERSION))
    c = consumer(url)
    entries = c.read(4, 100)
    assert len(entries) == 1 and c.read(4, 10) == []
    c.done(entries, held_until=4e9)
    assert r.xlen(STREAM) == 0 and r.xpending(STREAM, keys.GROUP)["pending"] == 0
    assert not r.exists(keys.pending_key(VERSION, image))
    assert r.zscore(keys.held_key(VERSION, "t"), image) == 4e9 and r.zcard(keys.queued_key(VERSION, "t")) == 0
    messages = [m for m in iter(lambda: pubsub.get_message(timeout=1), None) if m["type"] == "message"]
    assert [m["data"] for m in messages] == [image.encode()]
    assert produce(url, lambda p: p.state(image)) == [(None, False)]


def test_abandoned_entries_are_taken_over_then_dead_lettered(url):
    image = "2" * 32
    produce(url, lambda p: p.enqueue(image, b"x"))
    first, second = consumer(url, "first"), consumer(url, "second")
    assert len(first.read(1, 100)) == 1  # and never acknowledged: the worker died
    taken, dead = second.claim(idle_ms=0, count=4, max_deliveries=2)
    assert len(taken) == 1 and dead == 0
    taken, dead = first.claim(idle_ms=0, count=4, max_deliveries=2)  # the third delivery: too many
    assert taken == [] and dead == 1
    r = redis.Redis.from_url(url)
    assert r.xlen(STREAM) == 0 and r.xlen(keys.dead_letter_stream(STREAM)) == 1
    (_, fields), = r.xrange(keys.dead_letter_stream(STREAM))
    assert fields[b"reason"] == b"encoding failed 2 times" and fields[b"worker"] == b"first"
    assert produce(url, lambda p: p.state(image)) == [("encoding failed 2 times", False)]
    assert produce(url, lambda p: p.enqueue(image, b"x"), lambda p: p.state(image)) == [True, (None, True)]


def test_handed_back_entries_are_claimable_at_once(url):
    produce(url, lambda p: p.enqueue("3" * 32, b"x"), lambda p: p.enqueue("4" * 32, b"x"))
    first, second = consumer(url, "first"), consumer(url, "second")
    entries = first.read(4, 100)
    assert second.claim(idle_ms=600_000, count=4, max_deliveries=3) == ([], 0)  # not idle long enough
    first.hand_back([entry_id for entry_id, _ in entries], idle_ms=600_000)
    taken, _ = second.claim(idle_ms=600_000, count=4, max_deliveries=3)
    assert sorted(e for e, _ in taken) == sorted(e for e, _ in entries)
    r = redis.Redis.from_url(url)
    assert all(p["times_delivered"] == 2 for p in r.xpending_range(STREAM, keys.GROUP, "-", "+", 10))
