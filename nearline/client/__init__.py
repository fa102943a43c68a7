"""Clients for the nearline HTTP API, blocking and asyncio.

::

    from nearline.client import Client

    with Client("http://127.0.0.1:7071") as client:
        job = client.submit("digits", {"pixels": [0.0] * 64})
        print(job.result(timeout=30))

The same code works against ``nearline serve`` and the Azure Functions deployment: job URLs are
taken from the server's answers, never built. See ``docs/client.md``.

Modules: :mod:`~nearline.client.sync` and :mod:`~nearline.client.aio` do the I/O;
:mod:`~nearline.client.plans` and :mod:`~nearline.client.protocol` hold the logic both share;
:mod:`~nearline.client.errors` the error tree.
"""

from nearline.client.aio import AsyncClient, AsyncJob
from nearline.client.errors import (
    ApiBadRequest,
    ApiError,
    ApiGone,
    ApiNotFound,
    ApiOverloaded,
    ApiPayloadTooLarge,
    ApiUnauthorized,
    ClientError,
    ConnectionFailed,
    JobError,
    JobFailed,
    JobTerminated,
    JobTimeout,
)
from nearline.client.sync import Client, Job

__all__ = [
    "ApiBadRequest",
    "ApiError",
    "ApiGone",
    "ApiNotFound",
    "ApiOverloaded",
    "ApiPayloadTooLarge",
    "ApiUnauthorized",
    "AsyncClient",
    "AsyncJob",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "Job",
    "JobError",
    "JobFailed",
    "JobTerminated",
    "JobTimeout",
]
