"""The scoring worker: receive a micro-batch, settle what must not run, run the rest, publish.

At-least-once: a request message is completed only after its result message is published, so
a worker that dies at any point loses nothing (the lease expires, another worker gets it). A
redelivered request may be computed twice; the lifecycle's compare-and-set keeps the first
result, so no reader ever sees two.

Receiving overlaps computing: a receiver thread leases requests into the open batch
(:class:`~nearline.batching.BatchQueue`) as they arrive, and the computing thread takes all of it
the moment it is free, so a lone request is computed at once and the requests that arrive
meanwhile make the next batch. When more waits than one batch, the receiver leases a window of
up to ``batch_window`` batches (fewer if a lease would not cover them at the measured batch time)
and the computing thread takes batches of similar length from it, priority lanes first, then
by deadline (a request's deadline, or its lease's end).

A broker outage is ridden out (:mod:`nearline.worker.outage`): every broker call is retried
until the broker answers, the batch in hand and its results kept meanwhile, so a worker never
exits because Redis restarted or Service Bus was busy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from nearline import tracing
from nearline.batching import BatchQueue, group_by
from nearline.brokers.base import Broker, Delivery, LeaseLost
from nearline.constants import (
    BATCH_WINDOW,
    LEASE_S,
    MAX_BATCH,
    MAX_DELIVERIES,
    MAX_WAIT_MS,
    REQUEST_QUEUE,
    RESPONSE_QUEUE,
)
from nearline.errors import BrokerError, NearlineError, StepError
from nearline.messages import ResultMessage
from nearline.store.base import Settle, StatusStore
from nearline.worker.hooks import Hook, Work, default_hooks
from nearline.worker.metrics import WorkerMetrics
from nearline.worker.outage import Backoff, Outage
from nearline.worker.window import Key, ServiceTimes, request_key, window_batches

if TYPE_CHECKING:
    from nearline.pipelines.runner import PipelineRunner

log = logging.getLogger("nearline.worker")

T = TypeVar("T")
#: A received request, when its receive returned (epoch seconds), and its key.
Received = tuple[Delivery, float, Key]


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker batches and when it gives up on a message."""

    max_batch: int = MAX_BATCH
    max_wait_ms: float = MAX_WAIT_MS
    batch_window: int = BATCH_WINDOW
    lease_s: float = LEASE_S
    max_deliveries: int = MAX_DELIVERIES
    idle_wait_s: float = 0.5
    request_queue: str = REQUEST_QUEUE
    response_queue: str = RESPONSE_QUEUE


class Worker:
    """Pulls batches from ``broker`` and runs them through ``runner``.

    Args:
        broker: The request and response queues.
        runner: Runs pipelines on batches (models loaded).
        store: The status store, where reachable: lets the worker skip terminated jobs and
            mark jobs Running. On Azure there is none (Durable holds job state).
        config: Batching and delivery settings.
        name: This worker's name in result messages.
        backoff: Delays between retries of a broker call during an outage.
    """

    def __init__(
        self,
        broker: Broker,
        runner: PipelineRunner,
        *,
        store: StatusStore | None = None,
        config: WorkerConfig | None = None,
        name: str | None = None,
        metrics: WorkerMetrics | None = None,
        hooks: Sequence[Hook] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.broker = broker
        self.runner = runner
        self.config = config or WorkerConfig()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 10000}"
        self.metrics = metrics or WorkerMetrics()
        self.store = store
        if store is not None:  # where it can, the receive also starts the jobs (Liveness uses it)
            store.start_on_receive(broker, self.config.request_queue)
        self.hooks = list(hooks) if hooks is not None else default_hooks(self.config.max_deliveries, store)
        #: Set while the worker runs and its broker answers (``/readyz``).
        self.ready = threading.Event()
        self.outage = Outage(self.ready, backoff)
        self.metrics.watch_ready(self.ready.is_set)
        self._stop = threading.Event()  # run()'s; until then (process() alone) never set

    # -- loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set; then finish the batch in hand and give back the rest.

        If the broker is down when ``stop`` is set, the batch in hand is given up instead: its
        leases run out and another worker receives it.
        """
        self._stop = stop
        # One batch computing, at most a window more leased (one batch's worth until a batch is
        # measured, then as many as a quarter of a lease covers, up to batch_window): every leased
        # message is settled well inside its lease.
        cfg = self.config
        service = ServiceTimes()
        pending: BatchQueue[Received] = BatchQueue(
            cfg.max_batch, cfg.max_wait_ms / 1000, cfg.max_batch, lambda r: r[2], service.estimate
        )
        receiver = threading.Thread(target=self._receive_loop, args=(stop, pending), daemon=True)
        self.ready.set()  # before the receiver starts: its first failure must be able to clear it
        receiver.start()
        while batch := pending.take():  # [] once the receiver has stopped and nothing is left
            deliveries = [d for d, _, _ in batch]
            started = time.monotonic()
            try:
                if stop.is_set():
                    self._give_back(deliveries)
                else:
                    self.process(deliveries, received_at={d.message_id: at for d, at, _ in batch})
            except BrokerError as exc:  # only once stop is set: the broker is down, we are leaving
                log.warning("stopping during a broker outage: gave up a batch of %d (%s)", len(batch), exc)
            took = time.monotonic() - started
            service.observe(len(batch), took)
            # the last take too: one slow batch (redeliveries run alone) shrinks the window at once
            batch_s = max(service.estimate(cfg.max_batch), took)
            pending.set_window(cfg.max_batch * window_batches(cfg.batch_window, cfg.lease_s, batch_s))
        receiver.join()

    def _receive_loop(self, stop: threading.Event, pending: BatchQueue[Received]) -> None:
        """Lease requests into ``pending`` as they arrive, while it has room, until stopped."""
        cfg = self.config
        try:
            while not stop.is_set():
                room = pending.room(timeout=cfg.idle_wait_s)
                if not room:
                    continue
                try:
                    got = self._broker(
                        "receive",
                        partial(self.broker.receive, cfg.request_queue, room, cfg.idle_wait_s, cfg.lease_s),
                    )
                except BrokerError:  # stop is set: what it leased comes back after its lease
                    return
                except NearlineError as exc:  # not an outage (those are retried): say so, try again
                    log.error("receive failed, retrying in 1 s: %s", exc)
                    stop.wait(1.0)
                    continue
                if got:
                    self.metrics.in_flight.inc(len(got))
                    received = time.time()
                    keys = [request_key(d, received, cfg.lease_s, self._length_field) for d in got]
                    pending.put(list(zip(got, [received] * len(got), keys, strict=True)))
        finally:
            pending.close()

    def _length_field(self, pipeline: str) -> str | None:
        """The input field ``pipeline`` batches by length (its ``length:``), if it names one."""
        catalog = self.runner.catalog
        return catalog.get(pipeline).length if pipeline in catalog else None

    def _give_back(self, batch: list[Delivery]) -> None:
        """Abandon ``batch`` (the worker is stopping): visible to other workers at once."""
        try:
            for d in batch:
                with contextlib.suppress(LeaseLost):
                    self._broker("abandon", partial(self.broker.abandon, d))
        except BrokerError as exc:  # stopping during an outage: no retries
            log.warning("could not give back %d messages; their leases will run out (%s)", len(batch), exc)
        finally:
            self.metrics.in_flight.dec(len(batch))

    def _broker(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried through a broker outage until it answers or the worker stops."""
        return self.outage.call(what, call, self._stop)

    # -- one batch ----------------------------------------------------------------------

    def process(self, deliveries: list[Delivery], received_at: Mapping[str, float] | None = None) -> None:
        """Settle one received batch (``received_at``: message id → when it was received).

        First deliveries run together; a redelivered message runs alone, after them: it may be
        the one that killed the last worker to hold it, and alone it takes no batch-mates down
        with it (they would be redelivered, and could be dead-lettered, for its fault).
        """
        fresh = [d for d in deliveries if d.delivery_count <= 1]
        received = received_at or {}
        try:
            if fresh:
                self._process(fresh, received)
            for d in deliveries:
                if d.delivery_count > 1:
                    self._process([d], received)
        finally:
            self.metrics.in_flight.dec(len(deliveries))

    def _process(self, deliveries: list[Delivery], received: Mapping[str, float]) -> None:
        """Hooks first, then each (pipeline, deployment) once on its group, then publish and settle.

        Deployments of one endpoint never share a batch: each runs its own steps and models.
        """
        self.metrics.batch_size.observe(len(deliveries))
        batch = [Work(d) for d in deliveries]
        for hook in self.hooks:  # a hook reading the status store waits out an outage too
            self._broker(f"{type(hook).__name__.lower()} hook", partial(hook.before, batch, self.name))
        todo = [w for w in batch if not w.settled]
        groups = group_by(
            todo, lambda w: (w.message.pipeline, w.message.deployment) if w.message else ("", None)
        )
        for (pipeline, deployment), group in groups.items():
            self._run_group(pipeline, deployment, group, received)
        self._settle(batch)

    def _run_group(
        self, pipeline: str, deployment: str | None, group: list[Work], received: Mapping[str, float]
    ) -> None:
        started = time.time()
        for w in group:
            assert w.message is not None
            lane = w.message.priority
            self.metrics.queue_wait.labels(pipeline, deployment or "", lane).observe(
                max(started - w.message.enqueued_at, 0.0)
            )
        try:
            outcome = self.runner.run(pipeline, [w.message.input for w in group if w.message], deployment)
            results: list[Any] = outcome.results
            timings = outcome.timings
        except NearlineError as exc:  # e.g. a pipeline this worker does not know
            results, timings = [exc] * len(group), {}
        except Exception as exc:  # a bug in a step must fail the jobs, not kill the worker
            log.exception("pipeline %s raised", pipeline)
            results, timings = [StepError(f"{type(exc).__name__}: {exc}")] * len(group), {}
        finished = time.time()
        for step, ms in timings.items():
            self.metrics.step_latency.labels(pipeline, deployment or "", step).observe(ms / 1000)
        self.metrics.compute_latency.labels(pipeline, deployment or "").observe(max(finished - started, 0.0))
        tracing.batch([w.message for w in group if w.message], received, started, finished, timings)
        for w, res in zip(group, results, strict=True):
            assert w.message is not None
            meta = {
                "worker": self.name,
                "request_enqueued_at": w.message.enqueued_at,
                "received_at": received.get(w.message.id),
                "started_at": started,
                "finished_at": finished,
                "timings": timings,
                "traceparent": w.message.traceparent,
            }
            if isinstance(res, NearlineError):
                w.result = ResultMessage.failed(w.message.id, res.code, res.message, **meta)
            else:
                w.result = ResultMessage.completed(w.message.id, res, **meta)

    def _settle(self, batch: list[Work]) -> None:
        """Publish every result first, then settle: the order that makes delivery at-least-once.

        Where the status store can do it with the broker in one atomic step
        (:meth:`~StatusStore.settle_ended`: Redis, one database), the results go out, their jobs
        end and the requests are completed in one call, retried whole: a long-poll then
        answers without waiting for the lifecycle. Else, where the broker does it in one atomic
        call (:attr:`~Broker.settles_atomically`: Redis's script, SQLite's transaction, the
        memory broker's lock), results go out and completions are made in one
        ``send_then_complete``, retried whole; elsewhere (Service Bus)
        ``send_many`` then ``complete_many``, each retried on its own, so that an outage between
        the two does not publish the results again. Dead letters come after, their results
        already out. A lease that ran out meanwhile makes its settle a no-op (another worker
        has the message), and a result published twice changes nothing (the first end is kept).
        """
        computed = [w.result for w in batch if w.result is not None]
        results = [(r.id, r.to_json()) for r in computed]
        done = [w.delivery for w in batch if w.dead_letter is None]
        queue = self.config.response_queue
        if self.store is not None and computed and self.store.settles_with(self.broker):
            ends = [r.job_end() for r in computed]
            timings = {r.id: r.timings for r in computed if r.timings}
            settle = Settle(self.broker, queue, results, ends, timings, done, time.time())
            ended = partial(self.store.settle_ended, settle)
            lost = self._broker("publish results, end jobs and complete", ended)
        elif self.broker.settles_atomically:
            send = partial(self.broker.send_then_complete, queue, results, done)
            lost = self._broker("publish results and complete", send)
        else:
            self._broker("publish results", partial(self.broker.send_many, queue, results))
            lost = self._broker("complete", partial(self.broker.complete_many, done))
        tracing.published(computed, time.time())
        for w in batch:
            if w.result is not None:
                pipeline, deployment = (
                    (w.message.pipeline, w.message.deployment) if w.message else ("?", None)
                )
                labels = (pipeline, deployment or "", w.delivery.lane)
                self.metrics.results.labels(*labels, w.result.status).inc()
                if w.result.error:
                    self.metrics.failures.labels(*labels, w.result.error["code"]).inc()
        for w in batch:
            if w.dead_letter is not None:
                try:
                    self._broker("dead-letter", partial(self.broker.dead_letter, w.delivery, w.dead_letter))
                    self.metrics.dead_lettered.labels(w.delivery.lane).inc()
                except LeaseLost:
                    log.warning("lease on %s lost before dead-lettering", w.delivery.message_id)
        for d in lost:
            log.warning("lease on %s lost before completing; another worker has it", d.message_id)
