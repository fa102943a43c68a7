"""Service Bus wire mapping: URLs, lanes → queues, our messages ↔ Service Bus messages, errors.

Pure functions of plain values and of objects with the attributes of ``azure-servicebus``'s
received messages, so they are tested without a namespace; :mod:`nearline.brokers.servicebus`
is the broker that uses them.

A claim-checked message (:class:`nearline.claim_check.OutOfLine`) has an empty body and the
application property ``claim_check``: the name of the blob that holds its body.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nearline.brokers.base import DeadLetter, Delivery
from nearline.constants import DEFAULT_LANE, LANES, REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.errors import BrokerError, ConfigError, NearlineError, PayloadTooLarge

#: Per-lane wait while a receive polls the lanes in priority order: an empty lane costs this much
#: per round, so keep it near a network round trip (the default suits a worker in the namespace's
#: region).
PROBE_S = 0.03
NAMESPACE_SUFFIX = ".servicebus.windows.net"
_OPTIONS = {"lanes", "probe_ms", "create_queues"}
#: The application property naming a claim-checked message's blob.
CLAIM_PROPERTY = "claim_check"


@dataclass(frozen=True)
class Target:
    """Where a broker URL points and how to receive there."""

    namespace: str
    connection_string: str | None
    lanes: tuple[str, ...] = LANES
    probe_s: float = PROBE_S
    create_queues: bool = False

    @property
    def url(self) -> str:
        """The URL without credentials."""
        return f"servicebus://{self.namespace}"


def parse_url(url: str) -> Target:
    """Parse a ``servicebus://`` URL or a connection string; raises :class:`ConfigError`."""
    if url.startswith("Endpoint=sb://"):
        fields = dict(part.split("=", 1) for part in url.split(";") if "=" in part)
        host = urlsplit(fields["Endpoint"]).hostname
        if not host:
            raise ConfigError("Service Bus connection string: Endpoint has no host")
        return Target(namespace=host, connection_string=url)
    parts = urlsplit(url)
    if parts.scheme != "servicebus" or not parts.hostname:
        raise ConfigError(f"broker URL {url!r}: expected servicebus://<namespace>{NAMESPACE_SUFFIX}")
    host = parts.hostname if "." in parts.hostname else parts.hostname + NAMESPACE_SUFFIX
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigError(f"broker URL {url!r}: unknown option(s) {', '.join(unknown)}")
    lanes: tuple[str, ...] = LANES
    if "lanes" in options:
        wanted = {lane.strip() for lane in options["lanes"].split(",")}
        if not wanted or not wanted <= set(LANES):
            raise ConfigError(f"broker URL {url!r}: lanes must be a subset of {', '.join(LANES)}")
        lanes = tuple(lane for lane in LANES if lane in wanted)
    try:
        probe_s = float(options.get("probe_ms", PROBE_S * 1000)) / 1000
    except ValueError:
        raise ConfigError(f"broker URL {url!r}: probe_ms must be a number") from None
    create = options.get("create_queues", "0").lower() in ("1", "true", "yes")
    return Target(host, None, lanes, max(probe_s, 0.001), create)


def lane_queue(queue: str, lane: str) -> str:
    """The Service Bus queue of ``queue``'s ``lane``: the base name for normal, else a suffix."""
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}; expected one of {LANES}")
    return queue if lane == DEFAULT_LANE else f"{queue}-{lane}"


def outgoing(
    queue: str,
    body: bytes,
    *,
    message_id: str,
    lane: str,
    ttl_s: float | None,
    now: float | None = None,
    blob: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments of the ``ServiceBusMessage`` for one send (docs/api.md, Wire messages: properties).

    A TTL goes to Service Bus rounded *up* to whole seconds (the SDK truncates it to seconds, which
    would turn 0.5 s into "no TTL") and, exactly, as the ``expires_at`` application property
    (epoch seconds) that receivers check: see :func:`expired`. With ``blob`` (the claim check's
    name for ``body``), the message carries that name instead of the body.
    """
    properties: dict[str, Any] = {"lane": lane}
    if blob is not None:
        properties[CLAIM_PROPERTY] = blob
    kwargs: dict[str, Any] = {
        "body": b"" if blob is not None else body,
        "message_id": message_id,
        "correlation_id": message_id,
        "application_properties": properties,
    }
    if queue in (REQUEST_QUEUE, RESPONSE_QUEUE):
        kwargs["content_type"] = "application/json"
    if queue == REQUEST_QUEUE:
        kwargs["reply_to"] = RESPONSE_QUEUE
    if ttl_s is not None:
        kwargs["time_to_live"] = timedelta(seconds=max(math.ceil(ttl_s), 1))
        properties["expires_at"] = (time.time() if now is None else now) + ttl_s
    return kwargs


def expired(message: Any, now: float) -> bool:
    """True when a received message's ``expires_at`` (see :func:`outgoing`) has passed."""
    value = app_property(message.application_properties, "expires_at")
    return isinstance(value, int | float) and value <= now


def app_property(properties: Any, name: str) -> Any:
    """An application property, whose key (and text value) the SDK hands over as bytes and the
    Functions host as str."""
    properties = properties or {}
    value = properties.get(name.encode(), properties.get(name))
    return value.decode() if isinstance(value, bytes) else value


def claim_name(properties: Any) -> str | None:
    """The blob a claim-checked message's body is in (see :func:`outgoing`); None if it has its body."""
    value = app_property(properties, CLAIM_PROPERTY)
    return value if isinstance(value, str) and value else None


def delivery_count(message: Any) -> int:
    """Our delivery count (first delivery = 1) of a received message.

    Service Bus puts the number of *previous* attempts in the AMQP header (AMQP's definition);
    the .NET and Java SDKs add one, the Python SDK hands the header value through.
    """
    return int(message.delivery_count or 0) + 1


def received_body(message: Any) -> bytes:
    """A received message's body as bytes (data sections joined)."""
    body = message.body
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return b"".join(bytes(section) for section in body)


def to_delivery(message: Any, queue: str, lane: str, body: bytes | None = None) -> Delivery:
    """A received message as a :class:`Delivery` of base queue ``queue`` (with ``body``, when
    the claim check read it from elsewhere)."""
    enqueued = message.enqueued_time_utc
    return Delivery(
        queue=queue,
        message_id=str(message.message_id or ""),
        body=received_body(message) if body is None else body,
        lane=lane,
        delivery_count=delivery_count(message),
        lease_token=str(message.lock_token),
        enqueued_at=enqueued.timestamp() if enqueued is not None else time.time(),
    )


#: The most dead-lettered messages one purge looks at per lane queue (it holds their locks).
DEAD_SCAN = 10_000


def to_dead_letter(
    message: Any, queue: str, body: bytes | None = None, lane: str = DEFAULT_LANE
) -> DeadLetter:
    """A peeked dead-lettered message of lane ``lane`` as a :class:`DeadLetter` of base queue ``queue``."""
    return DeadLetter(
        queue=queue,
        message_id=str(message.message_id or ""),
        body=received_body(message) if body is None else body,
        reason=str(message.dead_letter_reason or ""),
        delivery_count=delivery_count(message),
        lane=lane,
    )


def purge_dead(client: Any, queue: str, lane: str, message_ids: set[str], wait_s: float = 1.0) -> int:
    """Complete the messages of ``queue``'s lane ``lane`` dead-letter sub-queue with these ids.

    Service Bus cannot delete a message by id: this receives the sub-queue (peek-lock), completes
    the matching messages and holds the others until the end, so that none comes round twice,
    then gives them back (abandon: only their count on the dead-letter sub-queue goes up).
    Looks at most at :data:`DEAD_SCAN` messages.
    """
    from azure.servicebus import ServiceBusSubQueue
    from azure.servicebus.exceptions import MessagingEntityNotFoundError

    done = 0
    held: list[Any] = []  # received, not wanted: given back at the end
    name = lane_queue(queue, lane)
    try:
        with client.get_queue_receiver(name, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as sub:
            while done < len(message_ids) and done + len(held) < DEAD_SCAN:
                got = sub.receive_messages(max_message_count=100, max_wait_time=wait_s)
                if not got:
                    break
                for m in got:
                    if str(m.message_id) in message_ids:
                        sub.complete_message(m)
                        done += 1
                    else:
                        held.append(m)
            for m in held:
                sub.abandon_message(m)
    except MessagingEntityNotFoundError:
        return done
    return done


def servicebus_error(doing: str, exc: Exception) -> NearlineError:
    """An ``azure-servicebus`` (or ``azure-core``) failure as nearline's error.

    Only two failures cannot pass by retrying: a message over the queue's size limit and a
    queue that does not exist. Everything else is a :class:`BrokerError`, including the SDK's
    non-retryable ``ServiceBusQuotaExceededError`` (a full queue drains) and credential errors
    (a token endpoint that failed once answers the next time).
    """
    from azure.servicebus.exceptions import MessageSizeExceededError, MessagingEntityNotFoundError

    if isinstance(exc, MessageSizeExceededError):
        return PayloadTooLarge(f"Service Bus: {doing}: a message is over the queue's size limit ({exc})")
    if isinstance(exc, MessagingEntityNotFoundError):
        return ConfigError(f"Service Bus: {doing}: no such queue; create it as docs/azure.md says ({exc})")
    return BrokerError(f"Service Bus: {doing}: {exc}")
