"""The encoder worker: jobs from the Redis stream → batched encoder runs → embeddings in Redis.

Batches fill up to `batch_size` images or `batch_wait_ms`, whichever comes first. An entry is acknowledged
only after its embedding is stored, so a worker that dies mid-batch loses nothing: another worker takes its
entries over after `claim_idle_ms`. On SIGTERM the worker finishes the engine run in hand (one image on the
CPU), hands the rest of its batch back to the pool at once and stops reading.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
import uuid

import numpy as np
import redis

from maskserve import engines
from maskserve.engines import prompts

from . import allocator, images, jobs, keys, logs, metrics, redis_clients, store, tracing
from .config import Settings

log = logging.getLogger("maskserve.encoder")


class EncoderWorker:
    def __init__(self, settings: Settings, name: str | None = None, stopping: threading.Event | None = None) -> None:
        self.settings = settings
        self.stopping = stopping or threading.Event()
        self.model = engines.load(engines.resolve(settings.model_dir or None, settings.engine_cache), decoder=False,
                                  threads=settings.ort_threads or None, device=settings.torch_device or None)
        self.manifest = self.model.manifest
        self.version = self.manifest.model_version
        self.stream = settings.stream(self.version)
        self.name = name or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.redis = redis_clients.connect(settings, queue=True, socket_timeout=10, health_check_interval=10)
        self.cache = redis_clients.connect(settings, socket_timeout=10, health_check_interval=10)
        self.jobs = jobs.Consumer(self.redis, self.stream, self.version, self.name)

    def _read_batch(self) -> list:
        """Up to batch_size entries: reclaimed ones first, then new ones until the batch is full or
        batch_wait_ms have passed since the first entry came in hand."""
        size, wait = self.settings.batch_size, self.settings.batch_wait_ms / 1000
        batch, dead = self.jobs.claim(self.settings.claim_idle_ms, size, self.settings.max_deliveries)
        metrics.JOBS.labels("dead_letter").inc(dead)
        deadline = time.monotonic() + wait if batch else None
        while len(batch) < size and not self.stopping.is_set():
            block_ms = 1000 if deadline is None else max(1, int((deadline - time.monotonic()) * 1000))
            entries = self.jobs.read(size - len(batch), block_ms)
            if entries:
                batch.extend(entries)
                if deadline is None:
                    deadline = time.monotonic() + wait
            if deadline is None or time.monotonic() >= deadline:
                break  # nothing came within a second (let the caller loop), or the batch window closed
        return batch

    def _dead_letter(self, entry_id, fields, reason: str) -> None:
        self.jobs.dead_letter(entry_id, fields, reason)
        metrics.JOBS.labels("dead_letter").inc()

    def process(self, batch: list) -> None:
        m = self.manifest
        prepared, sizes, good = [], [], []
        for entry_id, fields in batch:
            version = fields.get(b"model_version", self.version.encode()).decode()
            if version != self.version:  # a shared stream (MASKSERVE_QUEUE) fed by another model's decoders
                self._dead_letter(entry_id, fields, f"job for model {version}; this worker serves {self.version}")
                continue
            enqueued = float(fields.get(b"enqueued", b"0") or 0)
            if enqueued:
                metrics.STAGE.labels("queue_wait").observe(max(0.0, time.time() - enqueued))
            try:  # everything about one job that depends on its input alone: it fails for that job only
                rgb = images.decode_payload(fields[b"payload"], self.settings.max_image_pixels)
                images.check_fits(*rgb.shape[:2], m.image_size)
                x = prompts.prepare_image(rgb, m)  # as the model's family prepares images
            except images.ImageError as exc:  # never retried: it cannot get better
                self._dead_letter(entry_id, fields, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - deterministic too: the same bytes fail the same way
                log.exception("job %s: preparing the image failed", entry_id)
                self._dead_letter(entry_id, fields, f"the image could not be prepared: {exc.__class__.__name__}: {exc}")
                continue
            prepared.append(x)
            sizes.append(rgb.shape[:2])
            good.append((entry_id, fields))
        if not good:
            return
        # One engine run at a time (one image on the CPU, the engine's batch on TensorRT), each stored as soon as
        # it is done; a stop between runs hands the rest back to the pool at once.
        run = self.model.encoder.run_size
        for i in range(0, len(good), run):
            if self.stopping.is_set():
                self.hand_back([entry_id for entry_id, _ in good[i:]])
                return
            jobs_, xs = good[i:i + run], prepared[i:i + run]
            with tracing.job_span("encode", [fields for _, fields in jobs_]):
                start = time.perf_counter()
                try:
                    embeddings = self._encode(np.stack(xs))
                except Exception:  # noqa: BLE001 - find the job that fails alone; the others go on
                    log.exception("an encoder run of %d images failed; encoding them one by one", len(jobs_))
                    for job, x in zip(jobs_, xs):
                        self._encode_alone(job, x)
                    continue
                metrics.STAGE.labels("encode").observe(time.perf_counter() - start)
                metrics.BATCH.observe(len(jobs_))
                self._store(jobs_, embeddings, sizes[i:i + run])

    def hand_back(self, entry_ids: list) -> None:
        """The jobs this worker will not finish, claimable by any other worker now (not after claim_idle_ms)."""
        if entry_ids:
            self.jobs.hand_back(entry_ids, self.settings.claim_idle_ms)
            log.info("encoder %s: handed %d unfinished jobs back to the pool", self.name, len(entry_ids))

    def _encode(self, batch: np.ndarray) -> list:
        """Each image's embedding as the store packs it: its named arrays, each with a batch axis of 1."""
        arrays = self.model.encoder.encode_arrays(batch)
        return [{name: a[i:i + 1] for name, a in arrays.items()} for i in range(len(batch))]

    def _encode_alone(self, job, x) -> None:
        try:
            embedding = self._encode(x[None])
        except Exception as exc:  # noqa: BLE001
            self._dead_letter(*job, f"the encoder failed on this image: {exc.__class__.__name__}: {exc}")
            return
        self._store([job], embedding, [images.image_size(job[1][b"payload"])])

    @tracing.tracer.start_as_current_span("store")
    def _store(self, good: list, embeddings, sizes) -> None:
        cache = self.cache.pipeline(transaction=False)
        for (_, fields), emb, size in zip(good, embeddings, sizes):
            blob = store.pack(emb, self.version, size, self.settings.embedding_dtype)
            cache.set(keys.embedding_key(self.version, fields[b"image_id"].decode()), blob,
                      ex=self.settings.embedding_ttl_s)
        cache.execute()  # stored first: only then is the job done
        self.jobs.done(good, time.time() + self.settings.embedding_ttl_s)
        metrics.JOBS.labels("done").inc(len(good))

    def warm_up(self) -> None:
        """One blank image through the encoder before the first job: a runtime sizes its buffers on its first
        run (ViT-B on CPU: 11.4 s, then 8.6–8.9 s), and the startup probe waits for this."""
        size = self.manifest.image_size
        start = time.perf_counter()
        self._encode(np.zeros((1, 3, size, size), np.float32))
        log.info("encoder %s: warmed up in %.1f s", self.name, time.perf_counter() - start)

    def run(self) -> None:
        log.info("encoder %s: model %s, stream %s", self.name, self.version, self.stream)
        while not self.stopping.is_set():
            try:
                self.jobs.ensure_group()
                while not self.stopping.is_set():
                    batch = self._read_batch()
                    metrics.QUEUE_DEPTH.set(self.jobs.depth())
                    if batch:
                        self.process(batch)
            except (redis.ConnectionError, redis.TimeoutError) as exc:  # Redis is away: keep trying, lose nothing
                log.warning("redis unavailable (%s); retrying", exc)
                metrics.REDIS_ERRORS.inc()
                self.stopping.wait(1.0)
            except Exception:  # noqa: BLE001 - never die of one batch: its entries stay pending and are retried
                log.exception("processing a batch failed; its jobs will be retried")
                self.stopping.wait(1.0)
        log.info("encoder %s stopped", self.name)


def main(settings: Settings) -> None:
    logs.setup()
    allocator.reuse_large_blocks()
    stopping = threading.Event()  # a SIGTERM while the engine loads is a clean stop too
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    worker = EncoderWorker(settings, stopping=stopping)
    worker.warm_up()
    if settings.metrics_port:  # only once the engine is warm: the startup probe waits on this port
        metrics.serve(settings.metrics_port, "encoder", settings.metrics_host)
    tracing.setup("maskserve-encoder", settings.otlp_endpoint)
    try:
        worker.run()
    finally:
        tracing.shutdown()
