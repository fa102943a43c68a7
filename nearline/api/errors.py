"""Starlette adapters for the error tree: responses shaped by :func:`nearline.errors.http_error`."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nearline.errors import NearlineError, http_error

log = logging.getLogger("nearline.api")


def error_response(exc: NearlineError) -> JSONResponse:
    """The error as a JSON response (shape and headers from :func:`nearline.errors.http_error`)."""
    body, status, headers = http_error(exc)
    return JSONResponse(body, status, headers)


async def handle_nearline_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NearlineError)
    if exc.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return error_response(exc)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse(
        {"error": {"code": "InternalError", "message": "internal error; see the server log"}}, 500
    )
