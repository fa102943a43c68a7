"""The pages for people (``nearline/http/pages.py``): ``/`` and ``/docs`` on both front doors,
anonymous, from packaged files only; and, in headless Chromium, the docs of a server with API
keys, opened as ``/docs?code=KEY``."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import azure.functions as func
import httpx
import pytest
from conftest import unavailable
from durable_history import registered_functions
from serving import Server, running_server

from nearline.api import create_app
from nearline.brokers import open_broker
from nearline.http import pages
from nearline.pipelines.spec import Catalog
from nearline.store import open_store
from nearline.store_jobs import StoreJobs
from orchestrations import http_api

ROOT = Path(__file__).resolve().parent.parent
VENDORED = ROOT / "nearline" / "http" / "swagger_ui"
CHROMIUM = Path("/usr/bin/chromium")
KEY = "docs-test-key"


def starlette_get(catalog: Catalog, path: str, keys: tuple[str, ...] = (KEY,)) -> httpx.Response:
    jobs = StoreJobs(catalog, open_broker("memory://"), open_store("memory://"))

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(jobs, keys))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:7071") as client:
            return await client.get(path)

    return asyncio.run(go())


def azure_get(catalog: Catalog, name: str, path: str, **params: str) -> func.HttpResponse:
    req = func.HttpRequest(
        "GET", f"http://127.0.0.1:7071{path}", headers={}, params={}, route_params=params, body=b""
    )
    return asyncio.run(http_api.handle(name, req, None, lambda: catalog))


@pytest.mark.parametrize("path", ["/", "/docs", "/docs/swagger-ui-bundle.js", "/docs/nearline-docs.js"])
def test_the_pages_need_no_key_and_name_their_type(catalog: Catalog, path: str) -> None:
    r = starlette_get(catalog, path)
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"
    kind = "text/html" if "." not in path else "text/javascript"
    assert r.headers["content-type"].startswith(kind)
    assert starlette_get(catalog, "/api/openapi.json").status_code == 401  # what the page reads does


def test_the_docs_page_loads_only_this_servers_files(catalog: Catalog) -> None:
    r = starlette_get(catalog, "/docs")
    assert r.headers["content-security-policy"].startswith("default-src 'self'; script-src 'self';")
    urls = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert urls and all(u.startswith("docs/") for u in urls), urls  # relative: under any prefix
    assert 'data-spec="/api/openapi.json"' in r.text
    assert "validatorUrl: null" in starlette_get(catalog, "/docs/nearline-docs.js").text


def test_an_unknown_or_escaping_docs_file_is_a_404(catalog: Catalog) -> None:
    r = starlette_get(catalog, "/docs/pages.py")
    assert r.status_code == 404 and r.json()["error"]["code"] == "PageNotFound"
    assert starlette_get(catalog, "/docs/..%2Fpages.py").status_code == 404
    assert starlette_get(catalog, "/docs/swagger_ui/LICENSE").status_code == 404


def test_the_landing_page_links_what_the_server_has(catalog: Catalog) -> None:
    links = re.findall(r'<a href="([^"]+)"', starlette_get(catalog, "/").text)
    assert links == ["/docs", "/api/pipelines", "/api/openapi.json", "/api/health", "/metrics", "/ui"]
    azure = azure_get(catalog, "home", "/api/home").get_body().decode()
    assert re.findall(r'<a href="([^"]+)"', azure) == [
        "/api/docs", "/api/pipelines", "/api/openapi.json", "/api/health"
    ]  # fmt: skip


def test_azure_serves_the_same_pages_anonymously(catalog: Catalog) -> None:
    assert azure_get(catalog, "docs", "/api/docs").get_body() == starlette_get(catalog, "/docs").content
    css = azure_get(catalog, "docs_asset", "/api/docs/swagger-ui.css", asset="swagger-ui.css")
    assert css.status_code == 200 and css.mimetype == "text/css"  # the host adds "; charset=utf-8"
    assert azure_get(catalog, "docs_asset", "/api/docs/x", asset="x").status_code == 404
    functions = registered_functions()
    for name, route in (("get_home", "home"), ("get_docs", "docs"), ("get_docs_asset", "docs/{asset}")):
        trigger = functions[name].get_trigger().get_dict_repr()
        assert trigger["route"] == route
        assert str(getattr(trigger["authLevel"], "value", trigger["authLevel"])) == "anonymous"


def test_the_vendored_swagger_ui_is_what_vendor_md_says() -> None:
    table = dict(re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})`", (VENDORED / "VENDOR.md").read_text()))
    assert set(table) == {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"}
    for name, digest in table.items():
        assert hashlib.sha256((VENDORED / name).read_bytes()).hexdigest() == digest, name
    assert set(pages.ASSETS) == {*table, "nearline-docs.js"}


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("docs-keyed")
    with running_server(data, "--no-workers", env={"NEARLINE_API_KEYS": KEY}) as server:
        yield server


@pytest.mark.slow
def test_with_keys_docs_opened_with_code_load_the_document_and_try_it_out(keyed_server: Server) -> None:
    if not CHROMIUM.exists():
        unavailable("chromium", f"{CHROMIUM} is not installed (apt-get install chromium; make test does)")
    from playwright.sync_api import sync_playwright

    sent: list[tuple[str, str | None]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
        )
        try:
            page = browser.new_page()
            page.on("request", lambda r: sent.append((r.url, r.headers.get("x-functions-key"))))
            page.goto(f"{keyed_server.url}/docs?code={KEY}")
            op = page.locator("#operations-default-score_identity")
            op.locator(".opblock-summary").click(timeout=20_000)
            op.locator(".execute").click()
            status = op.locator(".live-responses-table tr.response .response-col_status").first
            status.wait_for(timeout=20_000)
            assert status.inner_text().strip() == "202"  # queued: this server runs no workers
        finally:
            browser.close()
    keyed = {urlsplit(url).path: key for url, key in sent if key}
    assert keyed == {"/api/openapi.json": KEY, "/api/score/identity": KEY}, sent
    assert {urlsplit(url).hostname for url, _ in sent} == {"127.0.0.1"}, sent
