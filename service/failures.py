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

log = logging.getLogger("maskserve.decoder")


class ServiceError(Exception):
    """A status with its message, a stable reason (google.rpc.ErrorInfo) and any other details."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str, *details) -> None:
        super().__init__(message)
        self.code, self.reason, self.details = code, reason, list(details)


def unknown_image(image_id: str, why: str = "unknown, or expired from the store") -> ServiceError:
    message = f"no embedding for image_id {image_id!r} ({why}); send the image with EncodeImage again"
    return ServiceError(grpc.StatusCode.NOT_FOUND, message, "IMAGE_NOT_FOUND",
                        errors.resource_info("maskserve.v1.Embedding", image_id, message))


def explain(exc: BaseException) -> tuple[grpc.StatusCode, str, list]:
    """(status, message, google.rpc details) for any failure; anything unforeseen is INTERNAL, and logged."""
    if isinstance(exc, ServiceError):
        return exc.code, str(exc), [errors.error_info(exc.reason), *exc.details]
    if isinstance(exc, quotas.QuotaExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), [
            errors.error_info(f"QUOTA_{exc.reason.upper()}", tenant=access.caller().tenant),
            errors.retry_info(exc.retry_after_s)]
    if isinstance(exc, access.AccessError):
        if exc.denied:
            return grpc.StatusCode.PERMISSION_DENIED, str(exc), [errors.error_info("RPC_NOT_ALLOWED")]
        return grpc.StatusCode.UNAUTHENTICATED, str(exc), [errors.error_info("UNAUTHENTICATED")]
    if isinstance(exc, prompts.PromptError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), [
            errors.error_info("INVALID_PROMPT"), errors.bad_request(exc.field or "prompts", str(exc))]
    if isinstance(exc, images.ImageError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), [
            errors.error_info("INVALID_IMAGE"), errors.bad_request("image", str(exc))]
    if isinstance(exc, automatic.ParameterError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), [
            errors.error_info("INVALID_PARAMETER"), errors.bad_request(f"options.{exc.parameter}", str(exc))]
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ConnectionError)):
        return grpc.StatusCode.UNAVAILABLE, "the embedding store (Redis) is unavailable; retry shortly", [
            errors.error_info("STORE_UNAVAILABLE"), errors.retry_info(1.0)]
    if isinstance(exc, redis.ResponseError) and ("maxmemory" in str(exc) or str(exc).startswith("OOM")):
        # a `noeviction` Redis at its memory limit refuses writes: back off, like a full queue
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "the job queue's Redis is out of memory; retry later", [
            errors.error_info("QUEUE_OUT_OF_MEMORY"), errors.retry_info(5.0)]
    if isinstance(exc, refinement.HandleExpired):
        return grpc.StatusCode.NOT_FOUND, str(exc), [errors.error_info("HANDLE_EXPIRED")]
    if isinstance(exc, asyncio.TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the image was encoded", [
            errors.error_info("NOT_ENCODED_IN_TIME")]
    log.exception("unexpected error")
    return grpc.StatusCode.INTERNAL, f"internal error: {exc.__class__.__name__}: {exc}", [
        errors.error_info("INTERNAL")]


def stream_error(exc: BaseException) -> tuple[grpc.StatusCode, "object"]:
    """A failure reported on one stream message (the stream goes on): its status and the `Error` to send."""
    from .proto import pb

    code, message, _ = explain(exc)
    refused(exc)
    error = pb.Error(code=code.value[0], message=errors.clip(message))
    if isinstance(exc, quotas.QuotaExceeded):
        error.retry_after_ms = max(1, round(exc.retry_after_s * 1000))
    return code, error


def outcome(exc: BaseException) -> tuple[grpc.StatusCode, object]:
    """A failed call's status code and the google.rpc Status to abort it with; refusals counted as such."""
    code, message, details = explain(exc)
    refused(exc)
    return code, errors.status(code, message, details)


def count(rpc: str, code: grpc.StatusCode) -> None:
    """One finished call (or stream message), by final status and tenant."""
    metrics.REQUESTS.labels(rpc, code.name, access.caller().tenant).inc()


def refused(exc: BaseException) -> None:
    """A call turned away before any work (authentication, permission, quota) is counted as such."""
    if isinstance(exc, quotas.QuotaExceeded):
        reason = exc.reason
    elif isinstance(exc, access.AccessError):
        reason = "permission_denied" if exc.denied else "unauthenticated"
    else:
        return
    metrics.REJECTED.labels(access.caller().tenant, reason).inc()
