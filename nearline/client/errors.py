"""Errors the client raises: a tree of their own, rooted at :class:`ClientError`.

The server-side classes in :mod:`nearline.errors` (``Unauthorized``, ``Overloaded``, ...) are
what the API *raises*; the classes here are what a client *receives*. They are kept apart, with
an ``Api`` prefix and a root that is not :class:`nearline.errors.NearlineError`, so that code
running on both sides (a pipeline step that calls another nearline, a test) never confuses "I
refused this request" with "the server refused mine", and so that the API's error handler never
turns a client error into a response (it would be an unexpected 500, not the client's 404). All
of them carry the server's ``code`` and ``message``; ``str(exc)`` is one readable line.
:func:`nearline.errors.exit_code` maps them to exit statuses too.

::

    Exception
    └── ClientError
        ├── ConnectionFailed            the server could not be reached
        ├── ApiError                    the server answered 4xx/5xx ({"error": {code, message}})
        │   ├── ApiBadRequest           400
        │   ├── ApiUnauthorized         401, 403
        │   ├── ApiNotFound             404
        │   ├── ApiGone                 410
        │   ├── ApiPayloadTooLarge      413
        │   └── ApiOverloaded           429, 503 (.retry_after)
        ├── JobError                    the job ended without an output (.document)
        │   ├── JobFailed               runtimeStatus Failed (.code, .message)
        │   └── JobTerminated           runtimeStatus Terminated (.reason)
        └── JobTimeout                  also a TimeoutError: the wait ran out first
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx


class ClientError(Exception):
    """Base of the errors raised by :mod:`nearline.client`.

    Attributes:
        code: A stable code: the server's ``error.code`` where the server sent one.
        message: The message alone (``str(exc)`` may add the status or the job id).
    """

    code = "ClientError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConnectionFailed(ClientError):
    """No HTTP answer from ``url``: refused, unresolvable, reset, or timed out."""

    code = "ConnectionFailed"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {public_url(url)}: {reason}")
        self.url = url


class ApiError(ClientError):
    """The server answered with an error status.

    Attributes:
        status: The HTTP status code.
        code: The server's error code (``error.code``), e.g. ``InvalidInput``.
        message: The server's message (``error.message``).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.code}: {self.message}"


class ApiBadRequest(ApiError):
    """400: malformed JSON, an unknown field, or input that fails the pipeline's schema."""


class ApiUnauthorized(ApiError):
    """401 or 403: a key is required and was missing or wrong."""


class ApiNotFound(ApiError):
    """404: no such pipeline or job."""


class ApiGone(ApiError):
    """410: the job already ended, so it cannot be terminated."""


class ApiPayloadTooLarge(ApiError):
    """413: the request body is over the server's limit."""


class ApiOverloaded(ApiError):
    """429 or 503: the server refuses work for now; try again after ``retry_after`` seconds."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ApiBadRequest,
    401: ApiUnauthorized,
    403: ApiUnauthorized,
    404: ApiNotFound,
    410: ApiGone,
    413: ApiPayloadTooLarge,
    429: ApiOverloaded,
    503: ApiOverloaded,
}


def error_code(response: httpx.Response) -> str | None:
    """The ``error.code`` of an error body, or None when the body is not nearline's shape."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return str(error["code"]) if isinstance(error, dict) and "code" in error else None


def public_url(url: str) -> str:
    """``url`` without its query string, which may carry a key (``?code=``): safe to print."""
    return urlunsplit(urlsplit(url)._replace(query=""))


def api_error(response: httpx.Response, retry_after: float | None = None) -> ApiError:
    """The typed error for an error response.

    Bodies that are not ``{"error": {"code", "message"}}`` (an empty 401 from Azure's front end,
    a proxy's HTML page) still give a useful message: the reason phrase and the start of the body.
    """
    cls = _BY_STATUS.get(response.status_code, ApiError)
    code = error_code(response) or response.reason_phrase.replace(" ", "") or "HttpError"
    message = _message(response)
    if cls is ApiOverloaded:
        return ApiOverloaded(response.status_code, code, message, retry_after)
    return cls(response.status_code, code, message)


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (ValueError, AttributeError):
        pass
    text = " ".join(response.text.split())[:200]
    where = f"{response.request.method} {public_url(str(response.request.url))}"
    return f"{where}: {text}" if text else f"{where}: {response.reason_phrase or 'error'}"


class JobError(ClientError):
    """The job ended without an output.

    Attributes:
        job_id: The job's id (the document's ``instanceId``).
        document: The job's final status document.
    """

    def __init__(self, message: str, document: dict[str, Any]) -> None:
        super().__init__(message)
        self.document = document
        self.job_id = str(document.get("instanceId", ""))


class JobFailed(JobError):
    """The job ended ``Failed``; ``code`` and ``message`` come from its ``output.error``."""

    def __init__(self, document: dict[str, Any]) -> None:
        output = document.get("output")
        error = output.get("error") if isinstance(output, dict) else None
        error = error if isinstance(error, dict) else {}
        super().__init__(str(error.get("message") or output or "no error message"), document)
        self.code = str(error.get("code") or "JobFailed")

    def __str__(self) -> str:
        return f"job {self.job_id} failed: {self.code}: {self.message}"


class JobTerminated(JobError):
    """The job was terminated; ``reason`` is what the terminate call gave (its ``output``)."""

    code = "Terminated"

    def __init__(self, document: dict[str, Any]) -> None:
        output = document.get("output")
        self.reason = output if isinstance(output, str) else ""
        super().__init__(self.reason or "no reason given", document)

    def __str__(self) -> str:
        return f"job {self.job_id} was terminated: {self.message}"


class JobTimeout(ClientError, TimeoutError):
    """The job was not terminal when the wait ran out. The job itself goes on.

    Attributes:
        job_id: The job's id.
        document: The last status document seen, or None when none arrived.
    """

    code = "Timeout"

    def __init__(self, job_id: str, timeout: float, document: dict[str, Any] | None) -> None:
        status = document.get("runtimeStatus") if document else None
        last = f" (last status: {status})" if status else ""
        super().__init__(f"job {job_id} did not finish within {timeout:g} s{last}")
        self.job_id = job_id
        self.document = document
