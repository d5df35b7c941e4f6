"""What the decoder service answers for each way a call can fail: a gRPC status, a message, and google.rpc
details — an ErrorInfo with a stable reason on every one (a program switches on it), the field for bad
input, how long to wait for a retry. One table, so every RPC and every stream message fails the same way."""

from __future__ import annotations

import asyncio
import logging

import grpc
import redis

from maskserve.engines import automatic, prompts

from . import access, errors, images, metrics, quotas, refinement
from .errors import Reason

log = logging.getLogger("maskserve.decoder")


class ServiceError(Exception):
    """A failure with its stable reason (google.rpc.ErrorInfo), which sets its status, its message and any other
    details."""

    def __init__(self, reason: Reason, message: str, *details) -> None:
        super().__init__(message)
        self.reason = Reason(reason)
        self.code, self.details = self.reason.status, list(details)


def unknown_image(image_id: str, why: str = "unknown, or expired from the store") -> ServiceError:
    message = f"no embedding for image_id {image_id!r} ({why}); send the image with EncodeImage again"
    return ServiceError(Reason.IMAGE_NOT_FOUND, message,
                        errors.resource_info("maskserve.v1.Embedding", image_id, message))


def explain(exc: BaseException, tenant: str = "") -> tuple[grpc.StatusCode, str, list]:
    """(status, message, google.rpc details) for any failure; anything unforeseen is INTERNAL, and logged. The
    status is the reason's (`errors.Reason`)."""
    reason, message, details = _reason(exc)
    metadata = {"tenant": tenant} if isinstance(exc, quotas.QuotaExceeded) else {}
    return reason.status, message, [errors.error_info(reason, **metadata), *details]


def _reason(exc: BaseException) -> tuple[Reason, str, list]:
    """(reason, message, the details after the ErrorInfo) for any failure."""
    if isinstance(exc, ServiceError):
        return exc.reason, str(exc), exc.details
    if isinstance(exc, quotas.QuotaExceeded):
        return Reason.quota(exc.reason), str(exc), [errors.retry_info(exc.retry_after_s)]
    if isinstance(exc, access.AccessError):
        return (Reason.RPC_NOT_ALLOWED if exc.denied else Reason.UNAUTHENTICATED), str(exc), []
    if isinstance(exc, prompts.PromptError):
        return Reason.INVALID_PROMPT, str(exc), [errors.bad_request(exc.field or "prompts", str(exc))]
    if isinstance(exc, images.ImageError):
        return Reason.INVALID_IMAGE, str(exc), [errors.bad_request("image", str(exc))]
    if isinstance(exc, automatic.ParameterError):
        return Reason.INVALID_PARAMETER, str(exc), [errors.bad_request(f"options.{exc.parameter}", str(exc))]
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ConnectionError)):
        return (Reason.STORE_UNAVAILABLE, "the embedding store (Redis) is unavailable; retry shortly",
                [errors.retry_info(1.0)])
    if isinstance(exc, redis.ResponseError) and ("maxmemory" in str(exc) or str(exc).startswith("OOM")):
        # a `noeviction` Redis at its memory limit refuses writes: back off, like a full queue
        return (Reason.QUEUE_OUT_OF_MEMORY, "the job queue's Redis is out of memory; retry later",
                [errors.retry_info(5.0)])
    if isinstance(exc, refinement.HandleExpired):
        return Reason.HANDLE_EXPIRED, str(exc), []
    if isinstance(exc, asyncio.TimeoutError):
        return Reason.NOT_ENCODED_IN_TIME, "the deadline passed before the image was encoded", []
    log.exception("unexpected error")
    return Reason.INTERNAL, f"internal error: {exc.__class__.__name__}: {exc}", []


def stream_error(exc: BaseException, tenant: str) -> tuple[grpc.StatusCode, "object"]:
    """A failure reported on one stream message (the stream goes on): its status and the `Error` to send."""
    from .proto import pb

    code, message, _ = explain(exc, tenant)
    refused(exc, tenant)
    error = pb.Error(code=code.value[0], message=errors.clip(message))
    if isinstance(exc, quotas.QuotaExceeded):
        error.retry_after_ms = max(1, round(exc.retry_after_s * 1000))
    return code, error


def outcome(exc: BaseException, tenant: str) -> tuple[grpc.StatusCode, object]:
    """A failed call's status code and the google.rpc Status to abort it with; refusals counted as such."""
    code, message, details = explain(exc, tenant)
    refused(exc, tenant)
    return code, errors.status(code, message, details)


def count(rpc: str, code: grpc.StatusCode, tenant: str) -> None:
    """One finished call (or stream message), by final status and tenant."""
    metrics.REQUESTS.labels(rpc, code.name, tenant).inc()


def refused(exc: BaseException, tenant: str) -> None:
    """A call turned away before any work (authentication, permission, quota) is counted as such."""
    if isinstance(exc, quotas.QuotaExceeded):
        reason = exc.reason
    elif isinstance(exc, access.AccessError):
        reason = "permission_denied" if exc.denied else "unauthenticated"
    else:
        return
    metrics.REJECTED.labels(tenant, reason).inc()
