"""The error tree, its one mapping to HTTP (shared by the local API and the Azure functions) and
its one mapping to exit statuses (shared by every CLI)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from nearline import errors
from nearline.brokers import LeaseLost
from nearline.client.errors import (
    ApiBadRequest,
    ApiError,
    ApiNotFound,
    ApiOverloaded,
    ClientError,
    ConnectionFailed,
    JobFailed,
    JobTerminated,
    JobTimeout,
)
from nearline.errors import (
    BrokerError,
    ConfigError,
    InvalidInput,
    JobFailure,
    NearlineError,
    Overloaded,
    RequestError,
    Unavailable,
    UnknownPipeline,
    exit_code,
    http_error,
)
from nearline.messages import MessageError


def _tree(cls: type[NearlineError]) -> list[type[NearlineError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _tree(sub))]


def test_each_code_means_one_thing() -> None:
    # nearline's own classes (the Azure glue's OrchestrationFailure relays a worker's code).
    classes = {c for c in _tree(NearlineError) if c.__module__.startswith("nearline.")}
    assert {errors.InvalidInput, MessageError, LeaseLost} <= classes
    by_code: dict[str, list[str]] = {}
    for cls in classes:
        by_code.setdefault(cls.code, []).append(cls.__qualname__)
    assert {code: names for code, names in by_code.items() if len(names) > 1} == {}


def test_invalid_input_is_a_request_error_that_fails_a_job() -> None:
    exc = InvalidInput("input.text: too long")
    assert isinstance(exc, RequestError) and isinstance(exc, JobFailure)
    assert (exc.code, exc.status) == ("InvalidInput", 400)
    assert not hasattr(errors, "InvalidInputFailure")


def test_503s_are_their_own_branch() -> None:
    for exc in (Overloaded("queue full"), BrokerError("redis down"), LeaseLost("lost")):
        assert isinstance(exc, Unavailable) and not isinstance(exc, RequestError)
        assert exc.status == 503
    assert MessageError.code == "MalformedMessage"


def test_client_errors_are_not_server_errors() -> None:
    for cls in (ClientError, ApiError, ConnectionFailed, JobFailed, JobTimeout):
        assert not issubclass(cls, NearlineError)
    exc = ConnectionFailed("http://h:1/api?code=secret", "refused")
    assert exc.code == "ConnectionFailed" and exc.message == str(exc) and "secret" not in str(exc)


def test_a_request_error_maps_to_its_status_and_code() -> None:
    assert http_error(InvalidInput("input.text: too long")) == (
        {"error": {"code": "InvalidInput", "message": "input.text: too long"}},
        400,
        {},
    )
    assert http_error(UnknownPipeline("no pipeline 'x'"))[1] == 404


def test_503s_carry_retry_after() -> None:
    assert http_error(Overloaded("queue full", retry_after=7))[1:] == (503, {"Retry-After": "7"})
    assert http_error(BrokerError("redis down"))[1:] == (503, {"Retry-After": "1"})
    assert http_error(NearlineError("bug"))[1:] == (500, {})


def _document(status: str, output: object) -> dict[str, object]:
    return {"instanceId": "j1", "runtimeStatus": status, "output": output}


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (KeyboardInterrupt(), 130),
        (ConfigError("bad flag"), 2),
        (FileNotFoundError("models"), 2),
        (InvalidInput("input.x"), 2),
        (UnknownPipeline("nope"), 2),
        (BrokerError("redis down"), 3),
        (Overloaded("queue full"), 3),
        (ModuleNotFoundError("torch"), 1),
        (NearlineError("bug"), 1),
        (RuntimeError("bug"), 1),
        (ApiBadRequest(400, "InvalidInput", "input.x"), 2),
        (ApiNotFound(404, "NotFound", "no job"), 2),
        (ApiOverloaded(503, "Overloaded", "queue full", 1.0), 3),
        (ApiOverloaded(429, "TooManyRequests", "slow down"), 3),
        (ApiError(500, "InternalError", "bug"), 3),
        (ApiError(502, "BadGateway", "proxy"), 3),
        (ConnectionFailed("http://127.0.0.1:1", "refused"), 3),
        (JobFailed(_document("Failed", {"error": {"code": "ModelError", "message": "m"}})), 1),
        (JobTerminated(_document("Terminated", "changed my mind")), 1),
        (JobTimeout("j1", 0.5, None), 1),
    ],
)
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert exit_code(exc) == code


def test_exit_code_does_not_import_the_client() -> None:
    code = (
        "import sys; from nearline.errors import exit_code; "
        "assert exit_code(RuntimeError()) == 1; "
        "assert 'httpx' not in sys.modules and 'nearline.client' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_api_error_shape_is_what_the_client_reads() -> None:
    body, status, _ = http_error(InvalidInput("input.x: required"))
    from nearline.client.errors import api_error

    request = httpx.Request("POST", "http://api.test/api/score/p")
    exc = api_error(httpx.Response(status, json=body, request=request))
    assert type(exc) is ApiBadRequest and (exc.code, exc.message) == ("InvalidInput", "input.x: required")
