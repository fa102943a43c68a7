"""Results off the response queue, into the waiting orchestrations.

A Service Bus trigger on ``nearline-responses`` parses each result message (docs/api.md, Wire messages) and
raises ``ScoreCompleted`` on the job's instance with it. Messages are completed when the function
returns (``autoCompleteMessages``) and abandoned - so redelivered, then dead-lettered after the
queue's max delivery count - when it raises. So the function returns normally for every message
that retrying cannot help, and raises only for what can get better (the task hub briefly
unreachable, an instance ending between the status read and the event).

A result too large for Service Bus arrives claim-checked (:class:`nearline.claim_check.OutOfLine`,
the Service Bus broker's own claim check): :func:`receive` reads its body from the blob store
first, and deletes the blob once the message is handled for good (delivered or dropped), not
when the function raises and the message comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from nearline import tracing
from nearline.brokers.servicebus_wire import claim_name
from nearline.claim_check import OutOfLine
from nearline.constants import RESPONSE_QUEUE
from nearline.messages import MessageError, ResultMessage
from orchestrations import storage
from orchestrations.azure_status import RESULT_EVENT, SERVICE_BUS_CONNECTION, DurableClient, is_terminal

log = logging.getLogger("nearline.azure.responses")
bp = df.Blueprint()


async def deliver(body: bytes, client: DurableClient) -> str:
    """Raise ``ScoreCompleted`` on the job of the result message ``body``.

    Returns:
        What happened, for logs and tests: ``"delivered"``; ``"malformed"``, ``"unknown"`` or
        ``"finished"`` for a message dropped on purpose.
    """
    try:
        result = ResultMessage.from_json(body)
    except MessageError as exc:
        # A body that does not parse now never will: retries would only delay its dead-lettering
        # and hold a delivery slot. Drop it loudly; the job ends at its deadline.
        log.error("dropping a malformed result message: %s", exc.message)
        return "malformed"
    status = await client.get_status(result.id)
    if not status:
        # No such instance (purged, or a result from another hub): nothing will ever wait for it.
        log.warning("dropping the result of job %s: no such instance", result.id)
        return "unknown"
    if is_terminal(status):
        # A duplicate (a redelivered request scored twice) or a result after the deadline or a
        # terminate: the job's outcome is settled and Durable would refuse the event.
        log.info("dropping the result of job %s: the job already ended", result.id)
        return "finished"
    await client.raise_event(result.id, RESULT_EVENT, result.to_dict())
    tracing.ended([(result, result.finished_at)], time.time())
    return "delivered"


async def receive(
    body: bytes, properties: Any, client: DurableClient, claims: Callable[[], OutOfLine] = storage.claims
) -> str:
    """:func:`deliver` a message as the trigger hands it over: its body read back first when it
    was claim-checked (``properties`` name the blob), the blob deleted once it is handled."""
    name = claim_name(properties)
    if name is None:
        return await deliver(body, client)
    (body,) = await asyncio.to_thread(claims().resolve, [name], [body])
    outcome = await deliver(body, client)
    await asyncio.to_thread(claims().release, [name])
    return outcome


@bp.service_bus_queue_trigger(arg_name="msg", queue_name=RESPONSE_QUEUE, connection=SERVICE_BUS_CONNECTION)
@bp.durable_client_input(client_name="client")
async def receive_result(msg: func.ServiceBusMessage, client: df.DurableOrchestrationClient) -> None:
    await receive(msg.get_body(), msg.application_properties, client)
