"""A minimal OTLP trace receiver for tests: engines in other processes export to it with the
official exporters (``OTEL_EXPORTER_OTLP_ENDPOINT=collector.url``, over HTTP; plus
``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` and ``collector.grpc_url`` over gRPC), and it keeps every
span it is sent, decoded from the protobuf, so a test checks what a real collector would get.

Over HTTP only ``POST /v1/traces`` with ``application/x-protobuf`` (optionally gzip) is served;
anything else is answered 404 or 400 so a misconfigured exporter shows in the engine's log.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

SPAN_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUS_CODES = {0: "unset", 1: "ok", 2: "error"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        out[pair.key] = _value(pair.value)
    return out


@dataclass(frozen=True)
class CollectedSpan:
    """One exported span, with ids as lower-case hex."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status: str
    status_message: str
    resource: dict[str, Any] = field(default_factory=dict)
    transport: str = "http"
    """How it came: ``http`` or ``grpc``."""


class TraceCollector(ThreadingHTTPServer):
    """Receives OTLP/HTTP trace exports on a free loopback port."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[CollectedSpan] = []
        self._lock = threading.Lock()
        self.grpc = grpc.server(ThreadPoolExecutor(max_workers=4))
        add_TraceServiceServicer_to_server(_GrpcService(self), self.grpc)  # type: ignore[no-untyped-call]
        self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")

    @property
    def url(self) -> str:
        """Where OTLP over HTTP goes (the exporter adds ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def grpc_url(self) -> str:
        """Where OTLP over gRPC goes (plain text: the ``http`` scheme)."""
        return f"http://127.0.0.1:{self.grpc_port}"

    def take(self, request: ExportTraceServiceRequest, transport: str = "http") -> None:
        found = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    found.append(
                        CollectedSpan(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex() or None,
                            name=s.name,
                            kind=SPAN_KINDS.get(s.kind, str(s.kind)),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes=_attributes(s.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in s.events],
                            status=STATUS_CODES.get(s.status.code, str(s.status.code)),
                            status_message=s.status.message,
                            resource=resource,
                            transport=transport,
                        )
                    )
        with self._lock:
            self.spans.extend(found)

    def snapshot(self) -> list[CollectedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(
        self, found: Callable[[list[CollectedSpan]], bool], timeout: float = 30
    ) -> list[CollectedSpan]:
        """The spans so far once ``found(spans)`` holds; raises ``AssertionError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({(s.name, s.attributes.get("linkflow.execution.id")) for s in spans}, key=str)
                raise AssertionError(f"spans not there after {timeout}s; got {len(spans)}: {names}")
            time.sleep(0.1)


class _GrpcService(TraceServiceServicer):
    """``TraceService/Export`` over gRPC, into the same collector."""

    def __init__(self, collector: TraceCollector) -> None:
        self.collector = collector

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
        self.collector.take(request, "grpc")
        return ExportTraceServiceResponse()


class _Handler(BaseHTTPRequestHandler):
    server: TraceCollector

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path != "/v1/traces":
            self._answer(404, b"")
            return
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - any undecodable body is the exporter's error: a 400
            self._answer(400, b"")
            return
        self.server.take(request)
        self._answer(200, ExportTraceServiceResponse().SerializeToString())

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def collect() -> Iterator[TraceCollector]:
    """A running collector for a fixture; shut down after."""
    server = TraceCollector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.grpc.start()
    try:
        yield server
    finally:
        server.grpc.stop(grace=None)
        server.shutdown()
        server.server_close()
