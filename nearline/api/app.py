"""Routes of the HTTP contract (DESIGN §2). Handlers parse HTTP, call the service, shape HTTP."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nearline import __version__
from nearline.api.errors import handle_nearline_error, handle_unexpected
from nearline.api.openapi import openapi_document
from nearline.constants import MAX_BODY_BYTES, REQUEST_QUEUE, RETRY_AFTER_S
from nearline.errors import NearlineError, PayloadTooLarge, Unauthorized
from nearline.jobs import JobRecord, job_urls, poll_headers, status_document
from nearline.service import JobService
from nearline.submissions import parse_wait

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class ApiConfig:
    """API settings: keys (empty: no auth) and the body limit."""

    api_keys: tuple[str, ...] = ()
    max_body: int = MAX_BODY_BYTES


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nearline_api_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "nearline_api_request_seconds", "HTTP request latency", ["route"], registry=r
        )
        self.submitted = Counter("nearline_api_jobs_submitted", "Jobs accepted", ["pipeline"], registry=r)
        self.depth = Gauge("nearline_queue_depth", "Request queue depth", registry=r)
        self.waiting = Gauge("nearline_api_long_polls", "Long-polls waiting", registry=r)


class _Routes:
    """The handlers, bound to one service, config and metrics registry."""

    def __init__(self, service: JobService, cfg: ApiConfig) -> None:
        self.service = service
        self.cfg = cfg
        self.metrics = _Metrics()

    def route(self, path: str, name: str, handler: Handler, method: str, auth: bool = True) -> Route:
        """A route whose handler is timed, counted and (unless ``auth`` is False) key-checked."""
        metrics, keys = self.metrics, self.cfg.api_keys

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            status = 500
            try:
                if auth:
                    _authorize(request, keys)
                response = await handler(request)
                status = response.status_code
                return response
            except NearlineError as exc:
                status = exc.status
                raise
            finally:
                metrics.requests.labels(name, str(status)).inc()
                metrics.latency.labels(name).observe(time.perf_counter() - started)

        return Route(path, endpoint, methods=[method])

    async def _waited(self, job: JobRecord, wait: float | None) -> JobRecord:
        if not wait or job.status.terminal:
            return job
        self.metrics.waiting.inc()
        try:
            return await self.service.wait(job.id, wait)
        finally:
            self.metrics.waiting.dec()

    async def submit(self, request: Request) -> Response:
        pipeline = request.path_params["pipeline"]
        wait = parse_wait(request.query_params.get("wait"))
        body = await _read_body(request, self.cfg.max_body)
        key = request.headers.get("idempotency-key")
        job, created = await asyncio.to_thread(self.service.submit, pipeline, body, key)
        if created:
            self.metrics.submitted.labels(pipeline).inc()
        job = await self._waited(job, wait)
        if job.status.terminal and wait is not None:
            return JSONResponse(status_document(job), 200)
        return JSONResponse(_urls(request, job.id), 202, _poll_headers(request, job.id))

    async def get_job(self, request: Request) -> Response:
        wait = parse_wait(request.query_params.get("wait"))
        job = await asyncio.to_thread(self.service.get, request.path_params["id"])
        job = await self._waited(job, wait)
        if job.status.terminal:
            return JSONResponse(status_document(job), 200)
        return JSONResponse(status_document(job), 202, _poll_headers(request, job.id))

    async def terminate(self, request: Request) -> Response:
        job_id = request.path_params["id"]
        await asyncio.to_thread(self.service.terminate, job_id, request.query_params.get("reason", ""))
        return Response(status_code=202, headers=_poll_headers(request, job_id))

    async def purge(self, request: Request) -> Response:
        await asyncio.to_thread(self.service.purge, request.path_params["id"])
        return JSONResponse({"instancesDeleted": 1}, 200)

    async def pipelines(self, request: Request) -> Response:
        return JSONResponse(self.service.catalog.document())

    async def health(self, request: Request) -> Response:
        depth = await asyncio.to_thread(self.service.broker.depth, REQUEST_QUEUE)
        return JSONResponse({"status": "ok", "version": __version__, "queueDepth": depth})

    async def prometheus(self, request: Request) -> Response:
        self.metrics.depth.set(await asyncio.to_thread(self.service.broker.depth, REQUEST_QUEUE))
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(self.service.catalog, str(request.base_url).rstrip("/")))


def create_app(service: JobService, config: ApiConfig | None = None) -> Starlette:
    """The Starlette application for ``service``."""
    r = _Routes(service, config or ApiConfig())
    routes = [
        r.route("/api/score/{pipeline}", "score", r.submit, "POST"),
        r.route("/api/jobs/{id}", "status", r.get_job, "GET"),
        r.route("/api/jobs/{id}", "purge", r.purge, "DELETE"),
        r.route("/api/jobs/{id}/terminate", "terminate", r.terminate, "POST"),
        r.route("/api/pipelines", "pipelines", r.pipelines, "GET"),
        r.route("/api/health", "health", r.health, "GET", auth=False),
        r.route("/api/openapi.json", "openapi", r.openapi, "GET", auth=False),
        r.route("/metrics", "metrics", r.prometheus, "GET", auth=False),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={NearlineError: handle_nearline_error, Exception: handle_unexpected},
    )


def _authorize(request: Request, keys: tuple[str, ...]) -> None:
    """Azure Functions' conventions: header ``x-functions-key`` or query ``code``."""
    if not keys:
        return
    given = request.headers.get("x-functions-key") or request.query_params.get("code")
    if not given:
        raise Unauthorized("an API key is required: header x-functions-key or query parameter code")
    if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
        raise Unauthorized("the API key is not valid")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _urls(request: Request, job_id: str) -> dict[str, str]:
    return job_urls(str(request.base_url), job_id, request.query_params.get("code"))


def _poll_headers(request: Request, job_id: str) -> dict[str, str]:
    return poll_headers(_urls(request, job_id), RETRY_AFTER_S)
