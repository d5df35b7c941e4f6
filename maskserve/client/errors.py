"""Errors a program can act on: the service's statuses with their `google.rpc` details, as typed exceptions.

The service attaches to every error an `ErrorInfo` (a stable `reason`, domain maskserve.io), and where they
apply a `BadRequest` (the field, with the prompt's index), a `ResourceInfo` (the unknown image) and a
`RetryInfo` (how long to wait); `maskserve.service.errors` makes them. The Python clients raise them as the
classes below, which are also `grpc.RpcError`s with `code()` and `details()`, so code written against plain
gRPC errors keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str  # e.g. "prompts[2].box"
    description: str


class MaskserveError(grpc.RpcError):
    """A failed call: `code()`, `details()` as on any grpc.RpcError, plus what the service said about it."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", metadata: dict | None = None,
                 retry_after_s: float | None = None, field_violations: tuple = (), resource: str | None = None,
                 trailing_metadata=None):
        super().__init__(f"{code.name}: {message}")
        self._code, self._message = code, message
        self.reason = reason  # ErrorInfo.reason, e.g. IMAGE_NOT_FOUND, QUOTA_RATE, INVALID_PROMPT
        self.metadata = metadata or {}
        self.retry_after_s = retry_after_s  # RetryInfo: how long to wait before trying again
        self.field_violations = field_violations  # BadRequest
        self.resource = resource  # ResourceInfo.resource_name (the image_id not found)
        self._trailing = trailing_metadata

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self):  # the rich status as sent, for grpc_status.rpc_status.from_call
        return self._trailing


class InvalidArgument(MaskserveError):
    pass


class NotFound(MaskserveError):
    pass


class ResourceExhausted(MaskserveError):
    pass


class Unavailable(MaskserveError):
    pass


class Unauthenticated(MaskserveError):
    pass


class PermissionDenied(MaskserveError):
    pass


class DeadlineExceeded(MaskserveError):
    pass


_CLASSES = {grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument, grpc.StatusCode.NOT_FOUND: NotFound,
            grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted, grpc.StatusCode.UNAVAILABLE: Unavailable,
            grpc.StatusCode.UNAUTHENTICATED: Unauthenticated, grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
            grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded}


def from_rpc_error(error: grpc.RpcError) -> MaskserveError:
    """The typed error for a failed call (sync or asyncio), with its rich details unpacked."""
    if isinstance(error, MaskserveError):  # already typed (a nested call)
        return error
    code, message = error.code(), error.details() or ""
    fields: dict = {}
    found = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    for detail in found.details if found is not None else ():
        for kind, take in ((error_details_pb2.ErrorInfo, lambda d: fields.update(reason=d.reason,
                                                                                  metadata=dict(d.metadata))),
                           (error_details_pb2.RetryInfo, lambda d: fields.update(
                               retry_after_s=d.retry_delay.ToNanoseconds() / 1e9)),
                           (error_details_pb2.BadRequest, lambda d: fields.update(field_violations=tuple(
                               FieldViolation(v.field, v.description) for v in d.field_violations))),
                           (error_details_pb2.ResourceInfo, lambda d: fields.update(resource=d.resource_name))):
            if detail.Is(kind.DESCRIPTOR):
                unpacked = kind()
                detail.Unpack(unpacked)
                take(unpacked)
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return _CLASSES.get(code, MaskserveError)(code, message, trailing_metadata=trailing, **fields)
