"""The job lifecycle without Azure: what the Durable orchestrator does in the cloud, in threads.

* results: take result messages off the response queue and end their jobs (compare-and-set,
  so a duplicate result from a redelivered request changes nothing);
* deadlines: end jobs whose deadline passed with ``DeadlineExceeded`` even if no worker ever
  took them;
* retention: purge terminal records older than the retention period;
* callbacks: deliver the outbox (:mod:`nearline.deliveries`): signed events to the
  ``callback_url`` of ended jobs, retried, only where the guard of :mod:`nearline.callbacks`
  allows.

Every API replica may run one; on Redis their result consumers share one consumer group.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from nearline import tracing
from nearline.brokers.base import Broker, Delivery, LeaseLost
from nearline.callback_sender import CallbackSender
from nearline.callbacks import CallbackGuard, configured_allow_list
from nearline.constants import RESPONSE_QUEUE, RETENTION_S
from nearline.deliveries import Dispatcher
from nearline.errors import DeadlineExceeded, NearlineError
from nearline.hops import HopTimes
from nearline.jobs import JobStatus, error_output
from nearline.messages import MessageError, ResultMessage
from nearline.outcomes import MAX_WINDOW_S
from nearline.settings import WebhookSettings
from nearline.store.base import StatusStore

log = logging.getLogger("nearline.lifecycle")

#: How often deadlines are checked: a job ends DeadlineExceeded at most this late.
SWEEP_INTERVAL_S = 0.25
#: How often retention runs; purging is cheap but need not be frequent.
PURGE_INTERVAL_S = 60.0
RESULT_BATCH = 256
#: Longest pause between retries while the broker or store fails.
RETRY_MAX_S = 5.0


class Lifecycle:
    """Runs the lifecycle threads for one broker + store until :meth:`stop`.

    Args:
        deliveries: Delivers the callbacks; default: one under ``NEARLINE_CALLBACK_ALLOW`` and
            the ``NEARLINE_WEBHOOK_*`` settings.
        hops: Where each applied result's hops are timed (the API's ``/metrics``); None: not timed.
    """

    def __init__(
        self,
        broker: Broker,
        store: StatusStore,
        *,
        retention_s: float = RETENTION_S,
        response_queue: str = RESPONSE_QUEUE,
        deliveries: Dispatcher | None = None,
        hops: HopTimes | None = None,
    ) -> None:
        self.broker = broker
        self.hops = hops
        self.store = store
        self.retention_s = retention_s
        self.response_queue = response_queue
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.deliveries = deliveries or Dispatcher(
            store, CallbackSender(CallbackGuard(configured_allow_list())), WebhookSettings.from_env()
        )
        self._unlisten = store.on_callback(self._announce)

    def start(self) -> None:
        for target in (self._results_loop, self._sweep_loop):
            t = threading.Thread(target=target, name=f"lifecycle-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        self.deliveries.start()

    def stop(self) -> None:
        self._unlisten()
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.deliveries.stop()

    # -- results ------------------------------------------------------------------------

    def _results_loop(self) -> None:
        """Apply results until stopped, riding out broker and store outages.

        A failure anywhere in a round (receive, finish, settle) is retried after a delay that
        doubles up to :data:`RETRY_MAX_S`; results received but not settled come back after
        their lease, and applying one twice changes nothing (compare-and-set).
        """
        failures = 0
        while not self._stop.is_set():
            try:
                self._apply_round()
            except NearlineError as exc:
                if failures == 0:
                    log.warning("applying results failed, retrying until it works: %s", exc)
                failures += 1
                self._stop.wait(min(RETRY_MAX_S, 0.1 * 2**failures))
                continue
            if failures:
                log.warning("applying results works again after %d failed round(s)", failures)
            failures = 0

    def _apply_round(self) -> None:
        """Receive a batch of results and end their jobs in one store call, then settle them."""
        deliveries = self.broker.receive(self.response_queue, RESULT_BATCH, 0.5)
        done: list[tuple[Delivery, ResultMessage]] = []
        for d in deliveries:
            try:
                done.append((d, ResultMessage.from_json(d.body)))
            except MessageError as exc:
                # A result that does not parse will not parse on retry either.
                log.error("dead-lettering malformed result %s: %s", d.message_id, exc.message)
                with contextlib.suppress(LeaseLost):
                    self.broker.dead_letter(d, f"malformed result message: {exc.message}")
        if done:
            now = time.time()  # the jobs' end: their records' `updated`
            timings = {result.id: result.timings for _, result in done if result.timings}
            ended = self.store.finish_many([result.job_end() for _, result in done], now, timings)
            for (d, result), applied in zip(done, ended, strict=True):
                # Not ended here: it ended as its result was sent (by its worker, on Redis), or
                # this is a duplicate. Either way the lifecycle applied nothing.
                if self.hops is not None:
                    self.hops.applied(result, d.enqueued_at, now if applied else None)
                tracing.ended([(result, d.enqueued_at)], now if applied else d.enqueued_at)
        for d in self.broker.complete_many([d for d, _ in done]):
            log.warning("lease on result %s lost; another replica has it", d.message_id)

    def apply(self, result: ResultMessage) -> bool:
        """End a job from its result message; False if it had already ended (kept as it was)."""
        job_id, status, output = result.job_end()
        return self.store.finish(job_id, status, output, time.time(), result.timings or None)

    # -- deadlines and retention --------------------------------------------------------

    def _sweep_loop(self) -> None:
        next_purge = time.time() + PURGE_INTERVAL_S
        while not self._stop.wait(SWEEP_INTERVAL_S):
            try:
                self.sweep(time.time())
                if time.time() >= next_purge:
                    purged = self.store.purge_terminal(time.time() - self.retention_s)
                    if purged:
                        log.info("purged %d job records past retention", purged)
                    outcomes = self.store.outcomes()  # the comparison's log keeps its longest window
                    if outcomes is not None:
                        outcomes.trim(time.time() - MAX_WINDOW_S)
                    next_purge = time.time() + PURGE_INTERVAL_S
            except NearlineError as exc:
                log.warning("sweep failed, retrying: %s", exc)

    def sweep(self, now: float) -> int:
        """Fail every unfinished job whose deadline has passed; how many."""
        ended = 0
        for job_id in self.store.overdue(now):
            message = "the job's deadline passed before it finished"
            ended += self._finish(job_id, JobStatus.FAILED, error_output(DeadlineExceeded.code, message))
        return ended

    # -- callbacks ----------------------------------------------------------------------

    def _finish(self, job_id: str, status: JobStatus, output: object) -> bool:
        return self.store.finish(job_id, status, output, time.time())

    def _announce(self, job_id: str) -> None:
        """Store listener (:meth:`StatusStore.on_callback`): the job's callback is in the outbox
        now; send it.

        Runs for every end this process makes of a job with a ``callback_url`` (results,
        deadlines and terminate requests): an end without one costs the outbox no look (a
        round trip on Redis). The dispatcher's own poll finds the rest, e.g. deliveries that
        other replicas' ends left.
        """
        self.deliveries.wake()
