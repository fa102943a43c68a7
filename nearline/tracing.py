"""One trace per job, across processes: OpenTelemetry spans from submit to the job's end.

The API's ``nearline.submit`` span is the root of a job's trace; its W3C ``traceparent`` rides in
the request message (docs/api.md, Wire messages) and, from the worker on, in the result message.
In the job's trace:

====================  ==================================================  ===========
span                  from → to                                           process
====================  ==================================================  ===========
``nearline.submit``   the submit call → the job recorded and queued       API
``nearline.enqueue``  record created → request message sent              API
``nearline.queue``    the message's ``enqueued_at`` → a worker received   worker
``nearline.compute``  its batch's computation (links the batch span)      worker
``nearline.publish``  computed → result message sent                      worker
``nearline.end``      result sent → the lifecycle ended the job           lifecycle
====================  ==================================================  ===========

A worker's ``nearline.batch`` span is a trace of its own (one batch serves many jobs): it links
every job's trace, and its children are one ``nearline.step`` span per pipeline step. The worker
and lifecycle spans are written after the fact from the hop stamps (:mod:`nearline.hops`), so
the loop and the pipeline runner carry no tracing code.

Configured by the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``: one JSON
line per span on stdout; ``none``), ``OTEL_EXPORTER_OTLP_ENDPOINT`` (alone it means ``otlp``),
``OTEL_SERVICE_NAME``, ``OTEL_SDK_DISABLED``; and ``APPLICATIONINSIGHTS_CONNECTION_STRING``: the
Azure Monitor distro (the optional extra ``nearline[azure-monitor]``); :mod:`nearline.trace_config`
reads them. With none of them set, tracing is off: OpenTelemetry is not imported and every
function here returns at once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, Span, Tracer

    from nearline.jobs import JobRecord
    from nearline.messages import RequestMessage, ResultMessage

P = ParamSpec("P")
R = TypeVar("R")

_UNSET: Any = object()
_tracer: Any = _UNSET  # Tracer, or None when off; decided on first use
_lock = threading.Lock()
_OFF = nullcontext()  # reusable: what span() returns when tracing is off


# --- configuration ------------------------------------------------------------------------


def install(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (an application's own, or an in-memory one); None: off."""
    global _tracer
    with _lock:
        _tracer = None if provider is None else provider.get_tracer("nearline")


def reset() -> None:
    """Forget the tracer: the next span reads the environment again."""
    global _tracer
    with _lock:
        _tracer = _UNSET


def tracer() -> Tracer | None:
    """The tracer, set up from the environment on first use; None when tracing is off."""
    global _tracer
    if _tracer is _UNSET:
        with _lock:
            if _tracer is _UNSET:
                provider = _from_env()
                _tracer = None if provider is None else provider.get_tracer("nearline")
    return _tracer  # type: ignore[no-any-return]


def _from_env() -> TracerProvider | None:
    from nearline import trace_config

    return trace_config.configure(os.environ) if trace_config.enabled_by(os.environ) else None


# --- spans --------------------------------------------------------------------------------


def traced(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run the decorated coroutine function in a span ``name`` (none when tracing is off)."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            t = tracer()
            if t is None:
                return await fn(*args, **kwargs)
            with t.start_as_current_span(name):
                return await fn(*args, **kwargs)

        return call

    return wrap


def span(name: str, job: JobRecord | None = None) -> AbstractContextManager[object]:
    """A span ``name`` around a ``with`` block, child of the current one, naming ``job`` if
    given; when tracing is off, one shared context that does nothing."""
    t = tracer()
    if t is None:
        return _OFF
    attrs = None if job is None else _job_attrs(job.id, job.pipeline, job.deployment, job.priority)
    return t.start_as_current_span(name, attributes=attrs)


def traceparent() -> str | None:
    """The current span as a W3C ``traceparent``; None when tracing is off or no span is open."""
    if tracer() is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def stamped(message: RequestMessage) -> RequestMessage:
    """``message`` carrying the current span's ``traceparent`` (itself when tracing is off)."""
    parent = traceparent()
    return message if parent is None else dataclasses.replace(message, traceparent=parent)


def batch(
    messages: Sequence[RequestMessage],
    received: Mapping[str, float],
    started: float,
    finished: float,
    timings: Mapping[str, float],
) -> None:
    """A worker computed ``messages`` (one pipeline deployment) from ``started`` to ``finished``:
    the batch span with a step span per step (``timings``: step → ms, in order), and in each
    job's trace its wait in the queue and its computation (linked to the batch span)."""
    t = tracer()
    if t is None or not messages:
        return
    from opentelemetry import trace

    parents = [_context(m.traceparent) for m in messages]
    root = _batch_span(t, messages, parents, started, finished, timings)
    to_batch = [trace.Link(root.get_span_context())]
    for m, parent in zip(messages, parents, strict=True):
        if parent is not None:
            job = _job_attrs(m.id, m.pipeline, m.deployment, m.priority)
            _span(t, "nearline.queue", parent, m.enqueued_at, received.get(m.id, started), job)
            _span(t, "nearline.compute", parent, started, finished, job, to_batch)


def _batch_span(
    t: Tracer,
    messages: Sequence[RequestMessage],
    parents: Sequence[Context | None],
    started: float,
    finished: float,
    timings: Mapping[str, float],
) -> Span:
    """The ``nearline.batch`` span (a trace of its own, linking every job's) and its steps."""
    from opentelemetry import trace

    links = [trace.Link(trace.get_current_span(c).get_span_context()) for c in parents if c is not None]
    attrs: dict[str, Any] = _job_attrs(None, messages[0].pipeline, messages[0].deployment, None)
    attrs["nearline.batch_size"] = len(messages)
    root = t.start_span("nearline.batch", _root(), links=links, attributes=attrs, start_time=_ns(started))
    inside, at = trace.set_span_in_context(root), started
    for step, ms in timings.items():
        end = min(at + ms / 1000, finished)
        _span(t, "nearline.step", inside, at, end, {"nearline.step": step})
        at = end
    root.end(end_time=_ns(finished))
    return root


def published(results: Sequence[ResultMessage], at: float) -> None:
    """Results were sent at ``at``: a publish span in each job's trace."""
    t = tracer()
    if t is None:
        return
    for r in results:
        parent = _context(r.traceparent)
        if parent is not None:
            _span(t, "nearline.publish", parent, r.finished_at or at, at, {"nearline.job_id": r.id})


def ended(results: Sequence[tuple[ResultMessage, float | None]], at: float) -> None:
    """The lifecycle ended these jobs at ``at`` (each result with when it was sent)."""
    t = tracer()
    if t is None:
        return
    for r, sent in results:
        parent = _context(r.traceparent)
        if parent is None:
            continue
        attrs = {"nearline.job_id": r.id, "nearline.status": r.status}
        if r.error:
            attrs["nearline.error"] = str(r.error.get("code", ""))
        _span(t, "nearline.end", parent, sent if sent is not None else at, at, attrs)


def _span(
    t: Tracer,
    name: str,
    parent: Context,
    start: float,
    end: float,
    attrs: dict[str, Any],
    links: Sequence[Link] = (),
) -> None:
    """A span written after the fact, from ``start`` to ``end`` (epoch seconds)."""
    s = t.start_span(name, parent, links=links, attributes=attrs, start_time=_ns(start))
    s.end(end_time=_ns(max(end, start)))


def _context(traceparent: str | None) -> Context | None:
    """The remote parent ``traceparent`` names; None without one (or a malformed one)."""
    if not traceparent:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ctx = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def _root() -> Context:
    from opentelemetry.context import Context

    return Context()  # no parent: a new trace


def _job_attrs(job_id: str | None, pipeline: str, deployment: str | None, lane: str | None) -> dict[str, str]:
    attrs = {"nearline.pipeline": pipeline, "nearline.deployment": deployment or ""}
    if job_id is not None:
        attrs["nearline.job_id"] = job_id
    if lane is not None:
        attrs["nearline.lane"] = lane
    return attrs


def _ns(epoch_s: float) -> int:
    return int(epoch_s * 1e9)
