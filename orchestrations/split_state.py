"""An endpoint's live traffic split on Azure: the state of its Durable Entity, and its operations.

The split lives in one Durable Entity per endpoint (``endpoint_split``, key = the endpoint's
name; :mod:`orchestrations.split_entity` registers it). Its state is a JSON object::

    {"traffic": {"blue": 90, "green": 10}, "mirror": {}, "history": [<newest first, at most 50>]}

where each history entry is ``{"at": iso8601, "traffic", "mirror", "reason"}``. An entity that
does not exist yet stands for the pipelines file's split. Everything here is pure (no ``azure``
import): the entity function and the HTTP starter (:mod:`orchestrations.split_readings`) share it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from nearline.errors import ConfigError
from nearline.pipelines.spec import Pipeline
from nearline.pipelines.traffic import Split, check_split
from nearline.splits.request import MAX_REASON

log = logging.getLogger("nearline.azure.splits")

#: The entity's function name: Durable addresses an entity by it (and the endpoint as its key).
SPLIT_ENTITY = "endpoint_split"
#: Changes kept in an entity's history: enough to see a rollout's steps, small enough for the
#: state to stay one small row of the task hub (entity state is read on every refresh).
HISTORY_LIMIT = 50
OPERATIONS = ("get", "set", "reset")
#: The mismatches between a live split and the pipelines file already logged by this process.
_warned: set[str] = set()


def where(endpoint: str) -> str:
    """How a split's messages name it (the start of every ConfigError)."""
    return f"endpoint '{endpoint}': traffic"


def initial_state(pipeline: Pipeline) -> dict[str, Any]:
    """The state of an entity that does not exist yet: the pipelines file's split, no history."""
    return {**pipeline.split.document(), "history": []}


def names(pipeline: Pipeline) -> list[str]:
    return [d.name for d in pipeline.deployments]


def state_split(state: Any, pipeline: Pipeline) -> Split:
    """The split an entity state holds, checked against the endpoint's deployments now.

    A state the pipelines file no longer fits (a deployment it names was removed) is not used:
    the file's split is, and that is logged once; a deployment added since gets 0.
    """
    doc = state if isinstance(state, dict) else {}
    try:
        return check_split(
            where(pipeline.name), {k: doc[k] for k in ("traffic", "mirror") if k in doc}, names(pipeline)
        )
    except ConfigError as exc:
        if exc.message not in _warned:  # once per process: this runs on every untargeted submit
            _warned.add(exc.message)
            log.warning("the live split does not fit the pipelines file; using the file's: %s", exc)
        return pipeline.split


def history(state: Any) -> list[dict[str, Any]]:
    """The state's history, newest first (entries that are not objects are left out)."""
    found = state.get("history") if isinstance(state, dict) else None
    return [entry for entry in found if isinstance(entry, dict)] if isinstance(found, list) else []


def entry(split: Split, reason: str, at: datetime) -> dict[str, Any]:
    """One history entry."""
    return {"at": at.astimezone(UTC).isoformat(), **split.document(), "reason": reason}


def changed(state: Any, split: Split, reason: str, at: datetime) -> dict[str, Any]:
    """``state`` after ``split`` took over: the new split, the change first in its history."""
    return {**split.document(), "history": [entry(split, reason, at), *history(state)][:HISTORY_LIMIT]}


def reason_of(doc: Any) -> str:
    """The ``reason`` of a set/reset input: a string of at most :data:`MAX_REASON`.

    Raises:
        ConfigError: it is there and is not a string, or is too long.
    """
    reason = doc.get("reason", "") if isinstance(doc, Mapping) else ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise ConfigError(f"'reason' must be a string of at most {MAX_REASON} characters")
    return reason


def operate(
    operation: str, state: Any, payload: Any, pipeline: Pipeline, now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply one entity operation: ``(new state, result)``; the result is the split document.

    Raises:
        ConfigError: an unknown operation, or a ``set`` whose split breaks a rule (the message
            names it); the state is then left as it was.
    """
    current = state if isinstance(state, dict) else initial_state(pipeline)
    if operation == "get":
        new = current
    elif operation == "set":
        split = check_split(where(pipeline.name), payload, names(pipeline))
        new = changed(current, split, reason_of(payload), now)
    elif operation == "reset":
        reason = reason_of(payload) or "reset to the pipelines file's split"
        new = changed(current, pipeline.split, reason, now)
    else:
        raise ConfigError(f"unknown operation {operation!r}; the operations are: {', '.join(OPERATIONS)}")
    return new, {**state_split(new, pipeline).document(), "history": history(new)}
