"""Settings for every process: each declared once here with its type, default, range and help; read from
MASKSERVE_<NAME> (and a few command-line flags), checked at start with a message naming the variable. The
docs/configuration.md's table is this list (`maskserve settings` prints it; a test compares the two)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from maskserve import limits

from . import keys


def setting(default, help: str, *, shown: str | None = None, minimum: float | None = None,
            maximum: float | None = None, choices: tuple = ()):
    """One setting: `shown` is the default as the table gives it when the value alone would not say it."""
    return field(default=default, metadata={"help": help, "shown": shown, "min": minimum, "max": maximum,
                                            "choices": choices})


PORT = dict(minimum=0, maximum=65535)


@dataclass
class Settings:
    # -- where things are -------------------------------------------------------------------------------------
    redis_url: str = setting("redis://127.0.0.1:6379/0",
                             "embedding store (and job queue, unless the next is set); `rediss://user@host` = TLS")
    queue_redis_url: str = setting("", "job queue on its own Redis (`noeviction`), apart from the evicting cache",
                                   shown="(same)")
    queue: str = setting("", "job stream name (fixed names let KEDA watch it)",
                         shown=f"`{keys.job_stream('{model_version}')}`")
    engine_cache: str = setting("", "TensorRT: engines compiled per GPU by `maskserve compile --cache`")
    model_dir: str = setting("", "model directory", shown="shipped tiny model")
    torch_device: str = setting("", "torch encoder backend: `cuda`, `cuda:N` or `cpu`",
                                shown="the model directory's (`auto`: CUDA where available)")
    grpc_host: str = setting("[::]", "address the decoder's gRPC listens on (every interface; the local stack "
                                     "sets loopback)")
    grpc_port: int = setting(50051, "decoder gRPC port", **PORT)
    http_port: int = setting(0, "decoder HTTP/JSON port: the same RPCs (routes from the proto), WebSockets for "
                                "streams, OpenAPI at `/openapi.json`, the web annotator at `/`; same TLS and keys as "
                                "gRPC", shown="0 (off)", **PORT)
    http_allowed_origins: str = setting("", "HTTP: other origins whose pages may call the API from a browser "
                                            "(comma-separated `https://host:port`, or `*`); the decoder's own page "
                                            "is always allowed", shown="(none)")
    http_idle_s: float = setting(300.0, "HTTP: a WebSocket that sends nothing this long is ended (`STREAM_IDLE`)",
                                 minimum=0.001)
    label_studio_url: str = setting("", "Label Studio ML backend (`/label-studio/` on the HTTP port): the Label "
                                        "Studio the task images are fetched from (`https://ls.example`; relative "
                                        "`/data/upload/…` paths resolve against it); an image at any other URL is "
                                        "refused", shown="(none: `data:` URIs only)")
    label_studio_token_file: str = setting("", "Label Studio: file holding its API token, sent with each image "
                                               "fetch (`Authorization: Token …`; `Bearer` for a JWT), read at "
                                               "each fetch")
    metrics_host: str = setting("0.0.0.0", "address `/metrics` listens on (every interface; the local stack sets "
                                           "loopback)")
    metrics_port: int = setting(9090, "Prometheus `/metrics` port (0 = off)", **PORT)
    # -- embeddings and the queue -----------------------------------------------------------------------------
    embedding_dtype: str = setting("float32", "encoder: how embeddings are stored; `float16` halves Redis memory "
                                   "and bytes on the wire at a small, measured mask difference (see Performance)",
                                   choices=("float32", "float16"))
    embedding_ttl_s: int = setting(3600, "embedding lifetime in Redis after its last use (renewed on every use)",
                                   minimum=1)
    lru_entries: int = setting(64, "embeddings kept in each decoder process (ViT-B: 4 MB embedding + 10 MB "
                                   "split-decoder tensors each)", minimum=1)
    max_queue: int = setting(1000, "queued images before `RESOURCE_EXHAUSTED` (0 refuses every new image: a "
                                   "decoder that only serves what is encoded)", minimum=0)
    batch_size: int = setting(4, "encoder: images per batch (TensorRT runs them as one; the CPU backend one by "
                                 "one, which is as fast and holds one image's attention buffers, not four)",
                              minimum=1)
    batch_wait_ms: int = setting(20, "encoder: longest wait for a batch to fill", minimum=0)
    claim_idle_ms: int = setting(30000, "encoder: unacknowledged this long → taken over from a dead worker",
                                 minimum=1)
    max_deliveries: int = setting(3, "encoder: deliveries before the dead-letter stream", minimum=1)
    # -- requests ---------------------------------------------------------------------------------------------
    max_prompts: int = setting(limits.MAX_PROMPTS, "prompts per `SegmentPrompt`", minimum=1)
    max_points: int = setting(limits.MAX_POINTS, "points per prompt", minimum=1)
    max_phrases: int = setting(limits.MAX_PHRASES, "phrases per `SegmentConcept`", minimum=1)
    max_image_pixels: int = setting(limits.MAX_IMAGE_PIXELS, "largest image accepted", minimum=1)
    everything_max_points: int = setting(16384, "`SegmentEverything`: point prompts over all crops of a request "
                                                "(a 128×128 grid; the default 32×32 with one crop layer is 5120)",
                                         minimum=1)
    everything_max_crop_layers: int = setting(2, "`SegmentEverything`: crop layers (layer i adds 4^i crops to "
                                                 "encode)", minimum=0)
    everything_concurrency: int = setting(1, "`SegmentEverything` (or, on SAM 3, `SegmentConcept`) requests decoding "
                                             "at once per decoder process (on threads of their own: prompts are not "
                                             "queued behind them); more wait their turn", minimum=1)
    max_message_mb: int = setting(limits.MAX_MESSAGE_MB, "gRPC message size limit", minimum=1)
    logits_cache_entries: int = setting(32, "refinement by handle: the latest answers' logits kept in each decoder "
                                            "process, never in Redis (ViT-B: 768 KB each)", minimum=1)
    decode_threads: int = setting(2, "decoder runs in parallel per process", minimum=1)
    ort_threads: int = setting(0, "ONNX Runtime threads of a decode that runs alone; decodes that overlap it take "
                                  "one thread each", shown="0 (all cores)", minimum=0)
    track_max_objects: int = setting(16, "`TrackObjects`: objects per session", minimum=1)
    track_sessions: int = setting(4, "`TrackObjects`: open sessions per tenant, per replica (0 = any)", minimum=0)
    track_concurrency: int = setting(1, "`TrackObjects`: frames tracked at once per decoder process (on threads of "
                                        "their own: `SegmentPrompt` never waits behind them)", minimum=1)
    track_checkpoint_s: float = setting(2.0, "`TrackObjects`: a session's state is written to Redis this often "
                                             "(and when its stream ends, and at drain)", minimum=0)
    track_frame_ttl_s: int = setting(300, "`TrackObjects`: a tracked frame's embedding lapses this long after it "
                                          "(prompts on the current frame, and a resume, need it)", minimum=1)
    track_idle_s: float = setting(300.0, "`TrackObjects`: a stream silent this long is checkpointed and ended "
                                         "(`DEADLINE_EXCEEDED`, resume it by its id)", minimum=0.001)
    track_session_ttl_s: int = setting(900, "`TrackObjects`: a session's checkpoint outlives its last write by "
                                            "this long (a client may resume it until then)", minimum=1)
    otlp_endpoint: str = setting("", "OTLP/gRPC collector (host:port) for traces (needs the `tracing` extra); "
                                     "empty = spans are no-ops", shown="(off)")
    # -- transport security (the decoder's gRPC port) ---------------------------------------------------------
    tls_cert_file: str = setting("", "PEM certificate chain; with the key, the gRPC port speaks TLS only; both "
                                     "re-read when the files change (a rotated Secret needs no restart)")
    tls_key_file: str = setting("", "its PEM private key")
    tls_client_ca_file: str = setting("", "mutual TLS: every client must present a certificate from this CA")
    health_port: int = setting(0, "plaintext `grpc.health.v1` only, for kubelet probes (they cannot speak TLS)",
                               shown="0 (off)", **PORT)
    reflection: bool = setting(True, "gRPC server reflection (open, like health)")
    # -- identity, tenants and quotas -------------------------------------------------------------------------
    auth_file: str = setting("", "access file: hashed API keys and certificate subjects → tenants, per-tenant "
                                 "limits (see Security)", shown="(auth off)")
    tenant_rate: float = setting(0.0, "default per-tenant requests/s, per decoder replica", shown="0 (unlimited)",
                                 minimum=0)
    tenant_burst: int = setting(0, "default per-tenant requests at once above the rate", shown="0 (one second's "
                                   "worth)", minimum=0)
    tenant_streams: int = setting(0, "default per-tenant open `StreamSegment`/`SegmentEverything` calls, per "
                                     "replica", shown="0 (unlimited)", minimum=0)
    tenant_queued_jobs: int = setting(0, "default per-tenant images waiting for the encoder pool (deployment-wide)",
                                      shown="0 (unlimited)", minimum=0)
    tenant_embedding_mb: int = setting(0, "default per-tenant embeddings held in the store, MiB (deployment-wide)",
                                       shown="0 (unlimited)", minimum=0)
    # -- Redis credentials and TLS (a rediss:// URL turns TLS on; the ACL user name goes in the URL) ------------
    redis_password_file: str = setting("", "password of the Redis ACL user named in the URL "
                                           "(`rediss://maskserve@host:6379/0`), read at each new connection")
    queue_redis_password_file: str = setting("", "the queue Redis's, when it differs", shown="(same)")
    redis_tls_ca_file: str = setting("", "CA that signed both Redis servers' certificates (`rediss://` URLs)")
    redis_tls_cert_file: str = setting("", "client certificate, where Redis requires one (`tls-auth-clients yes`)")
    redis_tls_key_file: str = setting("", "its private key")

    def __post_init__(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            where = f"MASKSERVE_{f.name.upper()}={value!r}"
            if meta["choices"] and value not in meta["choices"]:
                raise ValueError(f"{where}: expected one of {', '.join(meta['choices'])}")
            if meta["min"] is not None and value < meta["min"]:
                raise ValueError(f"{where}: must be at least {meta['min']:g}")
            if meta["max"] is not None and value > meta["max"]:
                raise ValueError(f"{where}: must be at most {meta['max']:g}")

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
        return self.queue or keys.job_stream(model_version)


def _parse(name: str, raw: str, kind: type):
    if kind is bool:
        value = raw.strip().lower()
        if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"MASKSERVE_{name.upper()}={raw!r}: expected true or false")
        return value in ("1", "true", "yes", "on")
    try:
        return kind(raw)
    except ValueError:
        expected = "a number" if kind is float else "an integer" if kind is int else kind.__name__
        raise ValueError(f"MASKSERVE_{name.upper()}={raw!r}: expected {expected}") from None


def table() -> str:
    """docs/configuration.md's table of settings."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        meta = f.metadata
        if meta["shown"] is not None:
            shown = meta["shown"]
        elif isinstance(f.default, bool):
            shown = f"`{str(f.default).lower()}`"
        elif isinstance(f.default, str):
            shown = f"`{f.default}`" if f.default else ""
        else:
            shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
        lines.append(f"| `MASKSERVE_{f.name.upper()}` | {shown} | {meta['help']} |")
    return "\n".join(lines)
