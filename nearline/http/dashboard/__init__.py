"""The dashboard at ``/ui`` (docs/operations.md): endpoints, queue, live numbers, recent jobs, a job's
page, dead letters with redrive and purge, and a "try it" form per pipeline.

``views.py`` renders the pages (Jinja2 ``templates/``), ``access.py`` checks keys (a cookie
from ``/ui?code=KEY``) and same-site posts, ``stats.py`` computes the live numbers, ``forms.py``
builds the try-it form from an input schema. ``static/`` holds htmx and uPlot (see VENDOR.md)
and the dashboard's own script and styles: nothing is fetched from the internet.

:data:`ROUTES` are :class:`~nearline.http.handlers.Handlers`' methods for ``GET /ui``,
``GET /ui/{page}`` and ``POST /ui/{page}``; the views are imported on the first page (they
import the handlers module, which imports this one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nearline.http.dashboard.views import Dashboard
    from nearline.http.handlers import Handlers, Request, Response


def _of(handlers: Handlers) -> Dashboard:
    from nearline.http.dashboard.access import Access
    from nearline.http.dashboard.views import Dashboard

    return Dashboard(handlers.jobs, Access(handlers.api_keys, handlers.admin_keys))


async def home(handlers: Handlers, request: Request) -> Response:
    """``GET /ui``."""
    return await _of(handlers).get(request, "")


async def page(handlers: Handlers, request: Request) -> Response:
    """``GET /ui/{page}``."""
    return await _of(handlers).get(request, request.params.get("page", ""))


async def post(handlers: Handlers, request: Request) -> Response:
    """``POST /ui/{page}``."""
    return await _of(handlers).post(request, request.params.get("page", ""))


#: The handler methods of the dashboard's routes, in their order in ``ROUTES`` there.
ROUTES = (home, page, post)
