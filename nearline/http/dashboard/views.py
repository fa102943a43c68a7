"""The dashboard's pages (``/ui``): server-rendered HTML over the job seam, live by htmx polling.

:class:`Dashboard` answers ``GET /ui``, ``GET /ui/{page}`` and ``POST /ui/{page}`` for
:class:`~nearline.http.handlers.Handlers`: pages are Jinja2 templates (``templates/``), scripts
and styles are packaged files (``static/``, see its ``VENDOR.md``); the Content-Security-Policy
lets the browser load from this server only. Keys: :mod:`nearline.http.dashboard.access`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape

from nearline import __version__, outcomes
from nearline.errors import JobNotFound, NearlineError, NotSupported, PageNotFound, RequestError, http_error
from nearline.http import admin, pages
from nearline.http.dashboard import forms, stats
from nearline.http.dashboard.access import Access, remember
from nearline.http.handlers import Request, Response
from nearline.idempotency import caller_scope
from nearline.jobs import JobRecord, iso, status_document
from nearline.service import Jobs
from nearline.splits.request import parse_split_request

#: The packaged files ``/ui/static/{name}`` serves, and their media types.
STATIC = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
#: How many jobs the recent list shows.
RECENT = 50


@functools.cache
def _templates() -> Environment:
    env = Environment(loader=PackageLoader("nearline.http.dashboard"), autoescape=select_autoescape())
    env.filters["iso"] = lambda ts: (iso(ts) or "-")[:19].replace("T", " ")
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    return env


@functools.cache
def _static(name: str) -> bytes:
    return (resources.files("nearline.http.dashboard") / "static" / name).read_bytes()


class Dashboard:
    """The dashboard over ``jobs``; ``access`` holds the keys that open it."""

    def __init__(self, jobs: Jobs, access: Access) -> None:
        self.jobs = jobs
        self.access = access

    async def get(self, request: Request, page: str) -> Response:
        """``GET /ui/{page}`` (``""``: the home page)."""
        if page.startswith("static/"):
            return self._asset(page.removeprefix("static/"))
        try:
            key = self.access.reader(request)
            if "code" in request.query:  # keep the key in a cookie, out of the address bar
                return Response(303, headers=remember(request, "/ui" + (f"/{page}" if page else "")))
            return await self._page(request, page, key)
        except NearlineError as exc:
            return self._error(exc)

    async def post(self, request: Request, page: str) -> Response:
        """``POST /ui/deadletters`` (redrive, purge) and ``POST /ui/try/{pipeline}`` (score)."""
        try:
            if page == "deadletters":
                self.access.actor(request, admin=True)
                return await self._act(request)
            if page.startswith("try/"):
                key = self.access.actor(request, admin=False)
                return await self._try(request, page.removeprefix("try/"), key)
            if page.startswith("traffic/"):
                self.access.actor(request, admin=True)
                return await self._traffic(request, page.removeprefix("traffic/"))
            raise PageNotFound(f"nothing to post to at /ui/{page[:100]}")
        except NearlineError as exc:
            return self._error(exc)

    async def _page(self, request: Request, page: str, key: str) -> Response:
        admin_ok = self.access.is_admin(key)
        if page == "":
            done = request.query.get("done", "")
            context = {**await self._overview(), "compared": await self._compared()}
            return self._html("home.html", context, admin=admin_ok, done=done, compare_s=outcomes.WINDOW_S)
        if page == "live":
            return self._html("live.html", await self._overview())
        if page == "stats":
            numbers = stats.compute(await self.jobs.recent(stats.SAMPLE))
            return Response(200, numbers.series, {"Cache-Control": "no-store"})
        if page == "jobs":
            return await self._jobs(request)
        if page.startswith("jobs/"):
            job = await self.jobs.get(page.removeprefix("jobs/"))
            if job.shadow_of is not None:
                raise JobNotFound(f"no job with id {job.id!r}")
            return self._html("job.html", {"job": job, "doc": status_document(job), "now": time.time()})
        if page == "deadletters":
            return await self._dead_letters(request, admin_ok)
        if page.startswith("deadletters/"):
            found = await admin.one_of(self.jobs, page.removeprefix("deadletters/"))
            return self._html("deadletter.html", {"dead": found}, admin=admin_ok)
        if page.startswith("try/"):
            pipeline = self.jobs.catalog.get(page.removeprefix("try/"))
            return self._html("try.html", {"pipeline": pipeline, "fields": forms.fields(pipeline)})
        raise PageNotFound(f"no page /ui/{page[:100]}")

    async def _overview(self) -> dict[str, Any]:
        queue = self.jobs.dead_letters()
        endpoints = [p.endpoint_document(await self.jobs.split(p.name)) for p in self.jobs.catalog]
        return {
            "endpoints": endpoints,
            "depth": await self.jobs.queue_depth(),
            "dead": None if queue is None else await queue.count(),
            "stats": stats.compute(await self.jobs.recent(stats.SAMPLE)),
            "window_s": stats.WINDOW_S,
        }

    async def _compared(self) -> dict[str, dict[str, Any]] | None:
        """Each endpoint's ``/compare`` document over the default window; None where the store
        keeps no outcomes (``memory://``, Azure)."""
        compared = {}
        for pipeline in self.jobs.catalog:
            try:
                compared[pipeline.name] = await self.jobs.compare(pipeline.name, outcomes.WINDOW_S)
            except NotSupported:
                return None
        return compared

    async def _jobs(self, request: Request) -> Response:
        wanted = request.query.get("id", "").strip()
        if wanted:
            job = await self.jobs.get(wanted)  # 404 names the id
            return Response(303, headers={"Location": f"/ui/jobs/{quote(job.id)}"})
        recent: list[JobRecord] = await self.jobs.recent(RECENT)
        return self._html("jobs.html", {"jobs": recent})

    async def _dead_letters(self, request: Request, admin_ok: bool) -> Response:
        queue = admin.queue_of(self.jobs)
        flt, limit = admin.parse_filter(request.query)
        found = await queue.select(flt, limit)
        rows = [admin.dl.summary(d) for d in found]
        context = {"rows": rows, "filter": flt, "done": request.query.get("done", "")}
        return self._html("deadletters.html", context, admin=admin_ok)

    async def _traffic(self, request: Request, name: str) -> Response:
        pipeline = self.jobs.catalog.get(name)
        body = forms.split_request(pipeline, await _body(request, admin.MAX_BODY))
        split, reason = parse_split_request(body, [d.name for d in pipeline.deployments])
        await self.jobs.set_split(pipeline.name, split, reason)
        done = f"{pipeline.name}: traffic {dict(split.traffic)}, mirror {dict(split.mirror)}"
        return Response(303, headers={"Location": "/ui?" + urlencode({"done": done})})

    async def _act(self, request: Request) -> Response:
        form = parse_qsl(
            (await _body(request, admin.MAX_BODY)).decode("utf-8", "replace"), keep_blank_values=True
        )
        action = dict(form).get("action")
        ids = [v for k, v in form if k == "ids" and v]
        if action not in ("redrive", "purge"):
            raise RequestError("form field 'action' must be redrive or purge")
        if not ids:
            raise RequestError("select at least one dead letter")
        queue = admin.queue_of(self.jobs)
        if action == "redrive":
            done = f"{len(await queue.redrive(ids))} dead letter(s) redriven"
        else:
            done = f"{await queue.purge(ids)} dead letter(s) purged"
        return Response(303, headers={"Location": "/ui/deadletters?" + urlencode({"done": done})})

    async def _try(self, request: Request, name: str, key: str) -> Response:
        pipeline = self.jobs.catalog.get(name)
        value = forms.read_input(pipeline, await _body(request, self.jobs.max_body))
        body = json.dumps({"input": value}).encode()
        job, _ = await self.jobs.submit(
            pipeline.name, body, scope=caller_scope(key), base_url=request.base_url
        )
        return Response(303, headers={"Location": f"/ui/jobs/{quote(job.id)}"})

    def _html(self, template: str, context: Mapping[str, Any], status: int = 200, **more: Any) -> Response:
        names = self.jobs.catalog.names()
        page = (
            _templates()
            .get_template(template)
            .render(**context, **more, version=__version__, pipelines=names)
        )
        headers = {"Content-Security-Policy": pages.CSP, "X-Content-Type-Options": "nosniff"}
        return Response(
            status, content=page.encode(), media_type="text/html; charset=utf-8",
            headers={**headers, "Cache-Control": "no-store"},
        )  # fmt: skip

    def _error(self, exc: NearlineError) -> Response:
        body, status, headers = http_error(exc)
        page = self._html("error.html", {"error": body["error"], "status": status}, status)
        return Response(
            status, content=page.content, media_type=page.media_type, headers={**page.headers, **headers}
        )

    def _asset(self, name: str) -> Response:
        media_type = STATIC.get(name)
        if media_type is None:
            return self._error(PageNotFound(f"no file {name[:100]!r} in /ui/static"))
        headers = {"Cache-Control": pages.ASSET_CACHE, "X-Content-Type-Options": "nosniff"}
        return Response(200, content=_static(name), media_type=media_type, headers=headers)


async def _body(request: Request, limit: int) -> bytes:
    assert request.read_body is not None, "the adapter must pass read_body on a POST"
    return await request.read_body(limit)
