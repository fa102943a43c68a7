"""One error tree for the whole system, rooted at :class:`NearlineError`.

Every error carries a stable ``code`` and an HTTP ``status``; each code means one thing.
:func:`http_error` is the one place that turns them into responses, :func:`exit_code` the one
place that turns them (and the client's errors) into a command's exit status.

::

    NearlineError                   500  InternalError     a bug, or an error without a class
    ├── ConfigError                 500  ConfigError       a file or setting is wrong
    │   └── UsageError              500  UsageError        (nearline.client_cli)
    ├── Unavailable                 503  Unavailable       try again later (+ Retry-After)
    │   ├── BrokerError             503  BrokerError       queue or store unreachable or refusing
    │   │   └── LeaseLost           503  LeaseLost         (nearline.brokers.base)
    │   └── Overloaded              503  Overloaded        request queue over its depth
    ├── RequestError                400  BadRequest        the request's fault
    │   ├── InvalidInput *          400  InvalidInput      fails the schema or a step
    │   ├── CallbackRefused         400  CallbackRefused   (nearline.callbacks) never sent there
    │   ├── WebhookVerificationError 400 WebhookVerificationFailed  (nearline.webhooks) receivers
    │   ├── UnknownPipeline         404  UnknownPipeline
    │   ├── JobNotFound             404  NotFound
    │   ├── PageNotFound            404  NotFound          (no such /docs file)
    │   ├── JobGone                 410  Gone
    │   ├── Conflict                409  Conflict          purge of a job not ended; a key's
    │   │                                                  first request still being created
    │   ├── IdempotencyKeyReused    422  IdempotencyKeyReused  a key reused for another request
    │   ├── PayloadTooLarge         413  PayloadTooLarge
    │   ├── RequestTimeout          408  RequestTimeout    the body came too slowly
    │   ├── NotSupported            404  NotSupported      a route this front door cannot serve
    │   ├── Unauthorized            401  Unauthorized
    │   └── Forbidden               403  Forbidden         an admin route, a key that is not one
    ├── JobFailure                  500  JobFailed         ends a job Failed (output.error.code)
    │   ├── InvalidInput *                                 found by a worker: the job fails
    │   ├── DeadlineExceeded             DeadlineExceeded
    │   ├── ModelError                   ModelError
    │   ├── StepError                    StepError
    │   ├── PoisonMessage                PoisonMessage     malformed, or delivered too often
    │   └── OrchestrationFailure         (the worker's)    (orchestrations.azure_status)
    ├── MessageError                500  MalformedMessage  a wire message does not parse
    │                                                      (nearline.messages)
    ├── BuildFailed                 500  BuildFailed       (nearline.models.build)
    └── TritonStartError            500  TritonStartError  (nearline.triton.server)

    * one class, ``InvalidInput(RequestError, JobFailure)``

The client's errors (:mod:`nearline.client.errors`) are a tree of their own, rooted at
``ClientError(Exception)``: what a client *receives* is never something the API raises.
"""

from __future__ import annotations

import sys
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


# --- unavailable (try again later: 503 + Retry-After) -----------------------------------


class Unavailable(NearlineError):
    """Something needed is not answering or refuses work for now; retry after ``retry_after`` s."""

    code = "Unavailable"
    status = 503

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BrokerError(Unavailable):
    """The queue or status store could not be reached or refused an operation."""

    code = "BrokerError"


class Overloaded(Unavailable):
    """The request queue is over its configured depth."""

    code = "Overloaded"


# --- request errors (the caller's fault: 4xx) -------------------------------------------


class RequestError(NearlineError):
    """Base of errors caused by the request itself."""

    code = "BadRequest"
    status = 400


class UnknownPipeline(RequestError):
    """No pipeline of that name."""

    code = "UnknownPipeline"
    status = 404


class UnknownDeployment(RequestError):
    """A ``nearline-deployment`` header names no deployment of the endpoint, or an endpoint with
    no live traffic was called without one."""

    code = "UnknownDeployment"


class JobNotFound(RequestError):
    """No job with that id."""

    code = "NotFound"
    status = 404


class PageNotFound(RequestError):
    """No page or file of that name (``/docs/{asset}``)."""

    code = "PageNotFound"
    status = 404


class JobGone(RequestError):
    """The job is already terminal and cannot be terminated."""

    code = "Gone"
    status = 410


class Conflict(RequestError):
    """The job is not in a state that allows the request: a purge of a job that has not ended,
    or a repeat of a keyed request whose first request is still being created."""

    code = "Conflict"
    status = 409


class IdempotencyKeyReused(RequestError):
    """An ``Idempotency-Key`` was sent again with a different request (IETF draft: 422)."""

    code = "IdempotencyKeyReused"
    status = 422


class PayloadTooLarge(RequestError):
    """The request body is over the configured limit."""

    code = "PayloadTooLarge"
    status = 413


class RequestTimeout(RequestError):
    """The request body did not arrive within the server's body timeout."""

    code = "RequestTimeout"
    status = 408


class NotSupported(RequestError):
    """A route of the contract that this front door cannot serve (a 404, not a 5xx: asking again
    can never succeed); the message says where it can be done instead."""

    code = "NotSupported"
    status = 404


class Unauthorized(RequestError):
    """A key is required and was missing or wrong."""

    code = "Unauthorized"
    status = 401


class Forbidden(RequestError):
    """The key given is valid but not enough here: an admin route needs an admin key."""

    code = "Forbidden"
    status = 403


# --- job failure codes (the ``output.error.code`` of a Failed job) ----------------------


class JobFailure(NearlineError):
    """Base of errors that end a job ``Failed``; ``code`` is what the client sees."""

    code = "JobFailed"


class InvalidInput(RequestError, JobFailure):
    """The input fails the pipeline's JSON Schema or its pre-processing.

    A request's fault either way: the API answers it with 400; found by a worker, it ends the
    job ``Failed`` with the same code.
    """

    code = "InvalidInput"


class DeadlineExceeded(JobFailure):
    """The job's deadline passed before it was computed."""

    code = "DeadlineExceeded"


class ModelError(JobFailure):
    """A model call failed (including a model returning the wrong number of rows)."""

    code = "ModelError"


class PoisonMessage(JobFailure):
    """The request was malformed, or delivered ``max_deliveries`` times without being settled."""

    code = "PoisonMessage"


class StepError(JobFailure):
    """A pre- or post-processing step raised."""

    code = "StepError"


def http_error(exc: NearlineError) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The one mapping of an error to HTTP: ``(body, status, headers)``.

    The body is ``{"error": {"code", "message"}}``; an :class:`Unavailable` (503) carries
    ``Retry-After``. The local API and the Azure HTTP functions both render responses from this.
    """
    headers = {}
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    return {"error": {"code": exc.code, "message": exc.message}}, exc.status, headers


def exit_code(exc: BaseException) -> int:
    """The one mapping of an error to a command's exit status, for every CLI.

    ``2``: the user's fault, fixable by changing the command or its configuration (a bad flag,
    a missing file, a request the server refused as invalid). ``3``: something needed is not
    there or not answering (a broker, a server); the same command may work later. ``130``:
    interrupted. ``1``: anything else (a failed build, a job that failed, a bug).
    """
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, ConfigError | RequestError):
        return 2
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return 2
    if isinstance(exc, Unavailable):
        return 3
    # The client's errors; nearline.client (and httpx) is not imported for this: an error of
    # that tree can only exist once its module has been imported.
    if "nearline.client.errors" in sys.modules:
        from nearline.client.errors import ApiError, ApiOverloaded, ConnectionFailed

        if isinstance(exc, ConnectionFailed | ApiOverloaded):
            return 3
        if isinstance(exc, ApiError):
            return 3 if exc.status >= 500 else 2 if exc.status >= 400 else 1
    return 1
