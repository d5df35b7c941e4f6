"""Prometheus metrics of every maskserve process (names follow Prometheus conventions, `maskserve_` prefix)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)

REQUEST_LATENCY = Histogram("maskserve_request_duration_seconds", "gRPC request latency.", ["rpc"],
                            buckets=LATENCY_BUCKETS)
# `tenant` is the access file's tenant name ("" with authentication off); never a key or a certificate.
REQUESTS = Counter("maskserve_requests_total", "gRPC requests by final status code and tenant.",
                   ["rpc", "code", "tenant"])
REJECTED = Counter("maskserve_rejected_requests_total", "Requests refused before any work: unauthenticated, "
                   "permission_denied, or over a quota (rate, streams, queued_jobs, embedding_bytes).",
                   ["tenant", "reason"])
IN_FLIGHT = Gauge("maskserve_requests_in_flight", "gRPC requests being served.")
STAGE = Histogram("maskserve_stage_duration_seconds",
                  "Time per stage: queue_wait, encode, embedding_fetch, decode, postprocess.", ["stage"],
                  buckets=LATENCY_BUCKETS)
BATCH = Histogram("maskserve_encoder_batch_size", "Images per encoder run.", buckets=(1, 2, 4, 8, 16, 32))
QUEUE_DEPTH = Gauge("maskserve_queue_depth", "Entries in the encode job stream (waiting or in work).")
CACHE = Counter("maskserve_embedding_cache_total", "Embedding look-ups: hit (in process), redis, miss.", ["result"])
JOBS = Counter("maskserve_encoder_jobs_total", "Encode jobs finished: done or dead_letter.", ["outcome"])
EVERYTHING_STAGE = Histogram("maskserve_everything_stage_duration_seconds",
                             "SegmentEverything time per stage and request: encode (waiting for the pool), "
                             "grid_decode, filter, nms, crop_merge, cleanup.", ["stage"], buckets=LATENCY_BUCKETS)
EVERYTHING_POINTS = Counter("maskserve_everything_points_total", "Point prompts decoded by SegmentEverything.")
# The decoder's own bookkeeping, so that a slow leak shows in a soak before it shows in memory.
WAITING_IMAGES = Gauge("maskserve_waiting_images", "Images the decoder has calls waiting on (for the encoder pool).")
LRU_ENTRIES = Gauge("maskserve_lru_entries", "Embeddings held in the decoder's in-process cache.")
REFINEMENT_REMAKES = Counter("maskserve_refinement_remakes_total", "Decoder runs that made a handle's expired "
                             "logits again (bounded per call: refinement.MAX_REMAKE).")
TRACKED_FRAMES = Counter("maskserve_tracked_frames_total", "TrackObjects frames: tracked, or dropped (a newer one "
                         "was waiting).", ["outcome"])
TRACKING_RESUMES = Counter("maskserve_tracking_resumes_total", "Tracking sessions resumed from a checkpoint.")
TRACKING_CHECKPOINT_BYTES = Histogram("maskserve_tracking_checkpoint_bytes", "Size of a tracking session's checkpoint.",
                                      buckets=(2**16, 2**18, 2**20, 2**22, 2**24, 2**26, 2**28))
REDIS_ERRORS = Counter("maskserve_redis_errors_total", "Failed Redis operations (connection lost).")


# The labelled series each process exports from its start, at zero until observed: a freshly started (or
# replacement) worker shows up on dashboards and in rate() before its first job.
SERIES = {
    "encoder": ((STAGE, ("queue_wait", "encode")), (JOBS, ("done", "dead_letter"))),
    "decoder": ((STAGE, ("embedding_fetch", "decode", "postprocess")), (CACHE, ("hit", "redis", "miss")),
                (EVERYTHING_STAGE, ("encode", "grid_decode", "filter", "nms", "crop_merge", "cleanup"))),
}


def serve(port: int, role: str, host: str = "0.0.0.0") -> None:
    for metric, labels in SERIES[role]:
        for label in labels:
            metric.labels(label)
    start_http_server(port, addr=host)
