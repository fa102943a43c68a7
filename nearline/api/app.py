"""The HTTP contract on Starlette: one thin endpoint per route of :data:`nearline.http.handlers.ROUTES`.

Each endpoint translates Starlette's request into a :class:`nearline.http.handlers.Request`
(the body streamed against the limit) and the handler's answer back into a Starlette response;
everything else is decided by :class:`~nearline.http.handlers.Handlers`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nearline.constants import BODY_TIMEOUT_S
from nearline.errors import PayloadTooLarge, RequestError, RequestTimeout
from nearline.http import handlers as h
from nearline.http.metrics import ApiMetrics
from nearline.service import Jobs


def create_app(
    jobs: Jobs,
    api_keys: tuple[str, ...] = (),
    *,
    admin_keys: tuple[str, ...] = (),
    health: Callable[[], Mapping[str, Any]] | None = None,
    body_timeout_s: float = BODY_TIMEOUT_S,
    metrics: ApiMetrics | None = None,
) -> Starlette:
    """The Starlette application for ``jobs``.

    Args:
        jobs: The job seam.
        api_keys: The keys a request must carry; empty: no keys are asked for.
        admin_keys: Keys that also open the admin routes (see :class:`~nearline.http.handlers.Handlers`).
        health: What the server adds to ``GET /api/health`` (its workers' state).
        body_timeout_s: A request body must arrive whole within this many seconds.
        metrics: What ``GET /metrics`` shows (the server's other parts may count in its
            registry too); default: a fresh one.
    """
    metrics = metrics or ApiMetrics()
    handlers = h.Handlers(jobs, api_keys=api_keys, admin_keys=admin_keys, metrics=metrics, health=health)
    return Starlette(
        routes=[
            Route(r.path, _endpoint(handlers, r.name, body_timeout_s), methods=[r.method]) for r in h.ROUTES
        ]
    )


def _endpoint(
    handlers: h.Handlers, name: str, body_timeout_s: float
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        req = h.Request(
            base_url=str(request.base_url).rstrip("/"),
            params=request.path_params,
            query=request.query_params,
            headers=request.headers,
            read_body=lambda limit: _read_body(request, limit, body_timeout_s),
        )
        return _response(await handlers.handle(name, req))

    return endpoint


def _response(resp: h.Response) -> Response:
    headers = dict(resp.headers)
    if resp.status == RequestTimeout.status:  # the rest of the body is never read: close
        headers["Connection"] = "close"
    if resp.content is not None:
        return Response(resp.content, resp.status, headers, media_type=resp.media_type)
    if resp.body is None:
        return Response(status_code=resp.status, headers=headers)
    return JSONResponse(resp.body, resp.status, headers)


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, streamed against ``limit`` bytes and ``timeout_s`` seconds."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:  # nobody will read the answer; a 4xx keeps it out of the error log
        raise RequestError("the client closed the connection before the body was complete") from None
    return b"".join(chunks)
