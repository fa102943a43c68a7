"""Durable orchestration histories built event by event, replayed through the library's engine.

The Durable extension calls a Python orchestrator with a JSON context: the instance's history
(``OrchestratorStarted`` / ``OrchestratorCompleted`` bracket each episode; ``TaskScheduled``,
``TaskCompleted``, ``TimerCreated``, ``TimerFired``, ``EventRaised`` ... in between), its
input and the replay schema. :class:`History` writes such contexts; :func:`replay` hands one to
``Orchestrator.create(fn)`` - the entry point the Functions host calls - and returns the state
the orchestrator reports back (its actions, output, custom status, or error).

Things the engine insists on (docs/azure.md, What is tested here): ``ExecutionStarted`` carries ``Version``;
``get_input()`` reads the context's top-level ``input``; activities and timers take their event
ids from one counter (external events are keyed by name); with ``upperSchemaVersion`` >= 1 a
``task_any`` is one ``WhenAny`` action holding its children.

:class:`FakeDurableClient` stands in for the durable client of the HTTP and response functions.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from azure.durable_functions.constants import DATETIME_STRING_FORMAT
from azure.durable_functions.models.DurableOrchestrationStatus import DurableOrchestrationStatus
from azure.durable_functions.models.EntityStateResponse import EntityStateResponse
from azure.durable_functions.models.history.HistoryEventType import HistoryEventType as Ev
from azure.durable_functions.models.PurgeHistoryResult import PurgeHistoryResult
from azure.durable_functions.models.utils import http_utils
from azure.durable_functions.orchestrator import Orchestrator

from orchestrations.split_state import SPLIT_ENTITY

_OUT_OF_PROC = "$OutOfProcData$:"
T = TypeVar("T")


def stamp(when: datetime) -> str:
    """A timestamp as the extension writes it."""
    return when.strftime(DATETIME_STRING_FORMAT)


class History:
    """One orchestration instance's history, starting with its first episode.

    Args:
        orchestrator_input: What the starter passed to ``start_new``.
        start: When the instance started (the first episode's ``OrchestratorStarted``).
        name: The orchestrator function name.
        schema: ``upperSchemaVersion`` (0 = V1: one action list per yield; 1 = V2: one list).
    """

    def __init__(self, orchestrator_input: Any, start: datetime, name: str, schema: int = 1) -> None:
        self.instance_id = uuid.uuid4().hex
        self.input = json.dumps(orchestrator_input)
        self.schema = schema
        self.now = start
        self.events: list[dict[str, Any]] = []
        self._add(Ev.ORCHESTRATOR_STARTED)
        self._add(Ev.EXECUTION_STARTED, Name=name, Version="", Input=self.input)

    def _add(self, kind: Ev, event_id: int = -1, **fields: Any) -> History:
        self.events.append(
            {
                "EventType": int(kind),
                "EventId": event_id,
                "IsPlayed": False,
                "Timestamp": stamp(self.now),
                **fields,
            }
        )
        return self

    def episode(self, at: datetime | None = None) -> History:
        """End the current episode and start the next at ``at`` (default: one second later)."""
        self._add(Ev.ORCHESTRATOR_COMPLETED)
        self.now = at if at is not None else self.now + timedelta(seconds=1)
        return self._add(Ev.ORCHESTRATOR_STARTED)

    def task_scheduled(self, event_id: int, name: str) -> History:
        return self._add(Ev.TASK_SCHEDULED, event_id, Name=name, Version="")

    def task_completed(self, event_id: int, result: Any) -> History:
        return self._add(Ev.TASK_COMPLETED, TaskScheduledId=event_id, Result=json.dumps(result))

    def task_failed(self, event_id: int, reason: str, details: str = "") -> History:
        return self._add(Ev.TASK_FAILED, TaskScheduledId=event_id, Reason=reason, Details=details)

    def timer_created(self, event_id: int, fire_at: datetime) -> History:
        return self._add(Ev.TIMER_CREATED, event_id, FireAt=stamp(fire_at))

    def timer_fired(self, event_id: int, fire_at: datetime) -> History:
        return self._add(Ev.TIMER_FIRED, TimerId=event_id, FireAt=stamp(fire_at))

    def event_raised(self, name: str, payload: Any) -> History:
        return self._add(Ev.EVENT_RAISED, Name=name, Input=json.dumps(payload))

    def context(self) -> str:
        """The JSON the extension sends to the orchestrator function."""
        context: dict[str, Any] = {
            "history": self.events,
            "instanceId": self.instance_id,
            "isReplaying": False,
            "parentInstanceId": None,
            "input": self.input,
            "upperSchemaVersion": self.schema,
        }
        if self.schema >= 2:  # V3: the Azure Storage provider's timer limits come along
            context["maximumShortTimerDuration"] = "6.00:00:00"
            context["longRunningTimerIntervalDuration"] = "3.00:00:00"
        return json.dumps(context)


@dataclass(frozen=True)
class Replay:
    """What an orchestrator reported after one replay."""

    state: dict[str, Any]
    #: The orchestrator's exception text when it failed (the state's ``error``), else None.
    error: str | None

    @property
    def done(self) -> bool:
        return bool(self.state.get("isDone"))

    @property
    def actions(self) -> list[dict[str, Any]]:
        """Every action, in order, with a WhenAny/WhenAll flattened to its children."""
        flat: list[dict[str, Any]] = []
        for group in self.state["actions"]:
            for action in group:
                flat.extend(action.get("compoundActions", [action]))
        return flat


def replay(orchestrator: Callable[..., Any], history: History) -> Replay:
    """Run ``orchestrator`` over ``history`` the way the Functions host does."""
    handle = Orchestrator.create(orchestrator)
    try:
        state = json.loads(handle(history.context()))
    except Exception as exc:  # a failing orchestrator surfaces as the engine's bare Exception
        text = str(exc)
        if _OUT_OF_PROC not in text:
            raise
        state = json.loads(text.split(_OUT_OF_PROC, 1)[1])
        return Replay(state, state.get("error") or text.split("\n\n" + _OUT_OF_PROC, 1)[0])
    return Replay(state, None)


class FakeDurableClient:
    """A stand-in for ``DurableOrchestrationClient``: the one test double of the Azure tests.

    The real client is an HTTP client of the Durable extension inside the Functions host, and
    that host cannot run here. This double keeps instances the way the extension does and
    answers with the library's own ``DurableOrchestrationStatus`` / ``PurgeHistoryResult`` /
    ``EntityStateResponse`` objects built from extension-shaped JSON, so the code under test
    parses real objects. Like the extension (``overridableExistingInstanceStates:
    NonRunningStates``), it refuses to start over a running instance and silently replaces a
    finished one. Every call is recorded.

    Entities (the ``endpoint_split`` entity of each endpoint): each state as the entity last
    answered it (returned as the extension's HTTP API returns it, parsed JSON); a signal is
    applied by the library's entity handle (:func:`run_entity`, the input JSON-encoded as the
    client sends it), at once or, with ``hold_signals``, when :meth:`deliver` runs (Durable
    applies a signal asynchronously). No entity: the endpoint runs on its pipelines file's split.
    """

    def __init__(self) -> None:
        self.instances: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, Any]] = []
        #: Called with the instance id before each ``get_status`` answers (to move a job on).
        self.before_status: Callable[[str], None] = lambda instance_id: None
        self.entities: dict[str, Any] = {}
        self.signals: list[tuple[str, str, Any]] = []
        self.hold_signals = False
        self.fail_reads = False
        self._held: list[tuple[str, str, Any]] = []

    def calls_of(self, method: str) -> list[str]:
        return [instance for name, instance in self.calls if name == method]

    async def start_new(
        self, orchestration_function_name: str, instance_id: str | None = None, client_input: Any = None
    ) -> str:
        instance_id = instance_id or uuid.uuid4().hex
        self.calls.append(("start_new", instance_id))
        current = self.instances.get(instance_id)
        if current and current["runtimeStatus"] in ("Pending", "Running"):
            raise Exception(
                f"An Orchestration instance with the status {current['runtimeStatus']} already exists."
            )
        now = stamp(datetime.now(UTC))
        self.instances[instance_id] = {
            "name": orchestration_function_name,
            "instanceId": instance_id,
            "runtimeStatus": "Pending",
            "input": client_input,
            "output": None,
            "customStatus": None,
            "createdTime": now,
            "lastUpdatedTime": now,
        }
        return instance_id

    def set(
        self, instance_id: str, runtime_status: str, output: Any = None, custom_status: Any = None
    ) -> None:
        """Move an instance on, as the extension would."""
        self.instances[instance_id].update(
            runtimeStatus=runtime_status,
            output=output,
            customStatus=custom_status,
            lastUpdatedTime=stamp(datetime.now(UTC)),
        )

    async def get_status(
        self,
        instance_id: str,
        show_history: bool = False,
        show_history_output: bool = False,
        show_input: bool = False,
    ) -> DurableOrchestrationStatus:
        self.calls.append(("get_status", instance_id))
        self.before_status(instance_id)
        found = self.instances.get(instance_id)
        if found is None:
            return DurableOrchestrationStatus.from_json("")  # what the client makes of a 404: falsy
        return DurableOrchestrationStatus.from_json(found if show_input else {**found, "input": None})

    async def terminate(self, instance_id: str, reason: str) -> None:
        self.calls.append(("terminate", instance_id))
        self.set(instance_id, "Terminated", output=reason)

    async def purge_instance_history(self, instance_id: str) -> PurgeHistoryResult:
        self.calls.append(("purge_instance_history", instance_id))
        return PurgeHistoryResult(instancesDeleted=int(self.instances.pop(instance_id, None) is not None))

    async def raise_event(
        self,
        instance_id: str,
        event_name: str,
        event_data: Any = None,
        task_hub_name: str | None = None,
        connection_name: str | None = None,
    ) -> None:
        self.calls.append(("raise_event", instance_id))
        found = self.instances.get(instance_id)
        if found is None:
            raise Exception(f"No instance with ID {instance_id} found.")
        if found["runtimeStatus"] not in ("Pending", "Running"):
            raise Exception(f"Instance with ID {instance_id} is gone: either completed or failed")
        self.events.append((instance_id, event_name, event_data))

    async def read_entity_state(
        self, entityId: Any, task_hub_name: Any = None, connection_name: Any = None
    ) -> EntityStateResponse:
        self.calls.append(("read_entity_state", entityId.key))
        if self.fail_reads:
            raise Exception("The operation failed with an unexpected status code 500")
        if entityId.key not in self.entities:
            return EntityStateResponse(False)
        return EntityStateResponse(True, self.entities[entityId.key])  # the HTTP API's JSON body

    async def signal_entity(
        self, entityId: Any, operation_name: str, operation_input: Any = None, **_: Any
    ) -> None:
        assert entityId.name == SPLIT_ENTITY
        self.calls.append(("signal_entity", entityId.key))
        self.signals.append((entityId.key, operation_name, operation_input))
        self._held.append((entityId.key, operation_name, json.loads(json.dumps(operation_input))))
        if not self.hold_signals:
            self.deliver()

    def deliver(self) -> None:
        """Apply the signals held so far, in order, through the entity's handle."""
        for key, name, payload in self._held:
            answer = run_entity(key, self.entities.get(key), (name, payload))
            if answer["entityExists"]:
                self.entities[key] = answer["entityState"]
        self._held.clear()


def entity_handle() -> Any:
    """What the Functions host calls for ``endpoint_split``: the library's ``Entity`` handle."""
    return registered_functions()[SPLIT_ENTITY].get_user_function()


def run_entity(key: str, state: Any, *operations: tuple[str, Any]) -> dict[str, Any]:
    """One batch of ``operations`` on the entity ``key`` whose stored state is ``state`` (None:
    it does not exist); the extension-shaped answer, its state and results decoded."""
    context = {
        "self": {"name": SPLIT_ENTITY, "key": key},
        "state": None if state is None else json.dumps(state),
        "exists": state is not None,
        "batch": [
            {"name": name, "input": None if payload is None else json.dumps(json.dumps(payload))}
            for name, payload in operations
        ],
    }
    answer = json.loads(entity_handle()(json.dumps(context)))
    answer["entityState"] = json.loads(answer["entityState"])
    for result in answer["results"]:
        result["result"] = json.loads(result["result"])
    return answer


def run(awaitable: Awaitable[T]) -> T:
    """``asyncio.run`` that also closes the durable library's shared aiohttp session.

    The library keeps one process-wide session bound to the loop that created it; a second
    ``asyncio.run`` would find it attached to a closed loop (docs/azure.md, What is tested here).
    """

    async def main() -> T:
        try:
            return await awaitable
        finally:
            await http_utils._close_session()

    return asyncio.run(main())


@functools.cache
def registered_functions() -> dict[str, Any]:
    """``function_app.app``'s functions by name, as the Python worker indexes them.

    Cached: ``get_functions()`` checks names against every earlier call's, so a second call on
    the same app fails with "does not have a unique function name".
    """
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}
