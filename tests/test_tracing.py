"""One trace per job (nearline/tracing.py, nearline/trace_config.py): in process with the SDK's
in-memory exporter, and across a real ``nearline serve`` (API + lifecycle process, worker
process) with the console exporter, whose one JSON line per span the test reads back from the
server's output."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from serving import running_server
from waiting import wait_until

from nearline import trace_config, tracing
from nearline.brokers.memory import MemoryBroker
from nearline.constants import REQUEST_QUEUE
from nearline.jobs import JobRecord, JobStatus
from nearline.lifecycle import Lifecycle
from nearline.messages import RequestMessage, ResultMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines
from nearline.store.memory import MemoryStore
from nearline.store_jobs import StoreJobs
from nearline.worker import Worker
from orchestrations.azure_status import orchestrator_input

TWO_STEPS = """\
pipelines:
  twice:
    input_schema: {type: object}
    deployment:
      name: v1
      steps:
        - {name: first, function: "nearline.examples.identity:identity", batch: true}
        - {name: second, function: "nearline.examples.identity:identity", batch: true}
"""
JOB_SPANS = {"nearline.submit", "nearline.enqueue", "nearline.queue", "nearline.compute"}
JOB_SPANS |= {"nearline.publish", "nearline.end"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def memory_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.reset()


def pipelines(tmp_path: Path) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(TWO_STEPS)
    return path


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "exporters", "on"),
    [
        ({}, [], False),
        ({"OTEL_TRACES_EXPORTER": "none"}, [], False),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"], True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"], True),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"], True),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, [], False),
        ({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}, [], True),
    ],
)
def test_the_standard_variables_turn_tracing_on(
    environ: dict[str, str], exporters: list[str], on: bool
) -> None:
    assert trace_config.exporters(environ) == exporters
    assert trace_config.enabled_by(environ) is on


def test_off_nothing_is_imported_and_every_call_returns_at_once() -> None:
    code = (
        "import sys\n"
        "from nearline import tracing\n"
        "from nearline.messages import RequestMessage\n"
        "import nearline.store_jobs, nearline.worker.loop, nearline.lifecycle\n"
        "m = RequestMessage('j', 'p', {}, 1.0)\n"
        "assert tracing.stamped(m) is m and tracing.traceparent() is None\n"
        "with tracing.span('x'):\n"
        "    pass\n"
        "tracing.batch([m], {}, 1.0, 2.0, {'s': 1.0}); tracing.published([], 1.0); tracing.ended([], 1.0)\n"
        "print(sorted(n for n in sys.modules if n.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APPLICATIONINSIGHTS_"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_the_azure_distro_a_connection_string_is_a_clear_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000"
    }
    with caplog.at_level(logging.WARNING, logger="nearline.tracing"):
        provider = trace_config.configure(environ)
    assert provider is not None  # traced still, to no exporter: nothing crashes
    assert trace_config.AZURE_MISSING in caplog.text
    assert "pip install 'nearline[azure-monitor]'" in caplog.text


def test_the_azure_distro_is_configured_only_with_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The distro is not installed here: a stand-in module records the calls nearline makes."""
    calls = []
    distro = types.ModuleType("azure.monitor.opentelemetry")
    distro.configure_azure_monitor = lambda: calls.append("configured")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.monitor.opentelemetry", distro)
    trace_config.configure({"OTEL_TRACES_EXPORTER": "console"})
    assert calls == []
    trace_config.configure({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"})
    assert calls == ["configured"]


def test_an_unknown_exporter_is_named_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nearline.tracing"):
        assert trace_config.configure({"OTEL_TRACES_EXPORTER": "zipkin"}) is not None
    assert "'zipkin' is not an exporter nearline knows" in caplog.text


# --- the wire -------------------------------------------------------------------------------


def test_traceparent_rides_in_the_messages_only_when_there_is_one() -> None:
    plain = RequestMessage("j", "p", {}, 1.0)
    assert b"traceparent" not in plain.to_json()
    traced = RequestMessage("j", "p", {}, 1.0, traceparent=TRACEPARENT)
    assert RequestMessage.from_json(traced.to_json()).traceparent == TRACEPARENT
    result = ResultMessage.completed("j", 1, traceparent=TRACEPARENT)
    assert ResultMessage.from_json(result.to_json()).traceparent == TRACEPARENT
    assert "traceparent" not in ResultMessage.completed("j", 1).to_dict()
    # observation data never fails a job: a malformed one is dropped
    body = json.dumps({"id": "j", "pipeline": "p", "enqueued_at": 1, "traceparent": ["x"]})
    assert RequestMessage.from_json(body).traceparent is None


def test_azure_carries_traceparent_in_the_orchestrator_input(memory_spans: InMemorySpanExporter) -> None:
    job = JobRecord(id="j1", pipeline="p", input={})
    assert "traceparent" not in orchestrator_input(job)["job"]
    with tracing.span("nearline.submit"):
        carried = orchestrator_input(job)["job"]["traceparent"]
    (submit,) = memory_spans.get_finished_spans()
    assert carried.startswith(f"00-{submit.context.trace_id:032x}-{submit.context.span_id:016x}-")


# --- in process -----------------------------------------------------------------------------


def test_one_trace_per_job_in_process(memory_spans: InMemorySpanExporter, tmp_path: Path) -> None:
    catalog = load_pipelines(pipelines(tmp_path))
    broker, store = MemoryBroker(), MemoryStore()
    jobs = StoreJobs(catalog, broker, store)
    lifecycle = Lifecycle(broker, store)
    lifecycle.start()
    try:
        ids = [asyncio.run(jobs.submit("twice", b'{"input": {"n": %d}}' % i))[0].id for i in range(3)]
        worker = Worker(broker, PipelineRunner(catalog, ModelRepository(tmp_path)), store=store)
        worker.process(broker.receive(REQUEST_QUEUE, 8, 1.0))
        wait_until(lambda: all(store.get(i).status is JobStatus.COMPLETED for i in ids), 10, "jobs ended")
        wait_until(lambda: _named(memory_spans, "nearline.end", 3), 10, "three end spans")
    finally:
        lifecycle.stop()
    spans = memory_spans.get_finished_spans()
    by_trace: dict[int, list[Any]] = {}
    for s in spans:
        by_trace.setdefault(s.context.trace_id, []).append(s)
    for job_id in ids:
        (enqueue,) = [
            s for s in spans if s.name == "nearline.enqueue" and s.attributes["nearline.job_id"] == job_id
        ]
        trace = by_trace[enqueue.context.trace_id]
        assert {s.name for s in trace} == JOB_SPANS
        (end,) = [s for s in trace if s.name == "nearline.end"]
        assert end.attributes["nearline.status"] == "Completed"
        assert enqueue.attributes["nearline.pipeline"] == "twice"
    (batch,) = [s for s in spans if s.name == "nearline.batch"]
    assert batch.attributes["nearline.batch_size"] == 3
    assert {link.context.trace_id for link in batch.links} == {
        s.context.trace_id for s in spans if s.name == "nearline.submit"
    }
    steps = [s for s in spans if s.name == "nearline.step"]
    assert [s.attributes["nearline.step"] for s in steps] == ["first", "second"]
    assert {s.parent.span_id for s in steps} == {batch.context.span_id}
    assert all(s.links[0].context == batch.context for s in spans if s.name == "nearline.compute")


def _named(exporter: InMemorySpanExporter, name: str, count: int) -> bool:
    return sum(s.name == name for s in exporter.get_finished_spans()) >= count


# --- across processes -----------------------------------------------------------------------


@pytest.mark.slow
def test_one_trace_per_job_across_a_real_server(tmp_path: Path) -> None:
    empty_models = tmp_path / "models"
    empty_models.mkdir()
    args = ("--pipelines", str(pipelines(tmp_path)), "--models", str(empty_models))
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "nearline-test"}
    with running_server(tmp_path / "data", *args, env=env) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers = [client.post("/api/score/twice?wait=10", json={"input": {"n": i}}) for i in range(3)]
        assert [a.json()["runtimeStatus"] for a in answers] == ["Completed"] * 3
        ids = [a.json()["instanceId"] for a in answers]
        wait_until(lambda: len(_spans(server.output(), "nearline.end")) >= 3, 10, "the end spans")
    spans = _spans(server.output())
    for job_id in ids:
        (enqueue,) = [
            s for s in spans if s["attributes"].get("nearline.job_id") == job_id and "enqueue" in s["name"]
        ]
        trace = [s for s in spans if s["context"]["trace_id"] == enqueue["context"]["trace_id"]]
        assert {s["name"] for s in trace} == JOB_SPANS, job_id
        assert len({s["resource"]["attributes"]["process.pid"] for s in trace}) >= 2  # API and worker
        assert {s["resource"]["attributes"]["service.name"] for s in trace} == {"nearline-test"}
    batches = _spans(server.output(), "nearline.batch")
    linked = {link["context"]["trace_id"] for b in batches for link in b["links"]}
    assert {s["context"]["trace_id"] for s in spans if s["name"] == "nearline.submit"} <= linked
    for b in batches:
        steps = [
            s for s in spans if s["name"] == "nearline.step" and s["parent_id"] == b["context"]["span_id"]
        ]
        assert sorted(s["attributes"]["nearline.step"] for s in steps) == ["first", "second"]


def _spans(output: str, name: str | None = None) -> list[dict[str, Any]]:
    """The spans the console exporter wrote (one JSON object a line) in ``output``."""
    found = []
    for line in output.splitlines():
        if line.startswith('{"name": "nearline.'):
            span = json.loads(line)
            if name is None or span["name"] == name:
                found.append(span)
    return found
