"""The HTTP contract (docs/api.md) on Azure Functions: a thin adapter over :mod:`nearline.http`.

Each route is registered on ``bp`` with one line of glue that hands the request (and, for the job
routes, the durable client) to :func:`handle`, which answers it with the core's
:class:`~nearline.http.handlers.Handlers` over :class:`~orchestrations.durable_jobs.DurableJobs`:
a request is accepted or refused here exactly as by ``nearline serve``. The module-level handler
functions (``submit``, ``get_job``, ...) are what the tests call in-process.

Keys: the Functions host checks them (``x-functions-key`` header or ``code`` query, app-level
``AuthLevel.FUNCTION``) before a handler runs; only health and the pages for people are
anonymous (``/api/home``, ``/api/docs``: the host puts every route under its prefix). The
contract's admin routes (``Route.admin``: ``PUT /api/endpoints/{name}/traffic``) are
``AuthLevel.ADMIN``: only the host's master key opens them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import azure.durable_functions as df
import azure.functions as func

from nearline.errors import PayloadTooLarge
from nearline.http import handlers as h
from nearline.pipelines.spec import Catalog, load_pipelines
from nearline.settings import FunctionsSettings
from orchestrations import storage
from orchestrations.azure_status import DurableClient
from orchestrations.durable_jobs import DurableJobs
from orchestrations.queue_depth import request_queue_depth
from orchestrations.split_readings import split_readings

bp = df.Blueprint()

#: The catalog, loaded when a handler asks for it (inside its error handling).
Pipelines = Callable[[], Catalog]
_catalog: Catalog | None = None
_catalog_lock = threading.Lock()
#: One per process: handlers are made per request, the shed log must count across them.
_shed = h.ShedLog()
#: host.json's ``extensions.http.routePrefix``: every route, the pages too, is under it.
ROUTE_PREFIX = "/api"


def catalog() -> Catalog:
    """The pipelines catalog: ``NEARLINE_PIPELINES`` or the packaged examples, loaded on first use."""
    global _catalog
    with _catalog_lock:
        if _catalog is None:
            _catalog = load_pipelines(FunctionsSettings.from_env().pipelines)
        return _catalog


async def handle(
    name: str, req: func.HttpRequest, client: DurableClient | None, pipelines: Pipelines = catalog
) -> func.HttpResponse:
    """Answer ``req`` on the contract's route ``name`` (see :data:`nearline.http.handlers.ROUTES`)."""
    jobs = DurableJobs(
        client, pipelines, depth=request_queue_depth(), tombstones=storage.tombstones, splits=split_readings()
    )
    handlers = h.Handlers(jobs, shed=_shed, page_prefix=ROUTE_PREFIX)
    return _response(await handlers.handle(name, _request(req)))


def _request(req: func.HttpRequest) -> h.Request:
    parts = urlsplit(req.url)

    async def read_body(limit: int) -> bytes:
        body = req.get_body()
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {limit}")
        return body

    return h.Request(
        base_url=f"{parts.scheme}://{parts.netloc}",
        params=req.route_params,
        query=req.params,
        headers=req.headers,
        read_body=read_body,
    )


def _response(resp: h.Response) -> func.HttpResponse:
    if resp.content is not None:  # the host adds "; charset=utf-8" to a text/* mimetype itself
        mimetype = resp.media_type.partition(";")[0].strip()
        return func.HttpResponse(
            resp.content, status_code=resp.status, headers=dict(resp.headers), mimetype=mimetype
        )
    if resp.body is None:
        return func.HttpResponse(status_code=resp.status, headers=dict(resp.headers))
    return func.HttpResponse(
        json.dumps(resp.body), status_code=resp.status, headers=dict(resp.headers), mimetype=resp.media_type
    )


async def submit(
    req: func.HttpRequest, client: DurableClient, pipelines: Pipelines = catalog
) -> func.HttpResponse:
    return await handle("score", req, client, pipelines)


async def get_job(req: func.HttpRequest, client: DurableClient) -> func.HttpResponse:
    return await handle("status", req, client)


async def terminate(req: func.HttpRequest, client: DurableClient) -> func.HttpResponse:
    return await handle("terminate", req, client)


async def purge(req: func.HttpRequest, client: DurableClient) -> func.HttpResponse:
    return await handle("purge", req, client)


async def list_pipelines(req: func.HttpRequest, pipelines: Pipelines = catalog) -> func.HttpResponse:
    return await handle("pipelines", req, None, pipelines)


async def list_endpoints(
    req: func.HttpRequest, pipelines: Pipelines = catalog, client: DurableClient | None = None
) -> func.HttpResponse:
    return await handle("endpoints", req, client, pipelines)


async def read_endpoint(
    req: func.HttpRequest, pipelines: Pipelines = catalog, client: DurableClient | None = None
) -> func.HttpResponse:
    return await handle("endpoint", req, client, pipelines)


async def set_traffic(
    req: func.HttpRequest, client: DurableClient, pipelines: Pipelines = catalog
) -> func.HttpResponse:
    return await handle("traffic", req, client, pipelines)


async def health(req: func.HttpRequest, pipelines: Pipelines = catalog) -> func.HttpResponse:
    return await handle("health", req, None, pipelines)


async def openapi(req: func.HttpRequest, pipelines: Pipelines = catalog) -> func.HttpResponse:
    return await handle("openapi", req, None, pipelines)


# --- registration: one line of glue per route ----------------------------------------------


@bp.route(route="score/{pipeline}", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def submit_job(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await submit(req, client, catalog)


@bp.route(route="jobs/{id}", methods=["GET"])
@bp.durable_client_input(client_name="client")
async def read_job(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await get_job(req, client)


@bp.route(route="jobs/{id}/terminate", methods=["POST"])
@bp.durable_client_input(client_name="client")
async def terminate_job(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await terminate(req, client)


@bp.route(route="jobs/{id}", methods=["DELETE"])
@bp.durable_client_input(client_name="client")
async def purge_job(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await purge(req, client)


@bp.route(route="pipelines", methods=["GET"])
async def get_pipelines(req: func.HttpRequest) -> func.HttpResponse:
    return await list_pipelines(req, catalog)


@bp.route(route="endpoints", methods=["GET"])
@bp.durable_client_input(client_name="client")
async def get_endpoints(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await list_endpoints(req, catalog, client)


@bp.route(route="endpoints/{name}", methods=["GET"])
@bp.durable_client_input(client_name="client")
async def get_endpoint(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await read_endpoint(req, catalog, client)


@bp.route(route="endpoints/{name}/traffic", methods=["PUT"], auth_level=func.AuthLevel.ADMIN)
@bp.durable_client_input(client_name="client")
async def put_traffic(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    return await set_traffic(req, client, catalog)


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_health(req: func.HttpRequest) -> func.HttpResponse:
    return await health(req, catalog)


@bp.route(route="openapi.json", methods=["GET"])
async def get_openapi(req: func.HttpRequest) -> func.HttpResponse:
    return await openapi(req, catalog)


@bp.route(route="home", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_home(req: func.HttpRequest) -> func.HttpResponse:
    return await handle("home", req, None)


@bp.route(route="docs", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_docs(req: func.HttpRequest) -> func.HttpResponse:
    return await handle("docs", req, None)


@bp.route(route="docs/{asset}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_docs_asset(req: func.HttpRequest) -> func.HttpResponse:
    return await handle("docs_asset", req, None)
