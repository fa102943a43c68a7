"""The ``endpoint_split`` Durable Entity: one per endpoint (key = its name), holding its live split.

Durable runs an entity's operations one at a time, so a change is never lost to a concurrent
one, and keeps its state in the task hub: every instance of the Function app reads the same
split. Operations (state and result shapes: :mod:`orchestrations.split_state`):

- ``get``: the split and its history;
- ``set`` ``{"traffic", "mirror"?, "reason"?}``: checked with
  :func:`nearline.pipelines.traffic.check_split` against the endpoint's deployments in the
  pipelines file; a split that breaks a rule is refused (the operation fails, naming the rule)
  and the state is left as it was;
- ``reset`` ``{"reason"?}``: back to the pipelines file's split.

Each change is stamped with the entity's clock and kept, newest first, in the last 50 changes.
The HTTP starter signals ``set`` (``PUT /api/endpoints/{name}/traffic``) and reads the state
(:mod:`orchestrations.split_readings`); the scoring orchestrator never reads it: the deployment
is drawn before the orchestration starts and travels in its input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df

from orchestrations.http_api import catalog
from orchestrations.split_state import SPLIT_ENTITY, operate

bp = df.Blueprint()


def endpoint_split(context: df.DurableEntityContext) -> None:
    """Run one operation on the endpoint ``context.entity_key``'s split."""
    pipeline = catalog().get(context.entity_key)  # UnknownPipeline: the operation fails
    operation = str(context.operation_name)
    payload = _input(context) if operation != "get" else None
    state, result = operate(operation, context.get_state(), payload, pipeline, datetime.now(UTC))
    context.set_state(state)
    context.set_result(result)


def _input(context: df.DurableEntityContext) -> Any:
    """The operation's input; None for an operation signalled without one (the library's
    ``get_input`` cannot decode an absent input: it raises TypeError)."""
    try:
        return context.get_input()
    except TypeError:
        return None


# Registered without rebinding the name, as the orchestrators are: tests run the plain function.
bp.entity_trigger(context_name="context", entity_name=SPLIT_ENTITY)(endpoint_split)
