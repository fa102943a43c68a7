"""The job lifecycle without Azure: what the Durable orchestrator does in the cloud, in threads.

* results: take result messages off the response queue and end their jobs (compare-and-set,
  so a duplicate result from a redelivered request changes nothing);
* deadlines: end jobs whose deadline passed with ``DeadlineExceeded`` even if no worker ever
  took them;
* retention: purge terminal records older than the retention period;
* callbacks: POST the status document to a job's ``callback_url`` when it ends (best effort,
  only to addresses the guard of :mod:`nearline.callbacks` allows).

Every API replica may run one; on Redis their result consumers share one consumer group.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from nearline.brokers.base import Broker, LeaseLost
from nearline.callbacks import CallbackSender, configured_allow_list
from nearline.constants import RESPONSE_QUEUE, RETENTION_S
from nearline.errors import DeadlineExceeded, NearlineError
from nearline.jobs import JobStatus, error_output
from nearline.messages import MessageError, ResultMessage
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
        callbacks: Sends the callbacks; default: one under ``NEARLINE_CALLBACK_ALLOW``.
    """

    def __init__(
        self,
        broker: Broker,
        store: StatusStore,
        *,
        retention_s: float = RETENTION_S,
        response_queue: str = RESPONSE_QUEUE,
        callbacks: CallbackSender | None = None,
    ) -> None:
        self.broker = broker
        self.store = store
        self.retention_s = retention_s
        self.response_queue = response_queue
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sender = callbacks or CallbackSender(configured_allow_list())
        self._callbacks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="callback")
        self._unlisten = store.on_finish(self._announce)

    def start(self) -> None:
        for target in (self._results_loop, self._sweep_loop):
            t = threading.Thread(target=target, name=f"lifecycle-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._unlisten()
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._callbacks.shutdown(wait=False, cancel_futures=True)

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
        deliveries = self.broker.receive(self.response_queue, RESULT_BATCH, 0.5)
        done = []
        for d in deliveries:
            try:
                self.apply(ResultMessage.from_json(d.body))
                done.append(d)
            except MessageError as exc:
                # A result that does not parse will not parse on retry either.
                log.error("dead-lettering malformed result %s: %s", d.message_id, exc.message)
                with contextlib.suppress(LeaseLost):
                    self.broker.dead_letter(d, f"malformed result message: {exc.message}")
        for d in self.broker.complete_many(done):
            log.warning("lease on result %s lost; another replica has it", d.message_id)

    def apply(self, result: ResultMessage) -> bool:
        """End a job from its result message; False if it had already ended (kept as it was)."""
        if result.status == "Completed":
            status, output = JobStatus.COMPLETED, result.output
        else:
            error = result.error or {}
            status, output = (
                JobStatus.FAILED,
                error_output(error.get("code", "Failed"), error.get("message", "")),
            )
        return self._finish(result.id, status, output)

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
        """Store listener: POST the status document to the job's callback URL, off this thread.

        Runs for every end this process makes: results, deadlines and terminate requests.
        """
        job = self.store.get(job_id)
        if job is not None and job.callback_url:
            self._callbacks.submit(self.sender.send, job)
