"""The HTTP starter's reading of each endpoint's live split: at most a second old, per process.

Every untargeted submit draws its deployment from the endpoint's live split, which lives in the
``endpoint_split`` Durable Entity (:mod:`orchestrations.split_entity`). Reading an entity's
state is a call to the Durable extension's HTTP API (a read of the task hub), so each Functions
worker process keeps the last state it read per endpoint and reads again when that is older
than :data:`SPLIT_READING_S`: a change made with ``PUT /api/endpoints/{name}/traffic`` reaches
every instance of the app within a second of the entity applying it (and at once in the process
that made it, which remembers what it signalled).

An entity that does not exist yet stands for the pipelines file's split. A read that fails (the
extension not answering) keeps the last state read, or the file's split where there is none,
and is logged: a split that cannot be refreshed must not fail submissions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import azure.durable_functions as df

from orchestrations.split_state import SPLIT_ENTITY

log = logging.getLogger("nearline.azure.splits")

#: How old a reading of an entity may be before a submit reads it again: "cached at most a
#: second" (issue #13), so a rollout step is live on every instance within about a second.
SPLIT_READING_S = 1.0


class EntityClient(Protocol):
    """The part of ``DurableOrchestrationClient`` that reads and signals entities."""

    async def read_entity_state(self, entityId: df.EntityId) -> Any: ...

    async def signal_entity(
        self, entityId: df.EntityId, operation_name: str, operation_input: Any = None
    ) -> None: ...


def entity_id(endpoint: str) -> df.EntityId:
    """The id of an endpoint's split entity."""
    return df.EntityId(SPLIT_ENTITY, endpoint)


class SplitReadings:
    """Each endpoint's entity state as last read (None: no entity, the file's split).

    Args:
        max_age_s: How old a reading may be before it is read again.
        clock: Monotonic seconds (tests move it).
    """

    def __init__(
        self, *, max_age_s: float = SPLIT_READING_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_age_s, self.clock = max_age_s, clock
        self._readings: dict[str, tuple[float, dict[str, Any] | None]] = {}

    async def state(self, client: EntityClient, endpoint: str) -> dict[str, Any] | None:
        """The endpoint's entity state, read first if the last reading is too old."""
        at, state = self._readings.get(endpoint, (None, None))
        if at is not None and self.clock() - at < self.max_age_s:
            return state
        try:
            state = decode(await client.read_entity_state(entity_id(endpoint)))
        except Exception as exc:  # anything: keep the last reading; retried after max_age_s
            log.warning(
                "could not read the live split of endpoint %r; using the last one read: %s", endpoint, exc
            )
        self._readings[endpoint] = (self.clock(), state)
        return state

    def remember(self, endpoint: str, state: dict[str, Any]) -> None:
        """Take ``state`` as read now (what this process has just signalled the entity to hold)."""
        self._readings[endpoint] = (self.clock(), state)


def decode(response: Any) -> dict[str, Any] | None:
    """The state of an ``EntityStateResponse``: None when the entity does not exist; a state the
    extension hands back still JSON-encoded is decoded; anything but an object is no state."""
    if not getattr(response, "entity_exists", False):
        return None
    state = getattr(response, "entity_state", None)
    if isinstance(state, str | bytes):
        try:
            state = json.loads(state)
        except ValueError:
            return None
    return state if isinstance(state, dict) else None


#: The process's readings: handlers are made per request, the readings must outlive them.
_readings = SplitReadings()


def split_readings() -> SplitReadings:
    """The process's readings of the endpoints' live splits."""
    return _readings
