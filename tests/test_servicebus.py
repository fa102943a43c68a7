"""The Service Bus broker: wire mapping offline, and live checks against a real namespace.

The mapping tests build real ``azure-servicebus`` message objects (no namespace needed). The live
tests run only when ``NEARLINE_SERVICEBUS_NAMESPACE`` (identity: ``az login`` or workload
identity, with *Azure Service Bus Data Owner* on the namespace) or
``NEARLINE_SERVICEBUS_CONNECTION`` (a connection string with Manage rights) is set, and are
reported as skipped otherwise: no Service Bus is reachable from this project's machines. The
broker contract suite (tests/test_brokers.py) runs on Service Bus under the same condition.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus._pyamqp.message import Header, Message, Properties  # to build received messages

from nearline.brokers import open_broker
from nearline.brokers.servicebus import ServiceBusBroker
from nearline.brokers.servicebus_wire import (
    PROBE_S,
    expired,
    lane_queue,
    outgoing,
    parse_url,
    to_dead_letter,
    to_delivery,
)
from nearline.constants import REQUEST_QUEUE, RESPONSE_QUEUE
from nearline.errors import ConfigError

CONNECTION = "Endpoint=sb://nl-test.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=c2VjcmV0"


def received(
    delivery_count: int, *, body: list[bytes], message_id: str = "job-1", **app_properties: Any
) -> ServiceBusReceivedMessage:
    """A received message as the SDK builds it from an AMQP transfer."""
    enqueued = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    amqp = Message(
        header=Header(delivery_count=delivery_count),
        properties=Properties(message_id=message_id.encode(), correlation_id=message_id.encode()),
        data=body,
        message_annotations={b"x-opt-enqueued-time": int(enqueued.timestamp() * 1000)},
        application_properties={k.encode(): v for k, v in app_properties.items()},
    )
    return ServiceBusReceivedMessage(amqp, receiver=None, lock_token=uuid.UUID(int=7))


# --- URLs --------------------------------------------------------------------------------


def test_namespace_urls_use_identity_and_take_options() -> None:
    t = parse_url("servicebus://nl-prod.servicebus.windows.net?lanes=normal,high&probe_ms=20")
    assert (t.namespace, t.connection_string, t.lanes, t.probe_s) == (
        "nl-prod.servicebus.windows.net",
        None,
        ("high", "normal"),
        0.02,
    )
    assert parse_url("servicebus://nl-prod").namespace == "nl-prod.servicebus.windows.net"
    assert parse_url("servicebus://nl-prod").lanes == ("high", "normal", "low")
    assert parse_url("servicebus://nl?create_queues=1").create_queues
    assert parse_url("servicebus://nl").probe_s == PROBE_S


def test_connection_strings_keep_the_key_out_of_the_url() -> None:
    t = parse_url(CONNECTION)
    assert (t.namespace, t.connection_string, t.url) == (
        "nl-test.servicebus.windows.net",
        CONNECTION,
        "servicebus://nl-test.servicebus.windows.net",
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("servicebus://", "expected servicebus://"),
        ("sb://nl.servicebus.windows.net", "expected servicebus://"),
        ("servicebus://nl?lane=high", "unknown option"),
        ("servicebus://nl?lanes=urgent", "lanes must be"),
        ("servicebus://nl?probe_ms=fast", "probe_ms"),
    ],
)
def test_bad_urls_are_config_errors(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_url(url)


def test_open_broker_builds_the_broker_without_touching_the_network() -> None:
    for url, expected in [
        ("servicebus://nl-prod.servicebus.windows.net", "servicebus://nl-prod.servicebus.windows.net"),
        (CONNECTION, "servicebus://nl-test.servicebus.windows.net"),
    ]:
        broker = open_broker(url)
        try:
            assert isinstance(broker, ServiceBusBroker)
            assert broker.url == expected and "SharedAccessKey" not in broker.url
        finally:
            broker.close()


def test_sends_that_cannot_go_anywhere_fail_before_the_network() -> None:
    broker = ServiceBusBroker(CONNECTION)
    try:
        with pytest.raises(ValueError, match="lane"):
            broker.send(REQUEST_QUEUE, b"{}", message_id="m", lane="urgent")
        broker.send(REQUEST_QUEUE, b"{}", message_id="m", ttl_s=-1.0)  # already expired: dropped
        assert broker._senders == {}
    finally:
        broker.close()


# --- lanes and messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lane", "queue"),
    [("high", "nearline-requests-high"), ("normal", "nearline-requests"), ("low", "nearline-requests-low")],
)
def test_lanes_are_queues(lane: str, queue: str) -> None:
    assert lane_queue(REQUEST_QUEUE, lane) == queue


def test_an_unknown_lane_is_refused() -> None:
    with pytest.raises(ValueError, match="lane"):
        lane_queue(REQUEST_QUEUE, "urgent")


def test_a_request_message_carries_the_ids_reply_to_lane_and_ttl() -> None:
    body = b'{"id":"job-1","pipeline":"digits"}'
    kwargs = outgoing(REQUEST_QUEUE, body, message_id="job-1", lane="high", ttl_s=42.5, now=1000.0)
    msg = ServiceBusMessage(**kwargs)  # the SDK accepts exactly these keywords
    assert (msg.message_id, msg.correlation_id, msg.reply_to) == ("job-1", "job-1", RESPONSE_QUEUE)
    assert msg.time_to_live == timedelta(seconds=43)  # whole seconds, rounded up
    assert msg.content_type == "application/json"
    assert msg.application_properties == {"lane": "high", "expires_at": 1042.5}
    assert b"".join(msg.body) == body


def test_a_result_message_has_no_reply_to_and_no_ttl_unless_asked() -> None:
    msg = ServiceBusMessage(**outgoing(RESPONSE_QUEUE, b"{}", message_id="job-1", lane="normal", ttl_s=None))
    assert (msg.message_id, msg.correlation_id, msg.reply_to, msg.time_to_live) == (
        "job-1",
        "job-1",
        None,
        None,
    )


@pytest.mark.parametrize(("ttl_s", "server_s"), [(0.2, 1), (0.999, 1), (1.0, 1), (59.01, 60)])
def test_sub_second_ttls_are_not_lost_to_the_sdks_whole_seconds(ttl_s: float, server_s: int) -> None:
    msg = ServiceBusMessage(**outgoing("q", b"x", message_id="m", lane="normal", ttl_s=ttl_s))
    assert msg.time_to_live == timedelta(seconds=server_s)


def test_receivers_check_the_exact_expiry() -> None:
    sent = outgoing("q", b"x", message_id="m", lane="normal", ttl_s=0.2, now=1000.0)["application_properties"]
    msg = received(0, body=[b"x"], expires_at=sent["expires_at"])
    assert not expired(msg, now=1000.1)
    assert expired(msg, now=1000.2)
    assert not expired(received(0, body=[b"x"]), now=1e12)  # no TTL, never expired


def test_other_queues_get_no_content_type() -> None:
    assert "content_type" not in outgoing("test-q", bytes(range(256)), message_id="m", lane="low", ttl_s=None)


@pytest.mark.parametrize(("header", "ours"), [(0, 1), (1, 2), (4, 5)])
def test_delivery_count_counts_this_delivery(header: int, ours: int) -> None:
    # Service Bus puts prior attempts in the AMQP header; our contract counts the first delivery as 1.
    d = to_delivery(received(header, body=[b"{}"]), REQUEST_QUEUE, "normal")
    assert d.delivery_count == ours


def test_a_received_message_becomes_a_delivery() -> None:
    msg = received(0, body=[b'{"a":', b"1}"], message_id="job-9")
    d = to_delivery(msg, REQUEST_QUEUE, "low")
    assert (d.queue, d.message_id, d.lane) == (REQUEST_QUEUE, "job-9", "low")
    assert d.body == b'{"a":1}' and type(d.body) is bytes
    assert d.lease_token == str(msg.lock_token)
    assert d.enqueued_at == datetime(2026, 11, 21, 12, 0, tzinfo=UTC).timestamp()


def test_a_dead_lettered_message_keeps_its_reason() -> None:
    msg = received(1, body=[b"x"], DeadLetterReason=b"PoisonMessage: delivered 5 times")
    dead = to_dead_letter(msg, REQUEST_QUEUE)
    assert (dead.message_id, dead.body, dead.reason, dead.delivery_count) == (
        "job-1",
        b"x",
        "PoisonMessage: delivered 5 times",
        2,
    )


# --- live, against a real namespace -----------------------------------------------------------


def servicebus_url() -> str | None:
    if os.environ.get("NEARLINE_SERVICEBUS_CONNECTION"):
        return os.environ["NEARLINE_SERVICEBUS_CONNECTION"]
    namespace = os.environ.get("NEARLINE_SERVICEBUS_NAMESPACE")
    return f"servicebus://{namespace}" if namespace else None


@pytest.fixture
def live() -> Iterator[ServiceBusBroker]:
    url = servicebus_url()
    if url is None:
        pytest.skip(
            "no Service Bus namespace: set NEARLINE_SERVICEBUS_NAMESPACE or NEARLINE_SERVICEBUS_CONNECTION"
        )
    broker = ServiceBusBroker(url, create_queues=True, idle_delete_s=300)
    try:
        yield broker
    finally:
        broker.close()


@pytest.mark.slow
def test_live_request_properties_lanes_and_first_delivery(live: ServiceBusBroker) -> None:
    queue = f"test-{uuid.uuid4().hex[:12]}"
    live.send(queue, json.dumps({"n": 1}).encode(), message_id="m-high", lane="high", ttl_s=60)
    live.send(queue, b"{}", message_id="m-normal")
    got = live.receive(queue, 10, wait_s=5)
    assert [(d.message_id, d.lane, d.delivery_count) for d in got] == [
        ("m-high", "high", 1),
        ("m-normal", "normal", 1),
    ]
    for d in got:
        live.complete(d)


@pytest.mark.slow
def test_live_a_short_lease_is_redelivered_with_the_next_count(live: ServiceBusBroker) -> None:
    queue = f"test-{uuid.uuid4().hex[:12]}"
    live.send(queue, b"x", message_id="m")
    first = live.receive(queue, 1, wait_s=5, lease_s=0.3)
    start = time.monotonic()
    again = live.receive(queue, 1, wait_s=5, lease_s=30)
    assert time.monotonic() - start >= 0.2
    assert [(d.message_id, d.delivery_count) for d in first + again] == [("m", 1), ("m", 2)]
    live.complete(again[0])
