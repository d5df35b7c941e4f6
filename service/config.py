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
    logits_ttl_s: int = 300  # low-res logits made for refinement by handle, kept in Redis this long
    logits_cache_entries: int = 32  # ... and the latest answers' in each decoder process (ViT-B: 768 KB each)
    decode_threads: int = 2  # decoder service: concurrent decoder runs
    ort_threads: int = 0  # ONNX Runtime threads per run; 0 = one per core
    # -- transport security (the decoder's gRPC port) -------------------------------------------------------
    tls_cert_file: str = ""  # PEM certificate chain; with tls_key_file, the gRPC port speaks TLS only
    tls_key_file: str = ""  # PEM private key (re-read when the files change: a rotated Secret needs no restart)
    tls_client_ca_file: str = ""  # mutual TLS: clients must present a certificate signed by this CA
    health_port: int = 0  # plaintext gRPC health only (kubelet probes cannot speak TLS); 0 = off
    reflection: bool = True  # gRPC server reflection (grpcurl); no credentials needed, like health
    # -- identity, tenants and quotas -------------------------------------------------------------------------
    auth_file: str = ""  # access file (JSON): hashed API keys and client certificates → tenants; empty = auth off
    tenant_rate: float = 0.0  # requests per second per tenant on each decoder replica; 0 = unlimited
    tenant_burst: int = 0  # requests a tenant may send at once above its rate; 0 = one second's worth
    tenant_streams: int = 0  # StreamSegment/SegmentEverything calls open at once per tenant and replica; 0 = unlimited
    tenant_queued_jobs: int = 0  # a tenant's images waiting for the encoder pool (all replicas); 0 = unlimited
    tenant_embedding_mb: int = 0  # embeddings a tenant holds in the store, in MiB (all replicas); 0 = unlimited
    # -- Redis credentials and TLS (a rediss:// URL turns TLS on; the ACL user name goes in the URL) ----------
    redis_password_file: str = ""  # password of the store's Redis user, read at every new connection
    queue_redis_password_file: str = ""  # the queue's Redis user; empty = redis_password_file
    redis_tls_ca_file: str = ""  # CA that signed the Redis servers' certificates (both Redis)
    redis_tls_cert_file: str = ""  # client certificate, where Redis requires one (tls-auth-clients yes)
    redis_tls_key_file: str = ""

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        values = {}
        for f in fields(cls):
            raw = os.environ.get(f"MASKSERVE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, raw, type(f.default))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file or self.tls_key_file)

    @property
    def queue_url(self) -> str:
        return self.queue_redis_url or self.redis_url

    def stream(self, model_version: str) -> str:
        return self.queue or f"jobs:{model_version}"


def _parse(name: str, raw: str, kind: type):
    if kind is bool:
        value = raw.strip().lower()
        if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"MASKSERVE_{name.upper()}={raw!r}: expected true or false")
        return value in ("1", "true", "yes", "on")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"MASKSERVE_{name.upper()}={raw!r}: expected {kind.__name__}") from None
