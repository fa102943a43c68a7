"""The management side of a Service Bus namespace: creating queues and reading their depth.

Both are management operations: they need the Manage right (*Azure Service Bus Data Owner*, or a
connection string with Manage), which a worker or the Function app's sender does not otherwise
need. :class:`~nearline.brokers.servicebus.ServiceBusBroker` opens the client on first use only.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from nearline.brokers.servicebus_wire import Target, lane_queue, servicebus_error
from nearline.constants import LANES, LEASE_S, MAX_DELIVERIES
from nearline.errors import BrokerError


class QueueAdmin:
    """Queue creation (``create_queues``) and runtime counts for one namespace.

    Args:
        target: The parsed broker URL.
        credential: The broker's ``DefaultAzureCredential`` (None with a connection string).
        create: Create missing queues on first use.
        idle_delete_s: Queues created here delete themselves after idling this long.
    """

    def __init__(self, target: Target, credential: Any, create: bool, idle_delete_s: float | None) -> None:
        self._target = target
        self._credential = credential
        self._create = create
        self._idle_delete_s = idle_delete_s
        self._client: Any = None
        self._created: set[str] = set()
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The ``ServiceBusAdministrationClient``, opened on first use."""
        from azure.servicebus.management import ServiceBusAdministrationClient

        with self._lock:
            if self._client is None:
                if self._target.connection_string:
                    self._client = ServiceBusAdministrationClient.from_connection_string(
                        self._target.connection_string
                    )
                else:
                    self._client = ServiceBusAdministrationClient(self._target.namespace, self._credential)
            return self._client

    def ensure_queue(self, name: str) -> None:
        """Create the queue ``name`` as docs/azure.md provisions it, when asked to and missing."""
        from azure.core.exceptions import AzureError, ResourceExistsError

        if not self._create or name in self._created:
            return
        idle = {"auto_delete_on_idle": timedelta(seconds=self._idle_delete_s)} if self._idle_delete_s else {}
        try:
            self.client().create_queue(
                name,
                requires_duplicate_detection=True,
                lock_duration=timedelta(seconds=LEASE_S),
                # Above the workers' own limit, so they dead-letter with a reason first.
                max_delivery_count=2 * MAX_DELIVERIES,
                **idle,
            )
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise BrokerError(f"Service Bus: could not create queue {name}: {exc}") from exc
        self._created.add(name)

    def depth(self, queue: str) -> int:
        """The lanes' active message counts (waiting + locked), summed; a missing lane is empty."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        total = 0
        for lane in LANES:
            try:
                props = self.client().get_queue_runtime_properties(lane_queue(queue, lane))
            except ResourceNotFoundError:
                continue
            except AzureError as exc:
                raise servicebus_error(f"could not read the depth of {queue}", exc) from exc
            total += int(props.active_message_count or 0)
        return total

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
