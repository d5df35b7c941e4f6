"""What every RPC goes through, one concern at a time and the same for every method: its span, its metrics,
its failures mapped to statuses, who is calling, and admission by its tenant's quotas.

A handler (`rpcs/`) receives its request and a `Call`, which names the caller: identity travels as an
argument, never as ambient state. Each concern wraps the whole call (`around`) and, for streaming calls,
runs again before each response (`each`): so a long call is re-authenticated as it goes, and a method added
later gets every concern without asking for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc

from . import access, failures, metrics, quotas, tracing
from .proto import pb
from .tracing import tracer

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmenter"].full_name


@dataclass
class Call:
    """One RPC as a handler sees it."""
    rpc: str
    context: object  # grpc.aio.ServicerContext
    streaming: bool  # responses are streamed (the call counts as one of its tenant's open streams)
    per_message: bool  # requests are streamed: each message is a request (for the rate and the metrics)
    caller: access.Caller = access.NOBODY
    code: grpc.StatusCode = grpc.StatusCode.OK  # the final status, for the metrics
    recheck: Callable[[], None] = field(default=lambda: None)  # credentials again; raises AccessError

    @property
    def tenant(self) -> str:
        return self.caller.tenant

    def message_done(self, code: grpc.StatusCode, started: float) -> None:
        """One message of a per-message call answered (its own status and latency)."""
        metrics.REQUEST_LATENCY.labels(self.rpc).observe(time.perf_counter() - started)
        failures.count(self.rpc, code, self.tenant)


class Tracing:
    """The call's span, a child of the caller's (`traceparent` metadata) when it sent one."""

    @contextlib.asynccontextmanager
    async def around(self, call: Call):
        with tracer.start_as_current_span(
                f"{SERVICE_NAME}/{call.rpc}", context=tracing.from_metadata(call.context.invocation_metadata()),
                kind=tracing.SERVER, attributes={"rpc.system": "grpc", "rpc.method": call.rpc}):
            yield

    def each(self, call: Call) -> None:
        pass


class Metrics:
    """In flight, latency and the final status by tenant (per message where each message is a request)."""

    @contextlib.asynccontextmanager
    async def around(self, call: Call):
        metrics.IN_FLIGHT.inc()
        start = time.perf_counter()
        try:
            yield
        finally:
            metrics.IN_FLIGHT.dec()
            if not call.per_message or call.code != grpc.StatusCode.OK:  # a stream's end is not a message
                metrics.REQUEST_LATENCY.labels(call.rpc).observe(time.perf_counter() - start)
                failures.count(call.rpc, call.code, call.tenant)

    def each(self, call: Call) -> None:
        pass


class Errors:
    """Every failure leaves with its status, message and details (`failures`); nothing crashes the server."""

    @contextlib.asynccontextmanager
    async def around(self, call: Call):
        try:
            yield
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            call.code, status = failures.outcome(exc, call.tenant)
            await call.context.abort_with_status(status)

    def each(self, call: Call) -> None:
        pass


class Authentication:
    """The caller from its API key or client certificate (the access file), allowed this RPC; checked again
    before each streamed response and, by handlers that take messages, before each message."""

    def __init__(self, access_file: access.AccessFile | None, anonymous: access.Caller) -> None:
        self.access_file, self.anonymous = access_file, anonymous

    def _authenticate(self, call: Call) -> access.Caller:
        caller = self.access_file.authenticate(call.context.invocation_metadata(), call.context.auth_context)
        if not caller.may(call.rpc):
            call.caller = caller  # a refusal is counted under its tenant
            raise access.AccessError(True, f"{caller.name!r} (tenant {caller.tenant!r}) may not call {call.rpc}")
        return caller

    def _recheck(self, call: Call) -> None:
        now = self._authenticate(call)
        if now.tenant != call.tenant:
            raise access.AccessError(False, "the call's credentials now belong to another tenant; call again")
        call.caller = now

    @contextlib.asynccontextmanager
    async def around(self, call: Call):
        if self.access_file is None:
            call.caller = self.anonymous
        else:
            call.caller = self._authenticate(call)
            call.recheck = lambda: self._recheck(call)
        yield

    def each(self, call: Call) -> None:
        call.recheck()


class Admission:
    """The tenant's rate (one request per call, or per message where messages are requests) and its open
    streams, counted on this replica."""

    def __init__(self, local: quotas.Local) -> None:
        self.local = local

    @contextlib.asynccontextmanager
    async def around(self, call: Call):
        if not call.per_message:
            self.local.admit(call.caller)
        close = self.local.open_stream(call.caller) if call.streaming else None
        try:
            yield
        finally:
            if close is not None:
                close()

    def each(self, call: Call) -> None:
        pass


@contextlib.asynccontextmanager
async def chain(concerns: list, call: Call):
    """Every concern around one call, the first outermost."""
    async with contextlib.AsyncExitStack() as stack:
        for concern in concerns:
            await stack.enter_async_context(concern.around(call))
        yield


def each(concerns: list, call: Call) -> None:
    for concern in concerns:
        concern.each(call)


def invoker(service, concerns: list, method):
    """A method of the proto's service, behind every concern, for any transport (gRPC, HTTP): `run(request,
    context)` → the response (a coroutine), or the responses (an async generator) where they are streamed.
    `request()` makes the request inside the concerns (a malformed one fails as any bad input does); a
    client-streaming method's is the requests' async iterator."""
    from . import rpcs

    rpc, impl = method.name, rpcs.handler(method.name)
    kind = dict(streaming=method.server_streaming, per_message=method.client_streaming)
    if method.server_streaming:
        async def run(request, context):
            call = Call(rpc, context, **kind)
            async with chain(concerns, call):
                async for response in impl(service, request(), call):
                    each(concerns, call)
                    yield response
    else:
        async def run(request, context):
            call = Call(rpc, context, **kind)
            async with chain(concerns, call):
                return await impl(service, request(), call)
    return run
