"""What an adapter needs of the HTTP contract (docs/api.md) besides the handlers themselves.

:data:`ROUTES` is every route, with the name of the :class:`~nearline.http.handlers.Handlers`
method that answers it and the keys it needs; :class:`Request` is what the adapter builds from
its framework's request, :class:`Response` what it writes back. Kept apart from the handlers so
that the contract's shape reads in one place, and so that the handler modules beside them
(``admin.py``, ``dashboard/``) can name these types without importing the handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Route:
    """One route of the contract. ``name`` is the handler's and the metrics label's."""

    method: str
    path: str
    name: str
    auth: bool = True
    admin: bool = False


#: The contract's routes. Adapters register each of them (Azure: all but ``metrics``). Only the
#: health probe is anonymous: the OpenAPI document shows the input schemas that ``pipelines``
#: protects, and ``metrics`` shows the traffic.
ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/score/{pipeline}", "score"),
    Route("GET", "/api/jobs/{id}", "status"),
    Route("DELETE", "/api/jobs/{id}", "purge"),
    Route("POST", "/api/jobs/{id}/terminate", "terminate"),
    Route("GET", "/api/pipelines", "pipelines"),
    Route("GET", "/api/endpoints", "endpoints"),
    Route("GET", "/api/endpoints/{name}", "endpoint"),
    Route("PUT", "/api/endpoints/{name}/traffic", "traffic", admin=True),
    Route("GET", "/api/endpoints/{name}/compare", "compare"),
    # Dead letters (nearline/http/admin.py; docs/operations.md). Not on Azure: `nearline dlq`.
    Route("GET", "/api/admin/deadletters", "admin_deadletters", admin=True),
    Route("GET", "/api/admin/deadletters/{id}", "admin_deadletter", admin=True),
    Route("POST", "/api/admin/deadletters/redrive", "admin_redrive", admin=True),
    Route("DELETE", "/api/admin/deadletters", "admin_purge", admin=True),
    # The dashboard (nearline/http/dashboard/): it checks keys itself (?code= once, then a cookie).
    Route("GET", "/ui", "dashboard", auth=False),
    Route("GET", "/ui/{page:path}", "dashboard_page", auth=False),
    Route("POST", "/ui/{page:path}", "dashboard_post", auth=False),
    Route("GET", "/api/health", "health", auth=False),
    Route("GET", "/api/openapi.json", "openapi"),
    Route("GET", "/metrics", "metrics"),
    # Pages for people (nearline/http/pages.py): static, so anonymous like health.
    Route("GET", "/", "home", auth=False),
    Route("GET", "/docs", "docs", auth=False),
    Route("GET", "/docs/{asset}", "docs_asset", auth=False),
)


@dataclass(frozen=True)
class Request:
    """What a handler reads of an HTTP request.

    Attributes:
        base_url: ``scheme://host[:port]`` as the client sees it, without a trailing slash.
        params: Path parameters (``pipeline``, ``id``).
        query: Query parameters.
        headers: Request headers; lookups must be case-insensitive (both frameworks' are).
        read_body: Reads the body, raising :class:`~nearline.errors.PayloadTooLarge` past the
            limit it is given (streamed where the framework can).
    """

    base_url: str
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    read_body: Callable[[int], Awaitable[bytes]] | None = None


@dataclass(frozen=True)
class Response:
    """What an adapter writes: ``body`` as JSON, or ``content`` as is, or nothing."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    media_type: str = "application/json"
