"""A worker's window: batches of similar length when more waits than a batch, the same results
as arrival-order batching, and never more held than a lease covers."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pipeline_steps
import pytest
from test_worker import results, send
from waiting import wait_until

from nearline.brokers.base import Delivery
from nearline.brokers.memory import MemoryBroker
from nearline.constants import REQUEST_QUEUE
from nearline.errors import ConfigError
from nearline.messages import RequestMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines
from nearline.worker import Worker, WorkerConfig
from nearline.worker.window import ServiceTimes, request_key, window_batches

PIPELINES = """
pipelines:
  sized:
    input_schema: {type: object}
    deployment:
      name: v1
      steps:
        - {name: sized, function: "pipeline_steps:sized", batch: true}
"""


def run_all(tmp_path: Path, texts: list[str], batch_window: int) -> tuple[dict[str, object], list[list[int]]]:
    """Every text through a fresh worker (all waiting before it starts): outputs and batches."""
    (tmp_path / "pipelines.yaml").write_text(PIPELINES)
    runner = PipelineRunner(load_pipelines(tmp_path / "pipelines.yaml"), ModelRepository(tmp_path))
    config = WorkerConfig(max_batch=8, batch_window=batch_window, lease_s=30, idle_wait_s=0.05)
    broker = MemoryBroker()
    worker = Worker(broker, runner, config=config)
    for i, text in enumerate(texts):
        send(broker, f"t{i}", "sized", {"text": text})
    pipeline_steps.BATCHES.clear()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        got = results(broker, len(texts), timeout=30)
    finally:
        stop.set()
        thread.join(10)
    return {i: r.output for i, r in got.items()}, list(pipeline_steps.BATCHES)


def padded(batches: list[list[int]]) -> int:
    """What the batches cost padded to their longest item (characters)."""
    return sum(max(b) * len(b) for b in batches)


def test_length_aware_batches_give_the_same_results_for_less_padding(tmp_path: Path) -> None:
    rng = random.Random(15)
    texts = ["x" * rng.choice([rng.randint(1, 10), rng.randint(100, 400)]) for _ in range(160)]
    in_order, order_batches = run_all(tmp_path, texts, batch_window=1)
    windowed, window_batches_ = run_all(tmp_path, texts, batch_window=4)
    assert len(in_order) == len(texts) and windowed == in_order  # each job its own result
    assert all(len(b) <= 8 for b in window_batches_)
    assert sorted(n for b in window_batches_ for n in b) == sorted(len(t) for t in texts)
    assert padded(window_batches_) < 0.8 * padded(order_batches), "similar lengths batched together"


def test_the_window_never_holds_more_than_a_lease_covers() -> None:
    assert window_batches(4, 30, 0.0) == 1  # nothing measured yet: one batch, as without a window
    assert window_batches(4, 30, 0.3) == 4  # MiniLM at batch 32 on CPU: the whole window
    assert window_batches(4, 30, 2.5) == 2  # (2 + 1) x 2.5 s inside a quarter of the lease
    assert window_batches(4, 30, 20.0) == 1  # slower than that: one batch, never none


def test_a_high_priority_request_goes_before_a_waiting_window(tmp_path: Path) -> None:
    (tmp_path / "pipelines.yaml").write_text(PIPELINES)
    runner = PipelineRunner(load_pipelines(tmp_path / "pipelines.yaml"), ModelRepository(tmp_path))
    broker = MemoryBroker()
    config = WorkerConfig(max_batch=4, batch_window=4, lease_s=30, idle_wait_s=0.05)
    worker = Worker(broker, runner, config=config)
    for i in range(80):
        send(broker, f"n{i}", "sized", {"text": "n" * (1 + i % 5)})
    pipeline_steps.BATCHES.clear()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(pipeline_steps.BATCHES) >= 2, 10, "the window to be working")
        urgent = RequestMessage("urgent", "sized", {"text": "h" * 7}, time.time(), priority="high")
        broker.send(REQUEST_QUEUE, urgent.to_json(), message_id="urgent", lane="high")
        sent_during = len(pipeline_steps.BATCHES)
        got = results(broker, 81, timeout=30)
    finally:
        stop.set()
        thread.join(10)
    assert len(got) == 81
    at = next(i for i, b in enumerate(pipeline_steps.BATCHES) if 7 in b)
    # after the batch computing when it was sent, and one taken meanwhile; not behind the window
    assert at <= sent_during + 2, "the high lane goes before the normal lane's waiting window"


def test_service_times_by_size_class_scale_to_sizes_never_measured() -> None:
    times = ServiceTimes()
    assert times.estimate(32) == 0.0  # nothing measured
    times.observe(32, 0.4)
    assert times.estimate(32) == 0.4
    assert times.estimate(64) == 0.8  # from the nearest class measured, by size
    times.observe(1, 0.02)
    assert times.estimate(1) == 0.02  # its own class
    times.observe(32, 0.9)
    assert 0.4 < times.estimate(32) < 0.9  # a moving average, not the last batch


def test_a_pipeline_names_the_field_it_is_batched_by(tmp_path: Path) -> None:
    def key(pipeline: str, input: object, field: str | None) -> tuple[str, int]:
        body = RequestMessage("j", pipeline, input, time.time()).to_json()
        delivery = Delivery(REQUEST_QUEUE, "j", body, "normal", 1, "token", time.time())
        return request_key(delivery, time.time(), 30, lambda _: field)[1]

    padded = {"text": "short", "metadata": "m" * 500}
    assert key("sized", padded, "text") == ("sized", 5)  # the field's length, not the request's
    assert key("sized", padded, None)[1] > 500  # no length: the request message's size
    assert key("sized", {"other": 1}, "text")[1] > 0  # the field missing: the size again
    (tmp_path / "p.yaml").write_text(PIPELINES.replace("  sized:\n", "  sized:\n    length: text\n"))
    assert load_pipelines(tmp_path / "p.yaml").get("sized").length == "text"
    (tmp_path / "bad.yaml").write_text(PIPELINES.replace("  sized:\n", "  sized:\n    length: [text]\n"))
    with pytest.raises(ConfigError, match="'length' must name an input field"):
        load_pipelines(tmp_path / "bad.yaml")
