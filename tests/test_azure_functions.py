"""The Azure HTTP functions as the Functions host sees them: registered routes, auth levels and
bindings, read from ``function_app.app.get_functions()`` (the host itself cannot run here)."""

from __future__ import annotations

from typing import Any

import pytest
from durable_history import FakeDurableClient, registered_functions, run
from test_azure_http import DIGITS, body_of, request

from orchestrations import http_api


@pytest.fixture
def client() -> FakeDurableClient:
    return FakeDurableClient()


@pytest.fixture(scope="module")
def functions() -> dict[str, Any]:
    return registered_functions()


def trigger(fn: Any) -> dict[str, Any]:
    return dict(fn.get_trigger().get_dict_repr())


@pytest.mark.parametrize(
    ("name", "route", "method", "auth"),
    [
        ("submit_job", "score/{pipeline}", "POST", "function"),
        ("read_job", "jobs/{id}", "GET", "function"),
        ("terminate_job", "jobs/{id}/terminate", "POST", "function"),
        ("purge_job", "jobs/{id}", "DELETE", "function"),
        ("get_pipelines", "pipelines", "GET", "function"),
        ("get_health", "health", "GET", "anonymous"),
        ("get_openapi", "openapi.json", "GET", "function"),
    ],
)
def test_http_routes_are_registered(functions, name: str, route: str, method: str, auth: str) -> None:
    t = trigger(functions[name])
    assert t["type"] == "httpTrigger" and t["route"] == route
    assert [str(getattr(m, "value", m)) for m in t["methods"]] == [method]
    assert str(getattr(t["authLevel"], "value", t["authLevel"])) == auth
    clients = [b for b in functions[name].get_bindings() if b.get_dict_repr()["type"] == "durableClient"]
    assert bool(clients) == name.endswith("_job")


def test_a_registered_route_calls_its_handler_with_the_durable_client(
    functions, client, catalog, monkeypatch
) -> None:
    monkeypatch.setattr(http_api, "_catalog", catalog)
    user_code = functions["submit_job"].get_user_function().client_function  # under the client middleware
    req = request("POST", "/api/score/digits", DIGITS, pipeline="digits")
    resp = run(user_code(req=req, client=client))
    assert resp.status_code == 202 and client.calls_of("start_new") == [body_of(resp)["id"]]
    job_id = body_of(resp)["id"]
    read = functions["read_job"].get_user_function().client_function
    assert run(read(req=request("GET", f"/api/jobs/{job_id}", id=job_id), client=client)).status_code == 202
