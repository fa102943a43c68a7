"""Service Bus wire mapping: URLs, lanes → queues, our messages ↔ Service Bus messages.

Pure functions of plain values and of objects with the attributes of ``azure-servicebus``'s
received messages, so they are tested without a namespace; :mod:`nearline.brokers.servicebus`
is the broker that uses them.
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
from nearline.errors import ConfigError

#: Per-lane wait while a receive polls the lanes in priority order: an empty lane costs this much
#: per round, so keep it near a network round trip (the default suits a worker in the namespace's
#: region).
PROBE_S = 0.03
NAMESPACE_SUFFIX = ".servicebus.windows.net"
_OPTIONS = {"lanes", "probe_ms", "create_queues"}


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
    queue: str, body: bytes, *, message_id: str, lane: str, ttl_s: float | None, now: float | None = None
) -> dict[str, Any]:
    """Keyword arguments of the ``ServiceBusMessage`` for one send (docs/api.md, Wire messages: properties).

    A TTL goes to Service Bus rounded *up* to whole seconds (the SDK truncates it to seconds, which
    would turn 0.5 s into "no TTL") and, exactly, as the ``expires_at`` application property
    (epoch seconds) that receivers check: see :func:`expired`.
    """
    properties: dict[str, Any] = {"lane": lane}
    kwargs: dict[str, Any] = {
        "body": body,
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
    properties = message.application_properties or {}
    value = properties.get(b"expires_at", properties.get("expires_at"))
    return isinstance(value, int | float) and value <= now


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


def to_delivery(message: Any, queue: str, lane: str) -> Delivery:
    """A received message as a :class:`Delivery` of base queue ``queue``."""
    enqueued = message.enqueued_time_utc
    return Delivery(
        queue=queue,
        message_id=str(message.message_id or ""),
        body=received_body(message),
        lane=lane,
        delivery_count=delivery_count(message),
        lease_token=str(message.lock_token),
        enqueued_at=enqueued.timestamp() if enqueued is not None else time.time(),
    )


def to_dead_letter(message: Any, queue: str) -> DeadLetter:
    """A peeked dead-lettered message as a :class:`DeadLetter` of base queue ``queue``."""
    return DeadLetter(
        queue=queue,
        message_id=str(message.message_id or ""),
        body=received_body(message),
        reason=str(message.dead_letter_reason or ""),
        delivery_count=delivery_count(message),
    )
