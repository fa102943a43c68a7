"""Admin keys (``NEARLINE_ADMIN_KEYS``): which key opens which route (docs/api.md, "Auth")."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from serving import running_server

from nearline.errors import Forbidden, Unauthorized
from nearline.http.handlers import Request, authorize_admin


def _request(key: str | None = None, *, code: str | None = None) -> Request:
    headers = {"x-functions-key": key} if key is not None else {}
    query = {"code": code} if code is not None else {}
    return Request(base_url="http://127.0.0.1", headers=headers, query=query)


def test_an_admin_route_is_open_only_when_no_key_is_configured() -> None:
    authorize_admin(_request(), (), ())
    with pytest.raises(Unauthorized):
        authorize_admin(_request(), ("api",), ())
    with pytest.raises(Unauthorized):
        authorize_admin(_request(), (), ("admin",))


def test_an_api_key_is_forbidden_on_an_admin_route() -> None:
    with pytest.raises(Forbidden, match="admin key"):
        authorize_admin(_request("api"), ("api",), ("admin",))
    with pytest.raises(Forbidden, match="NEARLINE_ADMIN_KEYS"):  # none configured: say which variable
        authorize_admin(_request("api"), ("api",), ())
    with pytest.raises(Unauthorized):  # a wrong key stays 401, not 403
        authorize_admin(_request("wrong"), ("api",), ("admin",))


def test_an_admin_key_opens_admin_routes_by_header_or_code() -> None:
    authorize_admin(_request("admin"), ("api",), ("admin",))
    authorize_admin(_request(code="admin"), ("api",), ("admin",))


@pytest.mark.slow
def test_an_admin_key_is_also_an_api_key(tmp_path: Path) -> None:
    env = {"NEARLINE_API_KEYS": "k1", "NEARLINE_ADMIN_KEYS": "boss"}
    with running_server(tmp_path, "--no-workers", env=env) as s:
        url = f"{s.url}/api/score/identity"
        assert httpx.post(url, json={"input": {}}, headers={"x-functions-key": "boss"}).status_code == 202
        assert httpx.post(url, json={"input": {}}, headers={"x-functions-key": "k1"}).status_code == 202
        assert httpx.post(url, json={"input": {}}).status_code == 401
