"""OpenTelemetry spans along a request's whole path: the RPC (continuing an incoming `traceparent`), the
queue (the trace context rides in the job entry), the encoder's batch (linked to every job's trace), the
store, the decode and the post-processing.

Exported by OTLP/gRPC when `MASKSERVE_OTLP_ENDPOINT` is set (the SDK and exporter are the `tracing` extra);
otherwise nothing is loaded but the API, whose spans are no-ops: no recording, no export, about a
microsecond per span (the bench measures it).
"""

from __future__ import annotations

import logging

from opentelemetry import context, propagate, trace

log = logging.getLogger("maskserve.tracing")
tracer = trace.get_tracer("maskserve")
SERVER = trace.SpanKind.SERVER


def setup(service_name: str, endpoint: str) -> bool:
    """Export spans to `endpoint` (host:port of an OTLP/gRPC collector); False (no-op spans) without one."""
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    log.info("tracing: spans to %s", endpoint)
    return True


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()  # flushes what is still buffered


def from_metadata(metadata) -> context.Context:
    """The caller's trace context from gRPC metadata (`traceparent`, `tracestate`)."""
    return propagate.extract({k: v for k, v in metadata or () if isinstance(v, str)})


def carrier() -> dict[str, str]:
    """The current trace context as entry fields (W3C `traceparent`), to send along with a job."""
    fields: dict[str, str] = {}
    propagate.inject(fields)
    return fields


def _job_context(fields: dict):
    """The span context a job entry carries (its `traceparent` field), or None."""
    carried = {k.decode(): v.decode() for k, v in fields.items() if k in (b"traceparent", b"tracestate")}
    if not carried:
        return None
    found = trace.get_current_span(propagate.extract(carried)).get_span_context()
    return found if found.is_valid else None


def job_span(name: str, entries: list):
    """A span for work on queued jobs: the child of the request's span when it serves one job, else in a trace
    of its own with a link to each job's (a batch serves many requests)."""
    carried = [c for c in map(_job_context, entries) if c is not None]
    attributes = {"jobs": len(entries)}
    if len(entries) == 1 and carried:
        return tracer.start_as_current_span(name, context=trace.set_span_in_context(
            trace.NonRecordingSpan(carried[0])), attributes=attributes)
    return tracer.start_as_current_span(name, links=[trace.Link(c) for c in carried], attributes=attributes)


class Collector:
    """A minimal OTLP/gRPC trace collector that keeps what it receives: for tests and the bench."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans: list = []  # (service name, span) of every span received
        collector = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                for resource_spans in request.resource_spans:
                    service = next((a.value.string_value for a in resource_spans.resource.attributes
                                    if a.key == "service.name"), "")
                    for scope in resource_spans.scope_spans:
                        collector.spans.extend((service, span) for span in scope.spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(None)
