"""The client's protocol without I/O: the calls an operation makes and how replies are read.

An operation is a *plan*: a generator that yields :class:`Call` (send this request and send me
the response) or :class:`Sleep` (pause this long), and returns the operation's result.
:class:`~nearline.client.Client` runs plans with ``httpx.Client`` and ``time.sleep``,
:class:`~nearline.client.AsyncClient` with ``httpx.AsyncClient`` and ``asyncio.sleep``; every
decision (URLs, Retry-After, long-poll fallback, error mapping) lives here and in
:mod:`nearline.client.plans`, once. A transport failure is thrown into the plan as
:class:`~nearline.client.errors.ConnectionFailed`, so a plan may retry an idempotent call.

Job URLs are taken from the server's answers, never built, because deployments differ: the
Azure Functions one hands out URLs on its own host that may carry a ``?code=`` key.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urljoin, urlsplit, urlunsplit

import httpx

from nearline import __version__
from nearline.client.errors import ApiError, ConnectionFailed, api_error, public_url

T = TypeVar("T")

#: Header carrying the API key (the Azure Functions convention; the query form is ``code``).
KEY_HEADER = "x-functions-key"

USER_AGENT = f"nearline-client/{__version__}"

#: The terminate URL Durable Functions hands out carries this placeholder for the reason.
REASON_PLACEHOLDER = "{text}"


@dataclass(frozen=True)
class Call:
    """One HTTP request of a plan.

    Attributes:
        method: HTTP method.
        url: Absolute URL, query included.
        json: JSON body, or None for no body.
        headers: Extra headers (the driver adds the API key).
        hold: Seconds the server may hold the request before answering (long-poll); the driver
            adds them to its own timeout.
    """

    method: str
    url: str
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    hold: float = 0.0


@dataclass(frozen=True)
class Sleep:
    """A pause of a plan, in seconds."""

    seconds: float


Step: TypeAlias = Call | Sleep
#: A plan yields steps; a driver answers each Call with its response (and resumes after a Sleep
#: with ``next``), and the plan's return value is the operation's result.
Plan: TypeAlias = Generator[Step, httpx.Response, T]


def api_url(base_url: str, *segments: str) -> str:
    """``{base_url}/api/{segments...}``, each segment percent-encoded."""
    return f"{base_url.rstrip('/')}/api/" + "/".join(quote(s, safe="") for s in segments)


def check_base_url(base_url: str) -> str:
    """``base_url`` without a trailing slash; raises ValueError unless it is absolute http(s)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"base URL must be an absolute http(s) URL, e.g. http://127.0.0.1:7071; got {base_url!r}"
        )
    return base_url.rstrip("/")


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` set in its query string.

    Parameters already in ``url`` keep their exact text (an Azure ``code=...==`` key is not
    re-encoded); one of the same name as a new parameter is replaced.
    """
    parts = urlsplit(url)
    kept = [raw for raw in parts.query.split("&") if raw and unquote_plus(raw.split("=", 1)[0]) not in params]
    if params:
        kept.append(urlencode(params, quote_via=quote))
    return urlunsplit(parts._replace(query="&".join(kept)))


def sub_path(url: str, segment: str) -> str:
    """``url`` with ``/segment`` added to its path, its query kept."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{quote(segment, safe='')}"))


def has_query_key(url: str, name: str) -> bool:
    """Whether ``url``'s query string has a parameter ``name``."""
    return any(k == name for k, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True))


def auth_headers(url: str, key: str | None) -> dict[str, str]:
    """The key header for a request to ``url``.

    None when the URL already carries a key as ``?code=``: Azure Functions reads the header
    before the query, so sending ours would override the key the server put in its own URL.
    """
    if key is None or has_query_key(url, "code"):
        return {}
    return {KEY_HEADER: key}


def terminate_target(url: str, reason: str) -> str:
    """The terminate URL with ``reason`` filled in (Durable's ``{text}`` placeholder or a query)."""
    if REASON_PLACEHOLDER in url:
        return url.replace(REASON_PLACEHOLDER, quote(reason, safe=""))
    return with_query(url, reason=reason)


def retry_after(response: httpx.Response, default: float) -> float:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), else ``default``."""
    value = response.headers.get("retry-after")
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return max(seconds, 0.0) if math.isfinite(seconds) else default


def read_json(response: httpx.Response) -> Any:
    """The response body as JSON; an :class:`ApiError` if the body is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise ApiError(
            response.status_code,
            "InvalidResponse",
            f"{response.request.method} {public_url(str(response.request.url))} answered with a body"
            " that is not JSON",
        ) from None


def check(response: httpx.Response, default_retry: float) -> httpx.Response:
    """``response`` when it is 2xx; otherwise raise the typed error for it."""
    if response.status_code >= 400:
        raise api_error(response, retry_after(response, default_retry))
    return response


def connection_failed(call: Call, exc: httpx.TransportError) -> ConnectionFailed:
    """The error for a request that got no HTTP answer."""
    return ConnectionFailed(call.url, str(exc) or type(exc).__name__)


def location(response: httpx.Response) -> str | None:
    """The absolute ``Location`` of a response, if any."""
    value = response.headers.get("location")
    return urljoin(str(response.url), value) if value else None


@dataclass(frozen=True)
class JobLinks:
    """A job's id and the URLs to operate on it, as the server handed them out."""

    id: str
    status_url: str
    terminate_url: str
    purge_url: str

    @classmethod
    def for_id(cls, base_url: str, job_id: str) -> JobLinks:
        """Links built from the base URL: for a job known only by id (``client.get(id)``) or
        whose submit answered 200 with no URLs."""
        status = api_url(base_url, "jobs", job_id)
        return cls(job_id, status, sub_path(status, "terminate"), status)

    @classmethod
    def from_accepted(cls, response: httpx.Response, body: dict[str, Any]) -> JobLinks:
        """Links from a 202 answer: its ``...Uri`` fields, else its ``Location``."""
        base = str(response.url)
        status = body.get("statusQueryGetUri") or location(response)
        if not isinstance(body.get("id"), str) or not status:
            raise ApiError(
                response.status_code, "InvalidResponse", "the 202 answer carries no id or status URL"
            )
        status = urljoin(base, status)
        return cls(
            body["id"],
            status,
            urljoin(base, body.get("terminatePostUri") or sub_path(status, "terminate")),
            urljoin(base, body.get("purgeHistoryDeleteUri") or status),
        )

    def accepted_body(self) -> dict[str, str]:
        """The 202 body's fields: what ``nearline submit`` prints."""
        return {
            "id": self.id,
            "statusQueryGetUri": self.status_url,
            "terminatePostUri": self.terminate_url,
            "purgeHistoryDeleteUri": self.purge_url,
        }
