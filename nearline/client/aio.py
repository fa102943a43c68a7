"""The asyncio client: :class:`AsyncClient` and the :class:`AsyncJob` it returns.

The same surface as :mod:`nearline.client.sync`, awaited. Only I/O lives here
(``httpx.AsyncClient``, ``asyncio.sleep``); the plans in :mod:`nearline.client.plans` are the
same ones the blocking client runs.
"""

from __future__ import annotations

import asyncio
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


class AsyncClient:
    """An asyncio client for a nearline API; arguments as :class:`nearline.client.Client`.

    Use ``async with AsyncClient(...) as client:`` or ``await client.close()``.
    """

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_retries: int = 3,
    ) -> None:
        self.base_url = check_base_url(base_url)
        self.key = key
        self.timeout = timeout
        self.max_retries = max_retries
        self._http = httpx.AsyncClient(
            timeout=timeout, transport=transport, headers={"user-agent": USER_AGENT}
        )

    async def submit(
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
    ) -> AsyncJob:
        """Submit a scoring request; see :meth:`nearline.client.Client.submit`."""
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
        submitted = await self._run(plan)
        return AsyncJob(self, submitted.links, submitted.document)

    async def get(self, job_id: str) -> dict[str, Any]:
        """The status document of job ``job_id``; ApiNotFound if unknown."""
        return dict(await self._run(fetch_plan(JobLinks.for_id(self.base_url, job_id).status_url)))

    def job(self, job_id: str) -> AsyncJob:
        """An :class:`AsyncJob` for a job known only by id (URLs built from ``base_url``)."""
        return AsyncJob(self, JobLinks.for_id(self.base_url, job_id))

    async def pipelines(self) -> list[dict[str, Any]]:
        """The pipelines: ``[{"name", "description", "inputSchema"}, ...]``."""
        return list((await self._run(fetch_plan(api_url(self.base_url, "pipelines"))))["pipelines"])

    async def health(self) -> dict[str, Any]:
        """The server's health document (``GET /api/health``)."""
        return dict(await self._run(fetch_plan(api_url(self.base_url, "health"))))

    async def endpoints(self) -> list[dict[str, Any]]:
        """Every endpoint: deployments, models, live ``traffic`` and ``mirror``, ``history``."""
        return list((await self._run(fetch_plan(api_url(self.base_url, "endpoints"))))["endpoints"])

    async def endpoint(self, name: str) -> dict[str, Any]:
        """One endpoint's document (``GET /api/endpoints/{name}``); ApiNotFound if unknown."""
        return dict(await self._run(fetch_plan(api_url(self.base_url, "endpoints", name))))

    async def set_traffic(
        self, name: str, traffic: dict[str, int], *, mirror: dict[str, int] | None = None, reason: str = ""
    ) -> dict[str, Any]:
        """Change an endpoint's live split (an admin key); see :meth:`Client.set_traffic`."""
        url = api_url(self.base_url, "endpoints", name, "traffic")
        return dict(await self._run(put_plan(url, traffic_body(traffic, mirror, reason))))

    async def compare(self, name: str, window_s: int = 300) -> dict[str, Any]:
        """The endpoint's deployments compared; see :meth:`Client.compare`."""
        url = api_url(self.base_url, "endpoints", name, "compare") + f"?window_s={int(window_s)}"
        return dict(await self._run(fetch_plan(url)))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    aclose = close  # the name contextlib.aclosing looks for

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, plan: Plan[T]) -> T:
        try:
            step = next(plan)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = next(plan)
                    continue
                try:
                    response = await self._send(step)
                except ConnectionFailed as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(response)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _send(self, call: Call) -> httpx.Response:
        headers = {**call.headers, **auth_headers(call.url, self.key)}
        try:
            return await self._http.request(
                call.method, call.url, json=call.json, headers=headers, timeout=self.timeout + call.hold
            )
        except httpx.TransportError as exc:
            raise connection_failed(call, exc) from exc


class AsyncJob(JobHandle):
    """A submitted job, for :class:`AsyncClient`: the methods of :class:`nearline.client.Job`, awaited."""

    def __init__(self, client: AsyncClient, links: JobLinks, document: dict[str, Any] | None = None) -> None:
        super().__init__(links, document)
        self._client = client

    async def status(self) -> dict[str, Any]:
        """The job's status document now (one request, no waiting)."""
        self.document = dict(await self._client._run(fetch_plan(self.status_url)))
        return self.document

    async def wait(self, timeout: float = 60.0, *, on_update: StatusCallback | None = None) -> dict[str, Any]:
        """Wait until the job ends; return its final status document. JobTimeout after ``timeout``."""
        self.document = await self._client._run(wait_plan(self.links, timeout, self.document, on_update))
        return self.document

    async def result(self, timeout: float = 60.0, *, on_update: StatusCallback | None = None) -> Any:
        """Wait until the job ends and return its output; JobFailed, JobTerminated, JobTimeout."""
        return outcome(await self.wait(timeout, on_update=on_update))

    async def terminate(self, reason: str = "") -> None:
        """Ask the server to end the job; ApiGone if it already ended."""
        await self._client._run(send_plan("POST", terminate_target(self.terminate_url, reason)))

    async def purge(self) -> None:
        """Delete the job's record; ApiNotFound if there is none."""
        await self._client._run(send_plan("DELETE", self.purge_url))
