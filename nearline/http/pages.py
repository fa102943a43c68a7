"""The pages for people: ``/`` (a landing page) and ``/docs`` (the API reference, with "Try it out").

``/docs`` is Swagger UI, served from files packaged with nearline (``swagger_ui/``, see its
``VENDOR.md``): nothing is fetched from the internet at run time, and the page's
Content-Security-Policy lets the browser load scripts, styles and data from this server only. It
reads ``/api/openapi.json``, which needs a key where keys are set: open ``/docs?code=KEY``, and
the page sends it with every request (``x-functions-key``).

Both pages are static (no pipeline names, no data), so they need no key, like health. On Azure
they sit under the host's route prefix: ``/api/docs`` and ``/api/home``; ``prefix`` makes the
landing page's links point there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from html import escape
from importlib import resources

from nearline import __version__

#: Where the OpenAPI document is, on every profile (the Azure host's prefix is ``/api`` too).
OPENAPI_PATH = "/api/openapi.json"
#: Scripts, styles, fonts and requests from this server only; Swagger UI styles some elements
#: inline and draws icons as data: URLs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
#: Assets change only with nearline's version (the page asks for ``?v=<version>``).
ASSET_CACHE = "public, max-age=86400"

#: The files ``/docs/{asset}`` serves, and their media types: nothing else in the package.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "nearline-docs.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


@dataclass(frozen=True)
class Page:
    """What a page route answers: the bytes, their media type and headers."""

    content: bytes
    media_type: str
    headers: dict[str, str]


def docs_page() -> Page:
    """``/docs``: Swagger UI on this server's OpenAPI document. Its asset URLs are relative
    (``docs/...``) so the page works under any prefix (``/docs``, Azure's ``/api/docs``)."""
    v = escape(__version__)
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nearline API reference</title>
<link rel="stylesheet" href="docs/swagger-ui.css?v={v}">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png?v={v}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js?v={v}"></script>
<script src="docs/nearline-docs.js?v={v}" data-spec="{OPENAPI_PATH}"></script>
</body>
</html>
"""
    return _html(html)


def home_page(prefix: str = "", *, metrics: bool = True, dashboard: bool = False) -> Page:
    """``/``: links to the docs, the pipelines, the OpenAPI document, health, metrics and (when
    the server has one) the dashboard. ``prefix``: where the host mounts the pages (Azure: ``/api``)."""
    links = [
        (f"{prefix}/docs", "API reference", "every route, with Try it out"),
        ("/api/pipelines", "Pipelines", "what you can score, and each input's JSON Schema"),
        (OPENAPI_PATH, "OpenAPI document", "for client generators"),
        ("/api/health", "Health", "status, version, queue depth"),
    ]
    if metrics:
        links.append((f"{prefix}/metrics", "Metrics", "Prometheus text"))
    if dashboard:
        links.append((f"{prefix}/ui", "Dashboard", "endpoints, queues, jobs and dead letters"))
    items = "\n".join(
        f'<li><a href="{escape(href)}">{escape(text)}</a>: {escape(note)}</li>' for href, text, note in links
    )
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nearline</title>
<link rel="icon" type="image/png" href="{escape(prefix)}/docs/favicon-32x32.png?v={escape(__version__)}">
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem}}
code{{background:#f3f3f3;padding:0 .2em}}</style>
</head>
<body>
<h1>nearline <small>{escape(__version__)}</small></h1>
<p>Near-real-time scoring: <code>POST /api/score/{{pipeline}}</code> answers <code>202</code> and a
status URL at once; poll it (or add <code>?wait=10</code>) for the result.</p>
<ul>
{items}
</ul>
</body>
</html>
"""
    return _html(html)


def asset(name: str) -> Page | None:
    """A file of ``/docs``, or None for any other name."""
    media_type = ASSETS.get(name)
    if media_type is None:
        return None
    return Page(_read(name), media_type, {"Cache-Control": ASSET_CACHE, "X-Content-Type-Options": "nosniff"})


@functools.cache
def _read(name: str) -> bytes:
    return (resources.files("nearline.http") / "swagger_ui" / name).read_bytes()


def _html(html: str) -> Page:
    headers = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
    return Page(html.encode(), "text/html; charset=utf-8", {**headers, "Cache-Control": "no-cache"})
