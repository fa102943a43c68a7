"""The admin API for dead letters (docs/operations.md): list, show, redrive, purge.

Framework-neutral: :class:`~nearline.http.handlers.Handlers` calls these with the request's
query and body and the job seam's :class:`~nearline.dead_letters.DeadLetterQueue`; the work is
:mod:`nearline.dead_letters`, the same code as ``nearline dlq``. Every refusal is a 4xx naming
the parameter; a front door without dead-letter tools (Azure) answers 404 ``NotSupported``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from nearline import dead_letters as dl
from nearline.errors import JobNotFound, NotSupported, RequestError
from nearline.service import Jobs
from nearline.strict_json import StrictJSONError, load

if TYPE_CHECKING:
    from nearline.http.handlers import Handlers, Request, Response

#: The most dead letters one call lists or acts on (the CLI's ``--limit`` default is 100).
MAX_LIMIT = 1000
#: A redrive body is a short list of ids or a few filters.
MAX_BODY = 256 * 1024


def queue_of(jobs: Jobs) -> dl.DeadLetterQueue:
    """The seam's dead-letter tools, or 404 ``NotSupported`` naming where to find them instead."""
    queue = jobs.dead_letters()
    if queue is None:
        raise NotSupported("dead letters are not reachable from this front door: use `nearline dlq`")
    return queue


def parse_filter(values: Mapping[str, Any], where: str = "query parameter") -> tuple[dl.Filter, int]:
    """``pipeline``, ``reason``, ``older_than_s`` and ``limit`` (default 100) from ``values``."""
    pipeline, reason = (_text(values, name, where) for name in ("pipeline", "reason"))
    older = _number(values.get("older_than_s"), f"{where} 'older_than_s'", 0, math.inf)
    limit = _number(values.get("limit"), f"{where} 'limit'", 1, MAX_LIMIT)
    if limit is not None and limit != int(limit):
        raise RequestError(f"{where} 'limit' must be a whole number")
    return dl.Filter(pipeline, reason, older), int(limit or 100)


def _text(values: Mapping[str, Any], name: str, where: str) -> str | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise RequestError(f"{where} '{name}' must be text of at most 200 characters")
    return value


def _number(value: Any, what: str, low: float, high: float) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not low <= number <= high:  # NaN too
        bound = f">= {low:g}" if math.isinf(high) else f"between {low:g} and {high:g}"
        raise RequestError(f"{what} must be a number {bound}")
    return number


async def listing(jobs: Jobs, request: Request) -> dict[str, Any]:
    """``GET /api/admin/deadletters``: the oldest matching dead letters, without bodies."""
    queue = queue_of(jobs)
    flt, limit = parse_filter(request.query)
    found = await queue.select(flt, limit)
    return {"queue": queue.queue, "deadLetters": [dl.summary(d) for d in found]}


async def one(jobs: Jobs, request: Request) -> dict[str, Any]:
    """``GET /api/admin/deadletters/{id}``: one dead letter with its request message."""
    return await one_of(jobs, request.params.get("id", ""))


async def one_of(jobs: Jobs, message_id: str) -> dict[str, Any]:
    """The dead letter with ``message_id`` (404 when there is none), with its request message."""
    dead = await queue_of(jobs).get(message_id)
    if dead is None:
        raise JobNotFound(f"no dead letter with id {message_id[:100]!r}")
    return dl.detail(dead)


async def targets(queue: dl.DeadLetterQueue, values: Mapping[str, Any], where: str) -> list[str]:
    """The ids an action applies to: ``ids`` given, or with ``all`` true those the filters match."""
    ids, everything = values.get("ids"), values.get("all")
    if (ids is None) == (everything is not True):
        raise RequestError(f"{where}: give 'ids' (dead letter ids) or 'all': true (with filters), not both")
    flt, limit = parse_filter(values, where)
    if everything is True:
        return [d.message_id for d in await queue.select(flt, limit)]
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 200 for i in ids):
        raise RequestError(f"{where} 'ids' must be a list of dead letter ids")
    if len(ids) > MAX_LIMIT:
        raise RequestError(f"{where} 'ids' may name at most {MAX_LIMIT} dead letters")
    found = {d.message_id for d in await queue.select(flt, dl.SCAN_LIMIT)}
    return [i for i in dict.fromkeys(ids) if i in found]


async def redrive(jobs: Jobs, request: Request) -> dict[str, Any]:
    """``POST /api/admin/deadletters/redrive``: body ``{"ids": [...]}`` or ``{"all": true, filters}``."""
    queue = queue_of(jobs)
    assert request.read_body is not None, "the adapter must pass read_body on redrive"
    body = await request.read_body(MAX_BODY)
    try:
        values = load(body) if body.strip() else {}
    except StrictJSONError as exc:
        raise RequestError(str(exc)) from None
    if not isinstance(values, dict):
        raise RequestError("request body must be a JSON object")
    ids = await targets(queue, values, "request body")
    redriven = await queue.redrive(ids)
    wanted = values["ids"] if values.get("all") is not True else []  # targets checked them
    return {"redriven": redriven, "missing": [i for i in wanted if i not in redriven]}


async def purge(jobs: Jobs, request: Request) -> dict[str, Any]:
    """``DELETE /api/admin/deadletters?ids=a,b`` or ``?all=true`` with filters."""
    queue = queue_of(jobs)
    values: dict[str, Any] = dict(request.query)
    if "ids" in values:
        values["ids"] = [i for i in values["ids"].split(",") if i]
    if "all" in values:
        if values["all"] not in ("true", "false"):
            raise RequestError("query parameter 'all' must be true or false")
        values["all"] = values["all"] == "true" or None
    ids = await targets(queue, values, "query parameter")
    return {"purged": await queue.purge(ids), "ids": ids}


def _method(
    answer: Callable[[Jobs, Request], Awaitable[dict[str, Any]]],
) -> Callable[[Handlers, Request], Awaitable[Response]]:
    """A :class:`~nearline.http.handlers.Handlers` method answering ``200`` with ``answer``'s body."""

    async def method(handlers: Handlers, request: Request) -> Response:
        from nearline.http.handlers import Response  # that module imports this one

        return Response(200, await answer(handlers.jobs, request))

    return method


#: The admin routes' handler methods, in the order of their routes in ``ROUTES`` there.
ROUTES = tuple(_method(answer) for answer in (listing, one, redrive, purge))
