"""The one place that turns nearline errors into HTTP responses."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from nearline.constants import RETRY_AFTER_S
from nearline.errors import NearlineError, Overloaded

log = logging.getLogger("nearline.api")


def error_response(exc: NearlineError) -> JSONResponse:
    """``{"error": {"code", "message"}}`` with the error's status; Retry-After on 503."""
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(exc.retry_after)
    elif exc.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status, headers)


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
