"""The blocking client: :class:`Client` and the :class:`Job` it returns.

Only I/O lives here (``httpx.Client``, ``time.sleep``); what to send and how to read the answers
is in :mod:`nearline.client.plans`, shared with :mod:`nearline.client.aio`.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, TypeVar

import httpx

from nearline.client.errors import ConnectionFailed
from nearline.client.plans import (
    JobHandle,
    StatusCallback,
    fetch_plan,
    outcome,
    put_plan,
    send_plan,
    submit_body,
    submit_plan,
    traffic_body,
    wait_plan,
)
from nearline.client.protocol import (
    USER_AGENT,
    Call,
    JobLinks,
    Plan,
    Sleep,
    api_url,
    auth_headers,
    check_base_url,
    connection_failed,
    terminate_target,
)

T = TypeVar("T")


class Client:
    """A blocking client for a nearline API (``nearline serve`` or the Azure Functions app).

    Args:
        base_url: The API's root, e.g. ``http://127.0.0.1:7071`` or
            ``https://<app>.azurewebsites.net`` (without ``/api``).
        key: API key, sent as header ``x-functions-key`` (not to URLs that carry ``?code=``).
        timeout: Seconds for one HTTP request; a long-poll gets its wait on top.
        transport: An httpx transport (e.g. ``httpx.MockTransport``, or one with retries).
        max_retries: Times a refused submit (429/503) is resent when that is safe; 0 never.

    Raises:
        ValueError: ``base_url`` is not an absolute http(s) URL.
    """

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_retries: int = 3,
    ) -> None:
        self.base_url = check_base_url(base_url)
        self.key = key
        self.timeout = timeout
        self.max_retries = max_retries
        self._http = httpx.Client(timeout=timeout, transport=transport, headers={"user-agent": USER_AGENT})

    def submit(
        self,
        pipeline: str,
        input: Any,
        *,
        idempotency_key: str | None = None,
        priority: str | None = None,
        timeout_s: float | None = None,
        callback_url: str | None = None,
        wait: float | None = None,
        deployment: str | None = None,
    ) -> Job:
        """Submit a scoring request; ``POST /api/score/{pipeline}``.

        Args:
            pipeline: The pipeline (endpoint) name.
            input: The pipeline's input, any JSON value.
            idempotency_key: The same key (per pipeline) returns the same job.
            priority: ``high``, ``normal`` or ``low``.
            timeout_s: The job's deadline in seconds from now (server default 60).
            callback_url: Where the server POSTs the job's signed event when it ends
                (docs/webhooks.md; the receiver checks it with ``nearline.webhooks.verify``).
            wait: Seconds (0..30) the server may hold the request; a job that ends within them
                comes back with its status document (``job.document``) and ``result()`` needs
                no further request.
            deployment: Score with this deployment of the endpoint, bypassing its traffic
                split (the ``nearline-deployment`` header; docs/deployments.md).

        Raises:
            ApiError: the server refused the request (a typed subclass per status).
            ConnectionFailed: no answer from the server.
            ValueError: ``wait`` is outside 0..30.
        """
        body = submit_body(input, priority=priority, timeout_s=timeout_s, callback_url=callback_url)
        plan = submit_plan(
            self.base_url,
            pipeline,
            body,
            idempotency_key=idempotency_key,
            wait=wait,
            max_retries=self.max_retries,
            deployment=deployment,
        )
        submitted = self._run(plan)
        return Job(self, submitted.links, submitted.document)

    def get(self, job_id: str) -> dict[str, Any]:
        """The status document of job ``job_id`` (``GET /api/jobs/{id}``); ApiNotFound if unknown."""
        return dict(self._run(fetch_plan(JobLinks.for_id(self.base_url, job_id).status_url)))

    def job(self, job_id: str) -> Job:
        """A :class:`Job` for a job known only by id (URLs built from ``base_url``)."""
        return Job(self, JobLinks.for_id(self.base_url, job_id))

    def pipelines(self) -> list[dict[str, Any]]:
        """The pipelines: ``[{"name", "description", "inputSchema"}, ...]``."""
        return list(self._run(fetch_plan(api_url(self.base_url, "pipelines")))["pipelines"])

    def health(self) -> dict[str, Any]:
        """The server's health document (``GET /api/health``)."""
        return dict(self._run(fetch_plan(api_url(self.base_url, "health"))))

    def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint: deployments, models, live ``traffic`` and ``mirror``, ``history``."""
        return list(self._run(fetch_plan(api_url(self.base_url, "endpoints")))["endpoints"])

    def endpoint(self, name: str) -> dict[str, Any]:
        """One endpoint's document (``GET /api/endpoints/{name}``); ApiNotFound if unknown."""
        return dict(self._run(fetch_plan(api_url(self.base_url, "endpoints", name))))

    def set_traffic(
        self, name: str, traffic: dict[str, int], *, mirror: dict[str, int] | None = None, reason: str = ""
    ) -> dict[str, Any]:
        """Change an endpoint's live split (an admin key; ``mirror`` None: no mirroring); returns
        the endpoint's document. ApiBadRequest names a broken rule; ApiUnauthorized is a key that is
        missing, wrong or not an admin key (401, 403)."""
        url = api_url(self.base_url, "endpoints", name, "traffic")
        return dict(self._run(put_plan(url, traffic_body(traffic, mirror, reason))))

    def compare(self, name: str, window_s: int = 300) -> dict[str, Any]:
        """The endpoint's deployments compared over the last ``window_s`` seconds (1..3600):
        ``GET /api/endpoints/{name}/compare`` (docs/deployments.md)."""
        url = api_url(self.base_url, "endpoints", name, "compare") + f"?window_s={int(window_s)}"
        return dict(self._run(fetch_plan(url)))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = next(plan)
                    continue
                try:
                    response = self._send(step)
                except ConnectionFailed as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(response)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _send(self, call: Call) -> httpx.Response:
        headers = {**call.headers, **auth_headers(call.url, self.key)}
        try:
            return self._http.request(
                call.method, call.url, json=call.json, headers=headers, timeout=self.timeout + call.hold
            )
        except httpx.TransportError as exc:
            raise connection_failed(call, exc) from exc


class Job(JobHandle):
    """A submitted job: its id and URLs, and the calls that follow it."""

    def __init__(self, client: Client, links: JobLinks, document: dict[str, Any] | None = None) -> None:
        super().__init__(links, document)
        self._client = client

    def status(self) -> dict[str, Any]:
        """The job's status document now (one request, no waiting)."""
        self.document = dict(self._client._run(fetch_plan(self.status_url)))
        return self.document

    def wait(self, timeout: float = 60.0, *, on_update: StatusCallback | None = None) -> dict[str, Any]:
        """Wait until the job ends; return its final status document (whatever the end).

        Args:
            timeout: Seconds to wait in all.
            on_update: Called with each status document whose ``runtimeStatus`` changed.

        Raises:
            JobTimeout: the job had not ended after ``timeout`` seconds (it goes on).
        """
        self.document = self._client._run(wait_plan(self.links, timeout, self.document, on_update))
        return self.document

    def result(self, timeout: float = 60.0, *, on_update: StatusCallback | None = None) -> Any:
        """Wait until the job ends and return its output.

        Long-polls the status URL (``?wait=``) where the server supports it, else polls at the
        pace of its ``Retry-After``.

        Raises:
            JobFailed: the job ended Failed (``.code``, ``.message``, ``.document``).
            JobTerminated: the job was terminated.
            JobTimeout: the job had not ended after ``timeout`` seconds (it goes on).
        """
        return outcome(self.wait(timeout, on_update=on_update))

    def terminate(self, reason: str = "") -> None:
        """Ask the server to end the job; ApiGone if it already ended."""
        self._client._run(send_plan("POST", terminate_target(self.terminate_url, reason)))

    def purge(self) -> None:
        """Delete the job's record; ApiNotFound if there is none."""
        self._client._run(send_plan("DELETE", self.purge_url))
