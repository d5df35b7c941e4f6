"""Settings for every process, from environment variables (MASKSERVE_<NAME>) and command-line flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"  # embedding store (and job queue unless queue_redis_url)
    queue_redis_url: str = ""  # job queue on its own Redis (noeviction), so cache eviction never drops work
    queue: str = ""  # job stream name; empty = jobs:{model_version}
    engine_cache: str = ""  # TensorRT: folder of engines compiled per GPU architecture (maskserve compile)
    model_dir: str = ""  # model directory; empty = the shipped tiny model
    grpc_host: str = "[::]"  # decoder service: the address it listens on (all interfaces; the local stack: loopback)
    grpc_port: int = 50051  # decoder service
    metrics_host: str = "0.0.0.0"  # the address /metrics listens on (all interfaces; the local stack: loopback)
    metrics_port: int = 9090  # /metrics; 0 = off
    embedding_dtype: str = "float32"  # encoder: store embeddings as float32, or float16 (half the bytes)
    embedding_ttl_s: int = 3600  # how long an embedding stays in Redis after its last use (a sliding TTL)
    lru_entries: int = 64  # embeddings each decoder keeps in process
    max_queue: int = 1000  # jobs waiting before EncodeImage answers RESOURCE_EXHAUSTED
    batch_size: int = 4  # encoder: most images in one batch
    batch_wait_ms: int = 20  # encoder: longest wait for a batch to fill
    claim_idle_ms: int = 30000  # encoder: a job unacknowledged this long is taken over from its worker
    max_deliveries: int = 3  # encoder: attempts before a job goes to the dead-letter stream
    max_prompts: int = 256  # prompts in one SegmentPrompt
    max_points: int = 64  # points in one prompt
    max_image_pixels: int = 40_000_000
    everything_max_points: int = 16384  # SegmentEverything: point prompts over all crops of one request
    everything_max_crop_layers: int = 2  # SegmentEverything: crop layers (layer i has 4^i crops to encode)
    everything_concurrency: int = 1  # SegmentEverything requests decoding at once per process; more wait
    max_message_mb: int = 64  # gRPC message limit both ways
    decode_threads: int = 2  # decoder service: concurrent decoder runs
    ort_threads: int = 0  # ONNX Runtime threads per run; 0 = one per core

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"MASKSERVE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = type(f.default)(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def queue_url(self) -> str:
        return self.queue_redis_url or self.redis_url

    def stream(self, model_version: str) -> str:
        return self.queue or f"jobs:{model_version}"
