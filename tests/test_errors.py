"""The error tree's one mapping to HTTP, shared by the local API and the Azure functions."""

from __future__ import annotations

from nearline.errors import BrokerError, InvalidInput, NearlineError, Overloaded, UnknownPipeline, http_error


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
