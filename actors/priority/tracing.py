"""OpenTelemetry spans of the bus-priority path: one per request, from position to controller.

A span starts when a member receives the position that checks a bus in and
ends when the crossroad's lane answers, the controller's write acknowledged;
its attributes are the decision (``priority.granted``, ``priority.reason``,
``priority.strategy``) and what it was about (bus, line, crossroad, approach,
request id).

The exporter is chosen by ``COMMANDPOST_PRIORITY_TRACES`` in the member's
environment: ``none`` (the default: no span is even created), ``console``
(spans printed as JSON lines by the SDK's console exporter) or ``memory``
(kept in the process, counted; the benches measure the overhead with it on).
Spans are handed to a batch processor, never exported on the critical path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry.sdk.trace import Span, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, Tracer

__all__ = ["ENV", "EXPORTERS", "configure", "decided", "exported", "fail", "start"]

ENV: Final = "COMMANDPOST_PRIORITY_TRACES"
EXPORTERS: Final = ("none", "console", "memory")

_tracer: Tracer | None = None
_memory: InMemorySpanExporter | None = None
_configured = False


def configure(exporter: str | None = None) -> None:
    """Set the exporter (by default from :data:`ENV`); ``none`` turns tracing off."""
    global _tracer, _memory, _configured
    name = (exporter if exporter is not None else os.environ.get(ENV, "none")).strip().lower()
    if name not in EXPORTERS:
        raise ValueError(f"{ENV}={name!r}: expected one of {', '.join(EXPORTERS)}")
    _configured = True
    _tracer, _memory = None, None
    if name == "none":
        return
    provider = TracerProvider()
    out: SpanExporter
    if name == "memory":
        _memory = out = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(out))
    else:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    _tracer = provider.get_tracer("commandpost.priority")


def start(bus_id: str, line: str, crossroad: str, approach: int, request_id: int,
          received_ns: int) -> Span | None:
    """A span for a request of ``bus_id``, begun when its position was received
    (``received_ns``, ``time.time_ns()``), or None when tracing is off."""
    if not _configured:
        configure()
    if _tracer is None:
        return None
    span = _tracer.start_span("priority.request", start_time=received_ns, attributes={
        "priority.bus": bus_id, "priority.line": line, "priority.crossroad": crossroad,
        "priority.approach": approach, "priority.request_id": request_id})
    return span if isinstance(span, Span) else None


def decided(span: Span | None, answer: Mapping[str, Any]) -> None:
    """End ``span`` with the lane's decision as its attributes."""
    if span is None:
        return
    span.set_attributes({"priority.granted": bool(answer.get("granted")),
                         "priority.reason": str(answer.get("reason") or ""),
                         "priority.strategy": str(answer.get("strategy") or "")})
    span.end()


def fail(span: Span | None, error: str) -> None:
    """End ``span`` as failed (the lane could not be reached or refused the message)."""
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, error))
        span.end()


def exported() -> int:
    """Spans the ``memory`` exporter holds (0 with any other)."""
    return len(_memory.get_finished_spans()) if _memory is not None else 0
