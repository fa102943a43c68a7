"""The client's operations as plans (see :mod:`nearline.client.protocol`).

Two carry real logic and are shared by the sync and async clients:

- :func:`submit_plan` resends a submit that the server refused with 429/503, honouring
  ``Retry-After``, but only when resending is safe: the request carries an ``Idempotency-Key``
  (a resend maps to the same job), or the refusal is nearline's own ``Overloaded`` error, which
  by contract enqueued nothing. A bare 503 from a proxy may come after the request got through,
  so without a key it is raised, not resent.
- :func:`wait_plan` waits for a job's end: it long-polls the status URL with ``?wait=`` and,
  when a server answers at once anyway (it ignores ``wait``) or refuses the parameter, falls back
  to polling at the pace the server's ``Retry-After`` sets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from nearline.client.errors import (
    ApiError,
    ConnectionFailed,
    JobFailed,
    JobTerminated,
    JobTimeout,
    error_code,
)
from nearline.client.protocol import (
    Call,
    JobLinks,
    Plan,
    Sleep,
    api_url,
    check,
    location,
    read_json,
    retry_after,
    sub_path,
    with_query,
)
from nearline.constants import DEPLOYMENT_HEADERS, MAX_WAIT_S, RETRY_AFTER_S

#: A ``Retry-After: 0`` must not turn polling into a busy loop.
MIN_POLL_S = 0.1
#: Longest single pause before resending a refused submit; with ``max_retries`` it bounds how
#: long ``submit`` can block on an overloaded server.
MAX_RETRY_SLEEP_S = 10.0
#: Connection failures in a row that polling rides out (a server restarting, a dropped
#: keep-alive connection). Status reads are idempotent, so retrying them is safe.
POLL_FAILURES = 3
TERMINAL = frozenset({"Completed", "Failed", "Terminated"})

StatusCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Submitted:
    """What a submit answered: the job's links, and its status document if it already ended."""

    links: JobLinks
    document: dict[str, Any] | None


class JobHandle:
    """What sync and async jobs share: the id, the URLs, and the last status document seen.

    Attributes:
        links: The job's id and URLs, as the server handed them out.
        document: The last status document seen (from a submit that waited, ``status()`` or a
            wait), or None.
    """

    def __init__(self, links: JobLinks, document: dict[str, Any] | None = None) -> None:
        self.links = links
        self.document = document

    @property
    def id(self) -> str:
        """The job id (the status document's ``instanceId``)."""
        return self.links.id

    @property
    def status_url(self) -> str:
        """Absolute URL of the job's status document (``statusQueryGetUri``)."""
        return self.links.status_url

    @property
    def terminate_url(self) -> str:
        """The ``terminatePostUri`` as the server gave it (it may hold a ``{text}`` placeholder)."""
        return self.links.terminate_url

    @property
    def purge_url(self) -> str:
        """The ``purgeHistoryDeleteUri``."""
        return self.links.purge_url

    def __repr__(self) -> str:
        status = self.document.get("runtimeStatus") if self.document else None
        return f"{type(self).__name__}(id={self.id!r}, status={status!r})"


def submit_body(
    input: Any, *, priority: str | None, timeout_s: float | None, callback_url: str | None
) -> dict[str, Any]:
    """The submit request body: the input and the options that were given."""
    body: dict[str, Any] = {"input": input}
    options = {"priority": priority, "timeout_s": timeout_s, "callback_url": callback_url}
    body.update({k: v for k, v in options.items() if v is not None})
    return body


def is_terminal(document: dict[str, Any]) -> bool:
    """Whether a status document shows the job ended."""
    return document.get("runtimeStatus") in TERMINAL


def outcome(document: dict[str, Any]) -> Any:
    """A terminal document's ``output``; raises JobFailed or JobTerminated for those ends."""
    status = document.get("runtimeStatus")
    if status == "Failed":
        raise JobFailed(document)
    if status == "Terminated":
        raise JobTerminated(document)
    return document.get("output")


def check_wait(wait: float) -> float:
    """``wait`` when it is within the contract's 0..30 s; else ValueError."""
    if not (math.isfinite(wait) and 0 <= wait <= MAX_WAIT_S):
        raise ValueError(f"wait must be between 0 and {MAX_WAIT_S:g} seconds, got {wait!r}")
    return float(wait)


def seconds_text(seconds: float) -> str:
    """``2.5`` → ``"2.5"``, ``30.0`` → ``"30"``: a ``wait`` value, millisecond precision."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


def submit_plan(
    base_url: str,
    pipeline: str,
    body: dict[str, Any],
    *,
    idempotency_key: str | None,
    wait: float | None,
    max_retries: int,
    deployment: str | None = None,
) -> Plan[Submitted]:
    """``POST /api/score/{pipeline}``; see the module docstring for when it resends."""
    url = api_url(base_url, "score", pipeline)
    hold = 0.0
    if wait is not None:
        hold = check_wait(wait)
        url = with_query(url, wait=seconds_text(hold))
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    if deployment is not None:
        headers[DEPLOYMENT_HEADERS[0]] = deployment
    attempt = 0
    while True:
        response = yield Call("POST", url, body, headers, hold)
        if attempt < max_retries and _may_resend(response.status_code, idempotency_key, error_code(response)):
            attempt += 1
            yield Sleep(min(retry_after(response, RETRY_AFTER_S), MAX_RETRY_SLEEP_S))
            continue
        return _submitted(base_url, check(response, RETRY_AFTER_S))


def _submitted(base_url: str, response: httpx.Response) -> Submitted:
    """Read a submit's success: 202 with the job's URLs, or 200 with its status document."""
    document = read_json(response)
    if not isinstance(document, dict):
        raise ApiError(response.status_code, "InvalidResponse", "the submit answer is not a JSON object")
    if response.status_code != 200:
        return Submitted(JobLinks.from_accepted(response, document), None)
    job_id, status = document.get("instanceId"), location(response)
    if not isinstance(job_id, str):
        raise ApiError(200, "InvalidResponse", "the status document carries no instanceId")
    links = (
        JobLinks(job_id, status, sub_path(status, "terminate"), status)
        if status
        else JobLinks.for_id(base_url, job_id)
    )
    return Submitted(links, document)


def _may_resend(status: int, idempotency_key: str | None, code: str | None) -> bool:
    return status in (429, 503) and (idempotency_key is not None or code == "Overloaded")


def wait_plan(
    links: JobLinks,
    timeout: float,
    last: dict[str, Any] | None = None,
    on_update: StatusCallback | None = None,
) -> Plan[dict[str, Any]]:
    """Poll the job until it is terminal; return its final status document.

    Args:
        links: The job's links (the status URL is polled; a ``Location`` answer moves it).
        timeout: Seconds to wait in all; then :class:`JobTimeout`.
        last: The last document already known (a terminal one returns at once).
        on_update: Called with each document whose ``runtimeStatus`` differs from the one
            before. With a callback, the first read does not long-poll, so the caller sees the
            current status at once.
    """
    if last is not None and is_terminal(last):
        return last
    deadline = time.monotonic() + timeout
    url, long_poll, failures, plain_first = links.status_url, True, 0, on_update is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise JobTimeout(links.id, timeout, last)
        hold = 0.0 if plain_first or not long_poll else min(remaining, MAX_WAIT_S)
        plain_first, started = False, time.monotonic()
        try:
            response = yield Call("GET", with_query(url, wait=seconds_text(hold)) if hold else url, hold=hold)
        except ConnectionFailed:
            failures += 1
            if failures > POLL_FAILURES:
                raise
            yield Sleep(min(0.5 * failures, remaining))
            continue
        failures = 0
        if hold and response.status_code == 400:
            long_poll = False  # a status route that refuses `wait`: poll plainly instead
            continue
        document = read_json(check(response, RETRY_AFTER_S))
        changed = last is None or document.get("runtimeStatus") != last.get("runtimeStatus")
        last = document
        if changed and on_update is not None:
            on_update(document)
        if is_terminal(document):
            return document
        url = location(response) or url
        if hold and not changed and time.monotonic() - started < hold / 2:
            long_poll = False  # it answered at once with no news: this server ignores `wait`
        elif long_poll:
            continue  # held, or had news, or it was the plain first read: long-poll at once
        pause = min(retry_after(response, RETRY_AFTER_S), deadline - time.monotonic())
        yield Sleep(max(pause, MIN_POLL_S))


def fetch_plan(url: str) -> Plan[Any]:
    """``GET url`` → its JSON body (2xx, including a status route's 202)."""
    response = yield Call("GET", url)
    return read_json(check(response, RETRY_AFTER_S))


def put_plan(url: str, body: Any) -> Plan[Any]:
    """``PUT url`` with a JSON body → its JSON answer (changing an endpoint's traffic)."""
    response = yield Call("PUT", url, json=body)
    return read_json(check(response, RETRY_AFTER_S))


def traffic_body(traffic: dict[str, int], mirror: dict[str, int] | None, reason: str) -> dict[str, Any]:
    """The body of ``PUT /api/endpoints/{name}/traffic`` (docs/api.md)."""
    return {"traffic": traffic, **({"mirror": mirror} if mirror is not None else {}), "reason": reason}


def send_plan(method: str, url: str) -> Plan[None]:
    """A request whose answer only has to be a success (terminate, purge)."""
    response = yield Call(method, url)
    check(response, RETRY_AFTER_S)
