"""The HTTP contract on Starlette: one thin endpoint per route of :data:`nearline.http.handlers.ROUTES`.

Each endpoint translates Starlette's request into a :class:`nearline.http.handlers.Request`
(the body streamed against the limit) and the handler's answer back into a Starlette response;
everything else is decided by :class:`~nearline.http.handlers.Handlers`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nearline.errors import PayloadTooLarge
from nearline.http import handlers as h
from nearline.http.metrics import ApiMetrics
from nearline.service import Jobs


def create_app(jobs: Jobs, api_keys: tuple[str, ...] = ()) -> Starlette:
    """The Starlette application for ``jobs``; ``api_keys`` empty: no keys are asked for."""
    handlers = h.Handlers(jobs, api_keys=api_keys, metrics=ApiMetrics())
    return Starlette(
        routes=[Route(r.path, _endpoint(handlers, r.name), methods=[r.method]) for r in h.ROUTES]
    )


def _endpoint(handlers: h.Handlers, name: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        req = h.Request(
            base_url=str(request.base_url).rstrip("/"),
            params=request.path_params,
            query=request.query_params,
            headers=request.headers,
            read_body=lambda limit: _read_body(request, limit),
        )
        return _response(await handlers.handle(name, req))

    return endpoint


def _response(resp: h.Response) -> Response:
    if resp.content is not None:
        return Response(resp.content, resp.status, dict(resp.headers), media_type=resp.media_type)
    if resp.body is None:
        return Response(status_code=resp.status, headers=dict(resp.headers))
    return JSONResponse(resp.body, resp.status, dict(resp.headers))


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
