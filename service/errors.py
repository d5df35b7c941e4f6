"""Errors a program can act on, the service's side: statuses with their `google.rpc` details.

The service attaches to every error an `ErrorInfo` (a stable `reason`, domain maskserve.io), and where they
apply a `BadRequest` (the field, with the prompt's index), a `ResourceInfo` (the unknown image) and a
`RetryInfo` (how long to wait). The Python clients read them back into typed exceptions
(`maskserve.client.errors`).

Every reason is declared once, in `Reason`, with the status it comes with and what it means; docs/api.md's
table of reasons is `reasons_table()`.
"""

from __future__ import annotations

import enum

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "maskserve.io"
MAX_TEXT = 1024  # characters of a message or detail: input echoed into an error never makes large trailers

_S = grpc.StatusCode


class Reason(str, enum.Enum):
    """An `ErrorInfo.reason`: the string on the wire (a program switches on it), the gRPC status it always
    comes with, and its meaning."""

    INVALID_PROMPT = "INVALID_PROMPT", _S.INVALID_ARGUMENT, \
        "a prompt is malformed or out of range; the `BadRequest` names its field (`prompts[2].box`)"
    INVALID_IMAGE = "INVALID_IMAGE", _S.INVALID_ARGUMENT, \
        "the image cannot be used (undecodable, empty, oversized, too elongated, an unsupported pixel format)"
    INVALID_IMAGE_ID = "INVALID_IMAGE_ID", _S.INVALID_ARGUMENT, \
        "the `image_id` is too long to be one (it is not echoed)"
    INVALID_PARAMETER = "INVALID_PARAMETER", _S.INVALID_ARGUMENT, \
        "a `SegmentEverything` option is out of range or not the model's; the `BadRequest` names it"
    MALFORMED_REQUEST = "MALFORMED_REQUEST", _S.INVALID_ARGUMENT, \
        "the request's bytes are not a valid protobuf message"
    IMAGE_NOT_FOUND = "IMAGE_NOT_FOUND", _S.NOT_FOUND, \
        "no embedding for the `image_id` (unknown or expired); the `ResourceInfo` names it: encode the image again"
    HANDLE_EXPIRED = "HANDLE_EXPIRED", _S.NOT_FOUND, \
        "the logits behind a `mask_from` handle are gone and too costly to make again; send the mask as data"
    NO_IMAGE_YET = "NO_IMAGE_YET", _S.FAILED_PRECONDITION, \
        "a prompt on a stream before any frame or `image_id`"
    QUEUE_FULL = "QUEUE_FULL", _S.RESOURCE_EXHAUSTED, \
        "the encode queue is full; retry after the `RetryInfo`'s delay"
    QUEUE_OUT_OF_MEMORY = "QUEUE_OUT_OF_MEMORY", _S.RESOURCE_EXHAUSTED, \
        "the job queue's Redis is at its memory limit; retry after the `RetryInfo`'s delay"
    QUOTA_RATE = "QUOTA_RATE", _S.RESOURCE_EXHAUSTED, \
        "the tenant is over its request rate; retry after the `RetryInfo`'s delay"
    QUOTA_STREAMS = "QUOTA_STREAMS", _S.RESOURCE_EXHAUSTED, \
        "the tenant has its limit of streams open on this replica"
    QUOTA_QUEUED_JOBS = "QUOTA_QUEUED_JOBS", _S.RESOURCE_EXHAUSTED, \
        "the tenant has its limit of images waiting for the encoder pool"
    QUOTA_EMBEDDING_BYTES = "QUOTA_EMBEDDING_BYTES", _S.RESOURCE_EXHAUSTED, \
        "the tenant holds its limit of embeddings; the `RetryInfo` says when the oldest expires"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE", _S.UNAVAILABLE, \
        "the embedding store (Redis) is unreachable; retry shortly"
    EMBEDDING_EVICTED = "EMBEDDING_EVICTED", _S.UNAVAILABLE, \
        "a crop's embedding left the store before it was decoded (the store is short of memory); retry"
    NOT_ENCODED_IN_TIME = "NOT_ENCODED_IN_TIME", _S.DEADLINE_EXCEEDED, \
        "the image was not encoded before the deadline (its job stays queued)"
    ENCODE_FAILED = "ENCODE_FAILED", _S.INTERNAL, \
        "the encoder pool gave up on the image (dead-lettered); the message says why"
    UNAUTHENTICATED = "UNAUTHENTICATED", _S.UNAUTHENTICATED, \
        "no credentials, an unknown or revoked key, or a client certificate mapped to no tenant"
    RPC_NOT_ALLOWED = "RPC_NOT_ALLOWED", _S.PERMISSION_DENIED, \
        "the key or certificate is not allowed this RPC"
    INVALID_TRACK_REQUEST = "INVALID_TRACK_REQUEST", _S.INVALID_ARGUMENT, \
        "a `TrackObjects` message out of place or malformed: `start` not first, an unknown or duplicate object, " \
        "a frame of another size"
    NOT_SUPPORTED_BY_MODEL = "NOT_SUPPORTED_BY_MODEL", _S.FAILED_PRECONDITION, \
        "the served model has no head for this call: `SegmentConcept` on SAM or SAM 2.1 (it needs SAM 3), " \
        "`SegmentEverything` on SAM 3 (it defines no automatic generator)"
    TRACKING_NOT_SUPPORTED = "TRACKING_NOT_SUPPORTED", _S.FAILED_PRECONDITION, \
        "`TrackObjects` on a model that cannot track video (SAM; it needs SAM 2.1)"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND", _S.NOT_FOUND, \
        "no tracking session by that id for this tenant (unknown, another tenant's, or expired): start a new one"
    SESSION_TAKEN_OVER = "SESSION_TAKEN_OVER", _S.ABORTED, \
        "the tracking session was resumed by another stream, which drives it now"
    STREAM_IDLE = "STREAM_IDLE", _S.DEADLINE_EXCEEDED, \
        "a WebSocket sent nothing for `MASKSERVE_HTTP_IDLE_S`: the stream is ended"
    SESSION_IDLE = "SESSION_IDLE", _S.DEADLINE_EXCEEDED, \
        "a `TrackObjects` stream sent nothing for `MASKSERVE_TRACK_IDLE_S`: its session is checkpointed, resume it"
    QUOTA_TRACKING_SESSIONS = "QUOTA_TRACKING_SESSIONS", _S.RESOURCE_EXHAUSTED, \
        "the tenant has its limit of tracking sessions open on this replica"
    QUOTA_TRACKED_OBJECTS = "QUOTA_TRACKED_OBJECTS", _S.RESOURCE_EXHAUSTED, \
        "the session tracks its limit of objects; remove one first"
    INTERNAL = "INTERNAL", _S.INTERNAL, \
        "an unforeseen failure (logged by the service)"

    def __new__(cls, wire: str, status: grpc.StatusCode, meaning: str) -> "Reason":
        member = str.__new__(cls, wire)
        member._value_ = wire
        member.status, member.meaning = status, meaning
        return member

    def __str__(self) -> str:
        return self.value

    @classmethod
    def quota(cls, kind: str) -> "Reason":
        """A tenant quota's reason, from its kind (`quotas.QuotaExceeded.reason`: rate, streams, ...)."""
        return cls(f"QUOTA_{kind.upper()}")


del _S


def reasons_table() -> str:
    """docs/api.md's table of the reasons, in `Reason`'s order."""
    rows = ["| reason | status | meaning |", "|---|---|---|"]
    rows += [f"| `{r.value}` | `{r.status.name}` | {r.meaning} |" for r in Reason]
    return "\n".join(rows) + "\n"


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit - 40]}… ({len(text)} characters, cut)"


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(max(0.001, seconds) * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def error_info(reason: Reason, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=Reason(reason).value, domain=DOMAIN, metadata=metadata)


def bad_request(field: str, description: str) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=clip(field, 200), description=clip(description))])


def resource_info(kind: str, name: str, description: str) -> error_details_pb2.ResourceInfo:
    return error_details_pb2.ResourceInfo(resource_type=kind, resource_name=clip(name, 200),
                                          description=clip(description))


def status(code: grpc.StatusCode, message: str, details: list) -> grpc.Status:
    packed = []
    for d in details:
        packed.append(any_pb2.Any())
        packed[-1].Pack(d)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=clip(message), details=packed))
