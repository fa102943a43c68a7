"""Azure Service Bus broker: ``servicebus://<namespace>.servicebus.windows.net`` or a connection string.

``servicebus://`` authenticates with ``DefaultAzureCredential`` (workload identity on AKS, managed
identity on Functions, ``az login`` on a laptop); ``Endpoint=sb://...;SharedAccessKey...`` uses
the key. Options (query of the ``servicebus://`` form, or keyword arguments): ``lanes=high,normal``
(receive only these lanes, e.g. one worker Deployment per lane), ``probe_ms`` (how long a receive
waits on each lane in turn, default 30), ``create_queues=1`` (create missing queues on first use:
development namespaces and the contract suite; production queues come from ``az``).

Wire mapping (URLs, lanes → queues, message properties): :mod:`nearline.brokers.servicebus_wire`.

Guarantees: those of :mod:`nearline.brokers.base`, on queues set up as docs/azure.md says. A lane
is a queue: ``normal`` is the base name (``nearline-requests``), others add a suffix
(``nearline-requests-high``). Message id = correlation id = the caller's id; ``send`` is
idempotent through the queue's *duplicate detection* (required; it remembers ids for its window,
10 min by default: stronger than the contract). Receives are peek-lock; a lease token is the
message's lock token. ``lease_s`` is kept on the client: a message still held when its lease ends
is abandoned (redelivered at once, count + 1, like an expired lock) and the lock is renewed while
a lease outlasts it, so the queue's lock duration (set it to ``LEASE_S``) matters only when a
process dies. ``depth`` reads runtime properties (Manage right / *Data Owner*), which Service Bus
updates with a short delay.

Claim check (:class:`nearline.claim_check.OutOfLine`): a body over ``NEARLINE_CLAIM_CHECK_BYTES``
(256 KiB, Standard's message limit), or one that alone does not fit the queue's limit, goes to the
bodies container of ``NEARLINE_BLOB_STORE`` and the message carries the blob's name; receivers get
the body back, and completing the message deletes the blob. Dead-lettered messages keep theirs
(so ``dead_letters`` can show them) until the container's lifecycle rule removes it.

Errors (:func:`servicebus_error`): a failure that passes (connection lost, timeout, server busy,
a full or disabled queue, a token that could not be refreshed) is a :class:`BrokerError`, which
callers retry (the worker until the namespace answers); a message over the queue's size limit is
:class:`PayloadTooLarge` and a missing queue :class:`ConfigError`: neither passes by retrying.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nearline.brokers.base import Broker, DeadLetter, Delivery, LeaseLost
from nearline.brokers.servicebus_admin import QueueAdmin
from nearline.brokers.servicebus_wire import (
    claim_name,
    expired,
    lane_queue,
    outgoing,
    parse_url,
    purge_dead,
    received_body,
    servicebus_error,
    to_dead_letter,
    to_delivery,
)
from nearline.claim_check import OutOfLine
from nearline.constants import DEFAULT_LANE, LANES, LEASE_S
from nearline.errors import BrokerError

#: With a single lane a receive blocks for up to this long per call (other lanes are probed in
#: turn, see servicebus_wire.PROBE_S); bounded so settling threads get the receiver in between.
LONG_POLL_S = 1.0
#: The lease keeper's tick: leases end at most this late; locks are renewed this early.
KEEPER_TICK_S = 0.05
RENEW_MARGIN_S = 3.0
MAX_REASON = 1024  # dead-letter reasons are application properties; keep them short


@dataclass
class _Lease:
    receiver: Any
    guard: threading.Lock  # the receiver's: the SDK's receivers are not thread-safe
    message: Any
    ends_at: float  # time.monotonic()


class ServiceBusBroker(Broker):
    """Service Bus queues through the synchronous ``azure-servicebus`` client (imported lazily).

    Args:
        url: See the module docstring.
        lanes, probe_s, create_queues: Override the URL's options.
        idle_delete_s: With ``create_queues``: queues it creates delete themselves after idling
            this long (the contract suite's throwaway queues).
        claims: The claim check (default: :meth:`OutOfLine.configured`, from the environment).
    """

    def __init__(
        self,
        url: str,
        *,
        lanes: Sequence[str] | None = None,
        probe_s: float | None = None,
        create_queues: bool | None = None,
        idle_delete_s: float | None = None,
        claims: OutOfLine | None = None,
    ) -> None:
        from azure.servicebus import ServiceBusClient

        target = parse_url(url)
        self._target = target
        self.url = target.url
        self._lanes = tuple(lane for lane in LANES if lane in lanes) if lanes else target.lanes
        self._probe_s = probe_s if probe_s is not None else target.probe_s
        self.claims = claims if claims is not None else OutOfLine.configured()
        self._credential: Any = None
        if target.connection_string:
            self._client = ServiceBusClient.from_connection_string(target.connection_string)
        else:
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            self._client = ServiceBusClient(target.namespace, self._credential)
        create = target.create_queues if create_queues is None else create_queues
        self._admin = QueueAdmin(target, self._credential, create, idle_delete_s)
        self._senders: dict[str, tuple[Any, threading.Lock]] = {}
        self._receivers: dict[str, tuple[Any, threading.Lock]] = {}
        self._entities = threading.Lock()  # guards the three above
        self._held: dict[str, _Lease] = {}
        self._cond = threading.Condition()  # guards _held and _closed; wakes the keeper
        self._closed = False
        self._keeper: threading.Thread | None = None

    # -- sending

    def send_many(
        self,
        queue: str,
        messages: Sequence[tuple[str, bytes]],
        *,
        lane: str = DEFAULT_LANE,
        ttl_s: float | None = None,
    ) -> None:
        from azure.core.exceptions import AzureError

        name = lane_queue(queue, lane)
        if not messages or (ttl_s is not None and ttl_s <= 0):
            return  # nothing to send, or dead on arrival

        def message(message_id: str, body: bytes, out_of_line: bool = False) -> Any:
            from azure.servicebus import ServiceBusMessage

            blob = None
            if out_of_line or self.claims.needed(body):
                blob = self.claims.stash(name, message_id, body, ttl_s)
            return ServiceBusMessage(
                **outgoing(queue, body, message_id=message_id, lane=lane, ttl_s=ttl_s, blob=blob)
            )

        try:
            sender, guard = self._entity(self._senders, name, lambda: self._client.get_queue_sender(name))
            with guard:
                batch = sender.create_message_batch()
                for message_id, body in messages:
                    msg = message(message_id, body)
                    if _added(batch, msg):
                        continue
                    if len(batch):
                        sender.send_messages(batch)
                        batch = sender.create_message_batch()
                    if not _added(batch, msg):  # alone over the queue's limit: out of line after all
                        batch.add_message(message(message_id, body, out_of_line=True))
                sender.send_messages(batch)
        except AzureError as exc:
            raise servicebus_error(f"could not send to {name}", exc) from exc

    # -- receiving

    def receive(
        self, queue: str, max_messages: int, wait_s: float, lease_s: float = LEASE_S
    ) -> list[Delivery]:
        if max_messages <= 0:
            return []
        until = time.monotonic() + max(wait_s, 0.0)
        while True:
            got: list[Delivery] = []
            for lane in self._lanes:
                room = max_messages - len(got)
                if room <= 0:
                    break
                slice_s = self._probe_s if len(self._lanes) > 1 else until - time.monotonic()
                got += self._receive_lane(queue, lane, room, min(max(slice_s, 0.001), LONG_POLL_S), lease_s)
            if got or time.monotonic() >= until:
                return got

    def _receive_lane(
        self, queue: str, lane: str, room: int, wait_s: float, lease_s: float
    ) -> list[Delivery]:
        from azure.core.exceptions import AzureError
        from azure.servicebus import ServiceBusReceiveMode
        from azure.servicebus.exceptions import ServiceBusError

        name = lane_queue(queue, lane)

        def open_receiver() -> Any:
            receiver = self._client.get_queue_receiver(
                name, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0
            )
            return receiver.__enter__()  # attach the link now, not inside the first short probe

        try:
            receiver, guard = self._entity(self._receivers, name, open_receiver)
            with guard:
                messages = receiver.receive_messages(max_message_count=room, max_wait_time=wait_s)
                now = time.time()
                late = [m for m in messages if expired(m, now)]
                for m in late:
                    messages.remove(m)  # past its exact TTL (Service Bus only has whole seconds)
                    with contextlib.suppress(ServiceBusError):
                        receiver.complete_message(m)
            self.claims.release([claim_name(m.application_properties) for m in late])
        except AzureError as exc:
            raise servicebus_error(f"could not receive from {name}", exc) from exc
        bodies = self._bodies(receiver, guard, messages)
        ends_at = time.monotonic() + lease_s
        out = [to_delivery(m, queue, lane, body) for m, body in zip(messages, bodies, strict=True)]
        if out:
            with self._cond:
                for delivery, message in zip(out, messages, strict=True):
                    self._held[delivery.lease_token] = _Lease(receiver, guard, message, ends_at)
                self._start_keeper()
                self._cond.notify_all()
        return out

    def _bodies(self, receiver: Any, guard: threading.Lock, messages: list[Any]) -> list[bytes]:
        """The messages' bodies, claim-checked ones read back. If the store fails, the messages
        go back at once (the caller retries), never on with an empty body that would fail a job."""
        try:
            names = [claim_name(m.application_properties) for m in messages]
            return self.claims.resolve(names, [received_body(m) for m in messages])
        except BrokerError:
            for m in messages:
                self._quietly(_Lease(receiver, guard, m, 0.0), lambda r, m: r.abandon_message(m))
            raise

    # -- settling

    def complete(self, delivery: Delivery) -> None:
        message = self._settle(delivery, lambda r, m: r.complete_message(m))
        self.claims.release([claim_name(message.application_properties)])

    def abandon(self, delivery: Delivery) -> None:
        self._settle(delivery, lambda r, m: r.abandon_message(m))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._settle(delivery, lambda r, m: r.dead_letter_message(m, reason=reason[:MAX_REASON]))

    def _settle(self, delivery: Delivery, op: Callable[[Any, Any], Any]) -> Any:
        """Settle ``delivery`` with ``op``; returns its Service Bus message."""
        from azure.core.exceptions import AzureError
        from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

        token = delivery.lease_token
        with self._cond:
            lease = self._held.get(token)
            if lease is None or lease.ends_at <= time.monotonic():
                raise LeaseLost(
                    f"lease on message {delivery.message_id} in {delivery.queue} is no longer held"
                )
            del self._held[token]  # ours alone now: the keeper will not abandon it
        try:
            with lease.guard:
                op(lease.receiver, lease.message)
        except (MessageLockLostError, MessageAlreadySettled) as exc:
            with self._cond:
                self._held.pop(token, None)
            raise LeaseLost(f"lease on {delivery.message_id} in {delivery.queue} was lost") from exc
        except AzureError as exc:
            with self._cond:
                self._held.setdefault(token, lease)  # still held: the caller may retry
            raise servicebus_error(f"could not settle message {delivery.message_id}", exc) from exc
        return lease.message

    # -- the lease keeper: ends leases on time, keeps locks alive while leases last

    def _start_keeper(self) -> None:
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, name="servicebus-leases", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        while True:
            with self._cond:
                while not self._held and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                now = time.monotonic()
                ended = [(t, lease) for t, lease in self._held.items() if lease.ends_at <= now]
                for token, _ in ended:
                    del self._held[token]
                expiring = [lease for lease in self._held.values() if _lock_runs_out(lease, now)]
            for _, lease in ended:
                self._quietly(lease, lambda r, m: r.abandon_message(m))
            for lease in expiring:
                self._quietly(lease, lambda r, m: r.renew_message_lock(m))
            with self._cond:
                self._cond.wait(KEEPER_TICK_S)

    @staticmethod
    def _quietly(lease: _Lease, op: Callable[[Any, Any], Any]) -> None:
        # Best effort: if this fails the lock simply expires on the server and the message is
        # redelivered after the queue's lock duration instead of at once.
        with contextlib.suppress(Exception), lease.guard:
            op(lease.receiver, lease.message)

    # -- queues

    def _entity(
        self, cache: dict[str, tuple[Any, threading.Lock]], name: str, make: Callable[[], Any]
    ) -> Any:
        with self._entities:
            if name not in cache:
                self._admin.ensure_queue(name)
                cache[name] = (make(), threading.Lock())
            return cache[name]

    def depth(self, queue: str) -> int:
        return self._admin.depth(queue)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        from azure.servicebus import ServiceBusSubQueue
        from azure.servicebus.exceptions import MessagingEntityNotFoundError

        out: list[DeadLetter] = []
        for lane in LANES:
            if len(out) >= limit:
                break
            sub = self._client.get_queue_receiver(
                lane_queue(queue, lane), sub_queue=ServiceBusSubQueue.DEAD_LETTER
            )
            try:
                with sub:
                    peeked = sub.peek_messages(max_message_count=limit - len(out))
            except MessagingEntityNotFoundError:
                continue
            names = [claim_name(m.application_properties) for m in peeked]
            bodies = self.claims.resolve(names, [received_body(m) for m in peeked])
            out += [to_dead_letter(m, queue, b, lane) for m, b in zip(peeked, bodies, strict=True)]
        return out

    def purge_dead_letters(self, queue: str, message_ids: Sequence[str]) -> int:
        wanted = set(message_ids)
        return sum(purge_dead(self._client, queue, lane, wanted) for lane in LANES) if wanted else 0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._keeper is not None:
            self._keeper.join(timeout=5)
        with self._entities:
            handlers = [h for h, _ in (*self._senders.values(), *self._receivers.values())]
            self._senders.clear()
            self._receivers.clear()
        closables: list[Any] = [*handlers, self._client, self._admin, self._credential, self.claims.store]
        for closable in closables:
            if closable is not None:
                with contextlib.suppress(Exception):  # best effort: the broker is done
                    closable.close()


def _added(batch: Any, message: Any) -> bool:
    """Add ``message`` to ``batch``; False when it does not fit."""
    from azure.servicebus.exceptions import MessageSizeExceededError

    try:
        batch.add_message(message)
    except MessageSizeExceededError:
        return False
    return True


def _lock_runs_out(lease: _Lease, now: float) -> bool:
    """True when the server's lock ends within the margin while our lease goes on past it."""
    locked_until = lease.message.locked_until_utc
    if locked_until is None:
        return False
    left = (locked_until - datetime.now(UTC)).total_seconds()
    return left < RENEW_MARGIN_S and lease.ends_at - now > left
