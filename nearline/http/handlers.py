"""Every route of the HTTP contract (docs/api.md), answered over the job seam.

A framework adapter builds a :class:`Request`, calls :meth:`Handlers.handle` with a route name
from :data:`ROUTES`, and writes the :class:`Response` it gets back: the status codes, headers,
bodies, key checks, error mapping and metrics are decided here, once, for every profile
(kserve's one ``DataPlane`` under thin REST and gRPC endpoints). The route table and the two
types are :mod:`nearline.http.routes`; adapters and tests import them from here too.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nearline import __version__
from nearline.constants import DEPLOYMENT_HEADERS, RETRY_AFTER_S
from nearline.errors import Forbidden, NearlineError, Overloaded, PageNotFound, Unauthorized, http_error
from nearline.http import admin, pages
from nearline.http import dashboard as ui
from nearline.http.metrics import ApiMetrics
from nearline.http.openapi import openapi_document
from nearline.http.routes import ROUTES, Request, Response
from nearline.idempotency import caller_scope
from nearline.jobs import JobRecord, job_urls, poll_headers, status_document
from nearline.outcomes import parse_window
from nearline.service import Jobs
from nearline.splits.request import parse_split_request
from nearline.submissions import parse_wait

log = logging.getLogger("nearline.api")

#: Shed submissions are logged at most this often (with a count): see :class:`ShedLog`.
SHED_LOG_INTERVAL_S = 10.0


class Handlers:
    """The contract's handlers over one :class:`~nearline.service.Jobs`.

    Args:
        jobs: The job seam.
        api_keys: Keys a request must carry (``x-functions-key`` or ``?code=``) on routes with
            ``auth``; empty: no keys (on Azure the Functions host checks them instead).
        admin_keys: Keys that also open the routes with ``admin`` (changing traffic, dead
            letters). With any key configured, an admin route refuses every other key (403);
            with none at all, every route is open (Azure: the host's admin level guards them).
        metrics: Where requests are counted; None: not counted.
        health: What the server adds to ``GET /api/health``, e.g. ``{"status": "degraded",
            "reason": ...}`` while a worker it runs is down (``nearline serve``).
        shed: Where refused submissions are logged; pass one that outlives this object where
            handlers are made per request (Azure), so the log stays one line per interval.
        page_prefix: Where the host mounts the pages (``/`` and ``/docs``): Azure's ``/api``.
    """

    def __init__(
        self,
        jobs: Jobs,
        *,
        api_keys: tuple[str, ...] = (),
        admin_keys: tuple[str, ...] = (),
        metrics: ApiMetrics | None = None,
        health: Callable[[], Mapping[str, Any]] | None = None,
        shed: ShedLog | None = None,
        page_prefix: str = "",
    ) -> None:
        self.jobs = jobs
        self.api_keys = api_keys
        self.admin_keys = admin_keys
        self.api_metrics = metrics
        self.server_health = health
        self._routes = {r.name: r for r in ROUTES}
        self._shed = shed if shed is not None else ShedLog()
        self.page_prefix = page_prefix

    async def handle(self, name: str, request: Request) -> Response:
        """Answer ``request`` on route ``name``: errors become their responses, never raise."""
        route = self._routes[name]
        started = time.perf_counter()
        try:
            if route.admin:
                authorize_admin(request, self.api_keys, self.admin_keys)
            elif route.auth:
                authorize(request, self.api_keys + self.admin_keys)
            response = await getattr(self, name)(request)
        except Overloaded as exc:
            self._shed.record(exc.message)
            if self.api_metrics is not None:
                self.api_metrics.shed.labels(request.params.get("pipeline", "")).inc()
            response = error_response(exc)
        except NearlineError as exc:
            if exc.status >= 500:
                log.warning("%s %s: %s", route.method, route.path, exc.message)
            response = error_response(exc)
        except Exception:
            log.exception("%s %s failed", route.method, route.path)
            response = error_response(NearlineError("internal error; see the server log"))
        if self.api_metrics is not None:
            self.api_metrics.requests.labels(name, str(response.status)).inc()
            self.api_metrics.latency.labels(name).observe(time.perf_counter() - started)
        return response

    # -- jobs -----------------------------------------------------------------------------

    async def score(self, request: Request) -> Response:
        started = time.time()
        pipeline = request.params.get("pipeline", "")
        wait = parse_wait(request.query.get("wait"))
        assert request.read_body is not None, "the adapter must pass read_body on score"
        body = await request.read_body(self.jobs.max_body)
        # Idempotency keys are the caller's: scoped by the API key it sent (the header wins, as
        # in authorize; on Azure the function key the host checked).
        caller = request.headers.get("x-functions-key") or request.query.get("code")
        job, created = await self.jobs.submit(
            pipeline,
            body,
            request.headers.get("idempotency-key"),
            scope=caller_scope(caller),
            base_url=request.base_url,
            deployment=_targeted(request),
        )
        if created and self.api_metrics is not None:
            self.api_metrics.submitted.labels(pipeline).inc()
            self.api_metrics.hops.submitted(job, started)
        if wait is not None:
            job = job if job.status.terminal else await self._current(job.id, wait, job if created else None)
            if job.status.terminal:
                return Response(200, status_document(job), _deployment_header(job))
        headers = {**self._poll_headers(request, job.id), **_deployment_header(job)}
        return Response(202, self._urls(request, job.id), headers)

    async def status(self, request: Request) -> Response:
        job_id = request.params.get("id", "")
        job = await self._current(job_id, parse_wait(request.query.get("wait")))
        if job.status.terminal:
            return Response(200, status_document(job), _deployment_header(job))
        headers = {**self._poll_headers(request, job.id), **_deployment_header(job)}
        return Response(202, status_document(job), headers)

    async def terminate(self, request: Request) -> Response:
        job_id = request.params.get("id", "")
        job = await self.jobs.terminate(job_id, request.query.get("reason", ""))
        deployment = _deployment_header(job) if job is not None else {}
        return Response(202, headers={**self._poll_headers(request, job_id), **deployment})

    async def purge(self, request: Request) -> Response:
        deleted = await self.jobs.purge(request.params.get("id", ""))
        return Response(200, {"instancesDeleted": deleted})

    # -- the rest -------------------------------------------------------------------------

    async def pipelines(self, request: Request) -> Response:
        return Response(200, self.jobs.catalog.document())

    async def endpoints(self, request: Request) -> Response:
        """Every endpoint's deployments, models, live split and its history (docs/deployments.md)."""
        return Response(200, {"endpoints": [await self._endpoint(p.name) for p in self.jobs.catalog]})

    async def endpoint(self, request: Request) -> Response:
        """One endpoint's deployments, models, live split and history; 404 naming the endpoints."""
        return Response(200, await self._endpoint(request.params.get("name", "")))

    async def compare(self, request: Request) -> Response:
        """The endpoint's deployments compared over ``?window_s=`` (docs/deployments.md)."""
        window_s = parse_window(request.query.get("window_s"))
        return Response(200, await self.jobs.compare(request.params.get("name", ""), window_s))

    async def traffic(self, request: Request) -> Response:
        """Change an endpoint's live split (admin): 200 with its document, 400 naming the rule."""
        name = request.params.get("name", "")
        deployments = [d.name for d in self.jobs.catalog.get(name).deployments]
        assert request.read_body is not None, "the adapter must pass read_body on traffic"
        split, reason = parse_split_request(await request.read_body(self.jobs.max_body), deployments)
        await self.jobs.set_split(name, split, reason)
        return Response(200, await self._endpoint(name))

    async def health(self, request: Request) -> Response:
        # 200 when degraded too: a probe that restarted the API for a worker's trouble would
        # only add an outage; the reason is in the body, for people and monitoring.
        server = self.server_health() if self.server_health is not None else {}
        return Response(200, {"status": "ok", "version": __version__, **await self.jobs.health(), **server})

    async def openapi(self, request: Request) -> Response:
        return Response(200, openapi_document(self.jobs.catalog, request.base_url))

    async def metrics(self, request: Request) -> Response:
        if self.api_metrics is None:
            return error_response(NearlineError("metrics are not collected here"))
        depth = await self.jobs.queue_depth()
        if depth is not None:
            self.api_metrics.depth.set(depth)
        return Response(
            200, content=generate_latest(self.api_metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    # -- dead letters (nearline/http/admin.py) and the dashboard (nearline/http/dashboard/):
    # functions of (handlers, request) over self.jobs, kept in their modules.
    admin_deadletters, admin_deadletter, admin_redrive, admin_purge = admin.ROUTES
    dashboard, dashboard_page, dashboard_post = ui.ROUTES

    # -- pages for people (nearline/http/pages.py) ------------------------------------------

    async def home(self, request: Request) -> Response:
        # The dashboard is served by `nearline serve` (no prefix), not by the Function app.
        page = pages.home_page(
            self.page_prefix, metrics=self.api_metrics is not None, dashboard=not self.page_prefix
        )
        return Response(200, content=page.content, media_type=page.media_type, headers=page.headers)

    async def docs(self, request: Request) -> Response:
        page = pages.docs_page()
        return Response(200, content=page.content, media_type=page.media_type, headers=page.headers)

    async def docs_asset(self, request: Request) -> Response:
        name = request.params.get("asset", "")
        page = pages.asset(name)
        if page is None:
            raise PageNotFound(f"no file {name[:100]!r} in /docs")
        return Response(200, content=page.content, media_type=page.media_type, headers=page.headers)

    # -- helpers --------------------------------------------------------------------------

    async def _current(self, job_id: str, wait: float | None, known: JobRecord | None = None) -> JobRecord:
        """The job as it is now, or, with ``wait``, once it ends or the wait runs out (``known``:
        the job as this request just created it)."""
        if not wait:
            return await self.jobs.get(job_id)
        if self.api_metrics is None:
            return await self.jobs.wait(job_id, wait, known)
        started = time.time()
        self.api_metrics.waiting.inc()
        try:
            job = await self.jobs.wait(job_id, wait, known)
        finally:
            self.api_metrics.waiting.dec()
        self.api_metrics.hops.answered(job, started)
        return job

    async def _endpoint(self, name: str) -> dict[str, Any]:
        """``GET /api/endpoints/{name}``: the endpoint with its live split and split history."""
        doc = self.jobs.catalog.get(name).endpoint_document(await self.jobs.split(name))
        return {**doc, "history": await self.jobs.split_history(name)}

    def _urls(self, request: Request, job_id: str) -> dict[str, str]:
        return job_urls(request.base_url, job_id, request.query.get("code"))

    def _poll_headers(self, request: Request, job_id: str) -> dict[str, str]:
        return poll_headers(self._urls(request, job_id), RETRY_AFTER_S)


class ShedLog:
    """Logs shed submissions at most once per ``interval`` seconds, with how many there were.

    A burst against a full queue is thousands of refusals a second: one line each would bury the
    log (and cost more than the refusal). The exact count is in ``nearline_api_shed_total``.
    """

    def __init__(self, interval: float = SHED_LOG_INTERVAL_S) -> None:
        self.interval = interval
        self._count = 0
        self._next = 0.0

    def record(self, message: str) -> None:
        self._count += 1
        now = time.monotonic()
        if now >= self._next:
            log.warning("shed %d submission(s) since the last report: %s", self._count, message)
            self._count, self._next = 0, now + self.interval


def _targeted(request: Request) -> str | None:
    """The deployment a submit names: ``nearline-deployment``, or Azure ML's header."""
    for name in DEPLOYMENT_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            return value.strip()
    return None


def _deployment_header(job: JobRecord) -> dict[str, str]:
    """``nearline-deployment`` on a response about ``job`` (none on records from before)."""
    return {DEPLOYMENT_HEADERS[0]: job.deployment} if job.deployment else {}


def authorize(request: Request, keys: tuple[str, ...]) -> None:
    """Azure Functions' conventions: header ``x-functions-key`` or query ``code``."""
    if not keys:
        return
    given = request.headers.get("x-functions-key") or request.query.get("code")
    if not given:
        raise Unauthorized("an API key is required: header x-functions-key or query parameter code")
    if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
        raise Unauthorized("the API key is not valid")


def authorize_admin(request: Request, api_keys: tuple[str, ...], admin_keys: tuple[str, ...]) -> None:
    """An admin route: with any key configured, only an admin key opens it (403 for an API key)."""
    if not api_keys and not admin_keys:
        return
    authorize(request, api_keys + admin_keys)
    given = request.headers.get("x-functions-key") or request.query.get("code") or ""
    if not any(hmac.compare_digest(given.encode(), k.encode()) for k in admin_keys):
        hint = "" if admin_keys else "; none is configured: set NEARLINE_ADMIN_KEYS"
        raise Forbidden(f"this route needs an admin key{hint}")


def error_response(exc: NearlineError) -> Response:
    """The error as a response (shape and headers from :func:`nearline.errors.http_error`)."""
    body, status, headers = http_error(exc)
    return Response(status, body, headers)
