"""The HTTP contract (DESIGN §2) on Azure Functions, over Durable instances.

Each route is a thin function registered on ``bp`` that hands the request and the durable
client to a plain ``async`` handler below; the handlers are what the tests call in-process.
Validation (``nearline.submissions``), the status document (``nearline.jobs``) and the error
tree are the core's: a request is accepted or refused here exactly as by ``nearline serve``.

Keys: the Functions host checks them (``x-functions-key`` header or ``code`` query, app-level
``AuthLevel.FUNCTION``) before a handler runs; health and the OpenAPI document are anonymous.
Queue depth: no 503 on Azure (see docs/azure.md): reading Service Bus runtime properties on
every submit needs the Manage right and a management-plane round trip, and Service Bus bounds
a queue itself (its maximum size), which fails the ``enqueue`` activity and so the job.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import azure.durable_functions as df
import azure.functions as func

from nearline import __version__
from nearline.constants import ENV_PIPELINES, RETRY_AFTER_S
from nearline.errors import BrokerError, JobGone, JobNotFound, NearlineError, http_error
from nearline.examples import PIPELINES_FILE
from nearline.jobs import JobRecord, job_urls, poll_headers
from nearline.pipelines.spec import Catalog, load_pipelines
from nearline.submissions import job_id_for, new_job, parse_submission, parse_wait
from orchestrations.azure_status import (
    SCORING_ORCHESTRATOR,
    DurableClient,
    is_terminal,
    job_document,
    job_status,
    orchestrator_input,
)

log = logging.getLogger("nearline.azure.http")
bp = df.Blueprint()

#: The wait loop polls the instance's status (one read of the task hub's Instances table per
#: poll), starting fast for short jobs and backing off to a bound that keeps a long-poll's
#: extra latency under a quarter second.
POLL_FIRST_S = 0.05
POLL_MAX_S = 0.25

Handler = Callable[..., Awaitable[func.HttpResponse]]
#: The catalog, loaded when a handler asks for it (inside its error handling).
Pipelines = Callable[[], Catalog]
_catalog: Catalog | None = None
_catalog_lock = threading.Lock()


def catalog() -> Catalog:
    """The pipelines catalog: ``NEARLINE_PIPELINES`` or the packaged examples, loaded on first use."""
    global _catalog
    with _catalog_lock:
        if _catalog is None:
            _catalog = load_pipelines(os.environ.get(ENV_PIPELINES) or PIPELINES_FILE)
        return _catalog


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body), status_code=status, headers=headers, mimetype="application/json"
    )


def error_response(exc: NearlineError) -> func.HttpResponse:
    """The error as a response (shape and headers from :func:`nearline.errors.http_error`)."""
    body, status, headers = http_error(exc)
    return _json(body, status, headers)


def _errors(handler: Handler) -> Handler:
    """Turn the error tree into responses; anything else is a logged 500."""

    @functools.wraps(handler)
    async def wrapped(*args: Any, **kwargs: Any) -> func.HttpResponse:
        try:
            return await handler(*args, **kwargs)
        except NearlineError as exc:
            if exc.status >= 500:
                log.warning("%s: %s", handler.__name__, exc.message)
            return error_response(exc)
        except Exception:
            log.exception("%s failed", handler.__name__)
            return error_response(NearlineError("internal error; see the function app's log"))

    return wrapped


def urls(req: func.HttpRequest, job_id: str) -> dict[str, str]:
    """The management URLs of a job: absolute, on this app's own routes, carrying ``?code=``."""
    parts = urlsplit(req.url)
    return job_urls(f"{parts.scheme}://{parts.netloc}", job_id, req.params.get("code"))


def _poll_headers(req: func.HttpRequest, job_id: str) -> dict[str, str]:
    return poll_headers(urls(req, job_id), RETRY_AFTER_S)


def _accepted(req: func.HttpRequest, job_id: str) -> func.HttpResponse:
    return _json(urls(req, job_id), 202, _poll_headers(req, job_id))


async def wait_for_end(client: DurableClient, job_id: str, timeout: float) -> Any:
    """The instance's status once it has ended, or as it is after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    pause = POLL_FIRST_S
    while True:
        status = await client.get_status(job_id, show_input=True)
        remaining = until - loop.time()
        if not status or is_terminal(status) or remaining <= 0:
            return status
        await asyncio.sleep(min(pause, remaining))
        pause = min(pause * 2, POLL_MAX_S)


async def _start(client: DurableClient, job: JobRecord) -> None:
    try:
        await client.start_new(SCORING_ORCHESTRATOR, job.id, orchestrator_input(job))
    except Exception as exc:  # the durable client raises bare Exceptions with the host's message
        # With an Idempotency-Key, a concurrent twin request may have started the same instance
        # between our lookup and this call: the extension refuses to replace a running instance.
        if job.idempotency_key is not None and await client.get_status(job.id):
            return
        raise BrokerError(f"could not start job {job.id}: {exc}") from exc


@_errors
async def submit(req: func.HttpRequest, client: DurableClient, pipelines: Pipelines) -> func.HttpResponse:
    """``POST /api/score/{pipeline}``: validate, start the job's instance, 202 (or 200 with ``wait``)."""
    pipeline = req.route_params.get("pipeline", "")
    wait = parse_wait(req.params.get("wait"))
    sub = parse_submission(pipelines(), pipeline, req.get_body())
    key = req.headers.get("idempotency-key")
    job_id = job_id_for(pipeline, key)
    # Durable's start_new silently replaces a finished instance with the same id: look first.
    existing = await client.get_status(job_id) if key is not None else None
    if not existing:
        await _start(client, new_job(sub, job_id, key, now=time.time()))
    if wait is None:
        return _accepted(req, job_id)
    status = await wait_for_end(client, job_id, wait)
    if is_terminal(status):
        return _json(job_document(status), 200)
    return _accepted(req, job_id)


@_errors
async def get_job(req: func.HttpRequest, client: DurableClient) -> func.HttpResponse:
    """``GET /api/jobs/{id}``: the status document; 202 + Location while the job runs."""
    job_id = req.route_params.get("id", "")
    wait = parse_wait(req.params.get("wait"))
    status = await wait_for_end(client, job_id, wait or 0.0)
    if not status:
        raise JobNotFound(f"no job with id {job_id!r}")
    if is_terminal(status):
        return _json(job_document(status), 200)
    return _json(job_document(status), 202, _poll_headers(req, job_id))


@_errors
async def terminate(req: func.HttpRequest, client: DurableClient) -> func.HttpResponse:
    """``POST /api/jobs/{id}/terminate?reason=``: 202; 410 when the job has already ended."""
    job_id = req.route_params.get("id", "")
    status = await client.get_status(job_id)
    if not status:
        raise JobNotFound(f"no job with id {job_id!r}")
    if is_terminal(status):
        raise JobGone(f"job {job_id} already ended ({job_status(status.runtime_status).value})")
    await client.terminate(job_id, req.params.get("reason", ""))
    return func.HttpResponse(status_code=202, headers=_poll_headers(req, job_id))


@_errors
async def purge(req: func.HttpRequest, client: DurableClient) -> func.HttpResponse:
    """``DELETE /api/jobs/{id}``: delete the instance's history; 404 when there is none."""
    job_id = req.route_params.get("id", "")
    result = await client.purge_instance_history(job_id)
    deleted = int(getattr(result, "instances_deleted", 0) or 0)
    if not deleted:
        raise JobNotFound(f"no job with id {job_id!r}")
    return _json({"instancesDeleted": deleted}, 200)


@_errors
async def list_pipelines(req: func.HttpRequest, pipelines: Pipelines) -> func.HttpResponse:
    """``GET /api/pipelines``: names, descriptions and input JSON Schemas."""
    return _json(pipelines().document())


@_errors
async def health(req: func.HttpRequest, pipelines: Pipelines) -> func.HttpResponse:
    """``GET /api/health``: ok once the configuration loads (no Service Bus or hub round trip)."""
    pipelines()
    return _json({"status": "ok", "version": __version__})


@_errors
async def openapi(req: func.HttpRequest, pipelines: Pipelines) -> func.HttpResponse:
    """``GET /api/openapi.json``: the same document as ``nearline serve`` publishes."""
    # Imported here: nearline.api's package init loads the Starlette app, which the other routes
    # (and every cold start) can do without.
    from nearline.api.openapi import openapi_document

    parts = urlsplit(req.url)
    return _json(openapi_document(pipelines(), f"{parts.scheme}://{parts.netloc}"))


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


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_health(req: func.HttpRequest) -> func.HttpResponse:
    return await health(req, catalog)


@bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_openapi(req: func.HttpRequest) -> func.HttpResponse:
    return await openapi(req, catalog)
