"""One error tree for the whole system, rooted at :class:`NearlineError`.

Every error carries a stable ``code`` (the string a Failed job's ``output.error.code`` shows)
and an HTTP ``status``; :func:`nearline.api.errors` is the one place that turns them into
responses.
"""

from __future__ import annotations

from typing import Any

from nearline.constants import RETRY_AFTER_S


class NearlineError(Exception):
    """Base of every error nearline raises on purpose."""

    code = "InternalError"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(NearlineError):
    """A configuration file or setting is wrong; the message names the file and field."""

    code = "ConfigError"


class BrokerError(NearlineError):
    """The queue or status store could not be reached or refused an operation."""

    code = "BrokerError"
    status = 503


# --- request errors (the caller's fault: 4xx) -------------------------------------------


class RequestError(NearlineError):
    """Base of errors caused by the request itself."""

    code = "BadRequest"
    status = 400


class InvalidInput(RequestError):
    """The input fails the pipeline's JSON Schema or its pre-processing."""

    code = "InvalidInput"


class UnknownPipeline(RequestError):
    """No pipeline of that name."""

    code = "UnknownPipeline"
    status = 404


class JobNotFound(RequestError):
    """No job with that id."""

    code = "NotFound"
    status = 404


class JobGone(RequestError):
    """The job is already terminal and cannot be terminated."""

    code = "Gone"
    status = 410


class PayloadTooLarge(RequestError):
    """The request body is over the configured limit."""

    code = "PayloadTooLarge"
    status = 413


class Unauthorized(RequestError):
    """A key is required and was missing or wrong."""

    code = "Unauthorized"
    status = 401


class Overloaded(RequestError):
    """The request queue is over its configured depth; retry after ``retry_after`` seconds."""

    code = "Overloaded"
    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- job failure codes (the ``output.error.code`` of a Failed job) ----------------------


class JobFailure(NearlineError):
    """Base of errors that end a job ``Failed``; ``code`` is what the client sees."""

    code = "JobFailed"


class DeadlineExceeded(JobFailure):
    """The job's deadline passed before it was computed."""

    code = "DeadlineExceeded"


class ModelError(JobFailure):
    """A model call failed (including a model returning the wrong number of rows)."""

    code = "ModelError"


class PoisonMessage(JobFailure):
    """The request was delivered ``max_deliveries`` times without being settled."""

    code = "PoisonMessage"


class StepError(JobFailure):
    """A pre- or post-processing step raised."""

    code = "StepError"


class InvalidInputFailure(JobFailure):
    """The worker found the input unusable (reported as ``InvalidInput``)."""

    code = "InvalidInput"


def http_error(exc: NearlineError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The one mapping of an error to HTTP: ``(body, status, headers)``.

    The body is ``{"error": {"code", "message"}}``; a 503 carries ``Retry-After``. The local API
    and the Azure HTTP functions both render responses from this.
    """
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(exc.retry_after)
    elif exc.status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return {"error": {"code": exc.code, "message": exc.message}}, exc.status, headers
