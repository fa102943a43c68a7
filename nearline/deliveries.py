"""The callback dispatcher: sends the outbox's deliveries, retries them, and records how each went.

When a job with a ``callback_url`` ends, its status store writes a delivery in the same
transaction (:mod:`nearline.store.base`, the outbox). A :class:`Dispatcher`, started by the
lifecycle of every ``nearline serve`` replica, claims due deliveries with a lease (so replicas
never make the same attempt at once), signs the event (:mod:`nearline.webhooks`) and makes one
attempt (:mod:`nearline.callback_sender`), then settles the delivery:

* a ``2xx`` ends it ``Delivered``;
* no answer (connection error, timeout, a name that does not resolve), ``408``, ``429`` or a
  ``5xx`` schedules another attempt after an exponential backoff with jitter
  (:func:`retry_delay`; a later ``Retry-After`` is honoured), while the delivery is younger than
  ``max_age_s`` and has made fewer than ``max_attempts`` attempts; then it ends ``GivenUp``;
* any other answer (a redirect, another ``4xx``), or a URL the guard refuses, ends it
  ``GivenUp`` at once: trying again cannot help.

Each settle records the delivery's state in the job's ``customStatus.callback`` and counts the
outcome in ``nearline_callback_deliveries_total{outcome}``. Deliveries survive any process's
death: what a dead dispatcher had claimed is claimed again once its lease ends, with the same
``webhook-id``, so a receiver that saw the attempt drops the repeat.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from nearline import webhooks
from nearline.callback_sender import ATTEMPT_S, TIMEOUT, Attempt, CallbackSender
from nearline.constants import WEBHOOK_MAX_RETRY_S
from nearline.errors import NearlineError
from nearline.jobs import JobRecord, callback_status, status_document
from nearline.settings import WEBHOOK_SECRET, WebhookSettings
from nearline.store.base import CallbackDelivery, StatusStore

log = logging.getLogger("nearline.deliveries")

#: Attempts in flight at once per dispatcher (one thread each).
SENDERS = 8
#: A claim's lease: longer than an attempt can take (connect + write + read timeouts, and the
#: reply's reading), so that no other replica claims a delivery while it is being sent.
LEASE_S = 2 * (ATTEMPT_S + float(TIMEOUT.connect or 0) + float(TIMEOUT.write or 0) + float(TIMEOUT.read or 0))
#: Longest pause between looks at the outbox, for deliveries other replicas' jobs left there and
#: retries coming due (a job ended by this process wakes the dispatcher at once).
POLL_S = 0.5
#: Shortest pause between claims, so that a burst of job ends costs one claim, not one each.
MIN_CLAIM_GAP_S = 0.02


def retry_delay(settings: WebhookSettings, attempts: int, retry_after: float | None = None) -> float:
    """Seconds before attempt ``attempts + 1``, after ``attempts`` failed ones.

    ``retry_s`` doubled per failed attempt, capped at :data:`WEBHOOK_MAX_RETRY_S`, then
    jittered down by up to half (so receivers coming back are not met by every sender at
    once); never sooner than the receiver's ``Retry-After`` (itself capped).
    """
    delay = min(WEBHOOK_MAX_RETRY_S, settings.retry_s * 2 ** max(0, attempts - 1))
    delay *= random.uniform(0.5, 1.0)  # jitter, not a secret
    if retry_after is not None:
        delay = max(delay, min(retry_after, WEBHOOK_MAX_RETRY_S))
    return delay


def event_document(job: JobRecord) -> dict[str, Any]:
    """The status document an event carries: the job at its end, without the delivery's own
    state (which changes between attempts, while the signed event must not)."""
    document = status_document(job)
    custom = job.custom_status
    if isinstance(custom, dict) and "callback" in custom:
        rest = {k: v for k, v in custom.items() if k != "callback"}
        document["customStatus"] = rest or None
    return document


class Dispatcher:
    """Delivers the outbox of ``store`` until :meth:`stop`.

    Args:
        store: Where deliveries and job records are.
        sender: Makes one attempt under the callback guard.
        settings: Secrets, first retry, and when to give up.
        registry: Where ``nearline_callback_deliveries_total`` is counted (the API's, so that
            ``GET /metrics`` shows it); None: a registry of its own.
        lease_s: How long a claim holds a delivery.
    """

    def __init__(
        self,
        store: StatusStore,
        sender: CallbackSender,
        settings: WebhookSettings,
        *,
        registry: CollectorRegistry | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.store = store
        self.sender = sender
        self.settings = settings
        self.lease_s = lease_s
        self.outcomes = Counter(
            "nearline_callback_deliveries",
            "Callback attempts by outcome: delivered, retried, given_up",
            ["outcome"],
            registry=registry or CollectorRegistry(),
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._free = threading.Semaphore(SENDERS)
        self._pool = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="callback")
        self._thread: threading.Thread | None = None
        self._unsigned_said = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="callback-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming; attempts in flight finish (or their leases lapse) on their own."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """Look at the outbox now (a job has just ended)."""
        self._wake.set()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._claim_round()
                failures = 0
            except NearlineError as exc:  # the store is down: keep trying, say so once
                if failures == 0:
                    log.warning("claiming callbacks failed, retrying until it works: %s", exc)
                failures += 1
            self._stop.wait(MIN_CLAIM_GAP_S)
            self._wake.wait(POLL_S)

    def _claim_round(self) -> None:
        free = 0
        while self._free.acquire(blocking=False):
            free += 1
        claimed = self.store.claim_deliveries(time.time(), self.lease_s, free) if free else []
        for _ in range(free - len(claimed)):
            self._free.release()
        for delivery in claimed:
            self._pool.submit(self._run, delivery)

    def _run(self, delivery: CallbackDelivery) -> None:
        try:
            self.attempt(delivery)
        except Exception:  # an attempt never takes the dispatcher down; its lease will lapse
            log.exception("callback of job %s: the attempt failed unexpectedly", delivery.job_id)
        finally:
            self._free.release()

    def attempt(self, delivery: CallbackDelivery) -> str:
        """Make one attempt at a claimed delivery and settle it.

        Returns:
            The outcome: ``delivered``, ``retried``, ``given_up``, or ``lost`` when the lease
            ended meanwhile (another dispatcher has the delivery; nothing was recorded).
        """
        now = time.time()
        job = self.store.get(delivery.job_id)
        if job is None:  # purged: nobody is left to tell, and nothing to tell them
            self.store.settle_delivery(delivery, callback_status("GivenUp", delivery.attempts), None)
            return "given_up"
        if now - delivery.created > self.settings.max_age_s:
            result = Attempt(None, f"not sent: older than {self.settings.max_age_s:g} s")
            return self._settle(delivery, result, delivery.attempts, final=True)
        if not self.settings.secrets and not self._unsigned_said:
            self._unsigned_said = True
            log.warning("callbacks are sent unsigned: set %s (docs/webhooks.md)", WEBHOOK_SECRET.name)
        body = webhooks.event_body(event_document(job), job.status_url)
        headers = webhooks.signed_headers(webhooks.message_id(job.id), body, self.settings.secrets, now)
        result = self.sender.post(delivery.url, body, headers, delivery.attempts)
        return self._settle(delivery, result, delivery.attempts + 1)

    def _settle(
        self, delivery: CallbackDelivery, result: Attempt, attempts: int, *, final: bool = False
    ) -> str:
        now = time.time()
        next_due = None
        if result.retryable and not final and attempts < self.settings.max_attempts:
            next_due = now + retry_delay(self.settings, attempts, result.retry_after)
            if next_due - delivery.created > self.settings.max_age_s:
                next_due = None
        state = "Delivered" if result.delivered else "Pending" if next_due is not None else "GivenUp"
        callback = callback_status(state, attempts, result.status, result.error, next_due)
        if not self.store.settle_delivery(delivery, callback, next_due):
            log.warning("callback of job %s: lease lost during the attempt; not recorded", delivery.job_id)
            return "lost"
        outcome = {"Delivered": "delivered", "Pending": "retried", "GivenUp": "given_up"}[state]
        self.outcomes.labels(outcome).inc()
        if state == "GivenUp":
            log.warning(
                "callback of job %s given up after %d attempt(s): %s", delivery.job_id, attempts, result.error
            )
        return outcome
