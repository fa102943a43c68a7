"""The Service Bus broker: wire mapping offline, and live checks against a real namespace.

The mapping tests build real ``azure-servicebus`` message objects (no namespace needed); the error
tests put a stand-in for the SDK's client under the broker that raises the SDK's own exceptions,
to check which ones the broker reports as transient (``BrokerError``: the worker retries them). The live
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
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch, ServiceBusReceivedMessage
from azure.servicebus import exceptions as sb
from azure.servicebus._pyamqp.message import Header, Message, Properties  # to build received messages
from azurite import azurite_fixture  # noqa: F401 - registers the fixture (the live claim check)

from nearline.brokers import open_broker
from nearline.brokers.base import LeaseLost
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
from nearline.errors import BrokerError, ConfigError, PayloadTooLarge
from nearline.messages import RequestMessage, ResultMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines
from nearline.worker import Worker, WorkerConfig
from nearline.worker.outage import Backoff

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


# --- errors: transient ones are BrokerError (retried), the rest are not ----------------------


#: The queues the stubs stand for (one lane: the broker is opened with ``lanes=["normal"]``).
REQUEST_NAME = lane_queue(REQUEST_QUEUE, "normal")
RESULT_NAME = lane_queue(RESPONSE_QUEUE, "normal")
WORKER_PIPELINES = Path(__file__).parent / "data" / "worker_pipelines.yaml"


class StubSender:
    """The SDK's sender, failing with ``failures`` (in turn) before it sends."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.sent: list[ServiceBusMessage] = []

    def create_message_batch(self) -> ServiceBusMessageBatch:
        return ServiceBusMessageBatch(max_size_in_bytes=256 * 1024)

    def send_messages(self, batch: ServiceBusMessageBatch) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent += batch._messages


class StubReceiver:
    """The SDK's receiver: hands out ``messages`` once; settling fails with ``failures`` first."""

    def __init__(self, messages: list[ServiceBusReceivedMessage], failures: list[Exception]) -> None:
        self.messages, self.failures = messages, failures
        self.receive_failures: list[Exception] = []
        self.completed: list[ServiceBusReceivedMessage] = []

    def __enter__(self) -> StubReceiver:
        return self

    def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Any]:
        if self.receive_failures:
            raise self.receive_failures.pop(0)
        out, self.messages = self.messages[:max_message_count], self.messages[max_message_count:]
        return out

    def complete_message(self, message: ServiceBusReceivedMessage) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.completed.append(message)


class StubClient:
    """``ServiceBusClient``: one stub sender and one stub receiver per queue name."""

    def __init__(self) -> None:
        self.senders: dict[str, StubSender] = {}
        self.receivers: dict[str, StubReceiver] = {}

    def sender(self, name: str) -> StubSender:
        return self.senders.setdefault(name, StubSender([]))

    def receiver(self, name: str) -> StubReceiver:
        return self.receivers.setdefault(name, StubReceiver([], []))

    def get_queue_sender(self, name: str) -> StubSender:
        return self.sender(name)

    def get_queue_receiver(self, name: str, **_options: Any) -> StubReceiver:
        return self.receiver(name)


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ServiceBusBroker, StubClient]]:
    client = StubClient()
    monkeypatch.setattr(
        "azure.servicebus.ServiceBusClient.from_connection_string", staticmethod(lambda _: client)
    )
    broker = ServiceBusBroker(CONNECTION, lanes=["normal"])
    try:
        yield broker, client
    finally:
        broker.close()


#: What the SDK raises for failures that pass; its own ``retryable`` says so for most of them,
#: and a full queue (quota) drains, a token endpoint that failed answers the next time.
TRANSIENT = [
    sb.ServiceBusConnectionError(message="connection lost"),
    sb.ServiceBusCommunicationError(message="cannot reach the namespace"),
    sb.OperationTimeoutError(message="operation timed out"),
    sb.ServiceBusServerBusyError(message="server busy"),
    sb.ServiceBusQuotaExceededError(message="queue full"),
    sb.MessagingEntityDisabledError(message="queue disabled"),
    sb.ServiceBusAuthenticationError(message="token expired"),
    sb.ServiceBusError("something else went wrong"),
    ServiceRequestError("token endpoint unreachable"),
    ClientAuthenticationError("token request failed"),
]


@pytest.mark.parametrize("error", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_failures_are_broker_errors(
    stubbed: tuple[ServiceBusBroker, StubClient], error: Exception
) -> None:
    broker, client = stubbed
    client.sender(RESULT_NAME).failures.append(error)
    with pytest.raises(BrokerError) as sent:
        broker.send(RESPONSE_QUEUE, b"{}", message_id="r1")
    client.receiver(REQUEST_NAME).receive_failures.append(error)
    with pytest.raises(BrokerError) as received_:
        broker.receive(REQUEST_QUEUE, 1, 0.0)
    for raised in (sent.value, received_.value):
        assert not isinstance(raised, LeaseLost) and str(error) in raised.message
    broker.send(RESPONSE_QUEUE, b"{}", message_id="r1")  # and the next try goes through
    assert len(client.sender(RESULT_NAME).sent) == 1


def test_a_settle_that_failed_transiently_keeps_the_lease_for_the_retry(
    stubbed: tuple[ServiceBusBroker, StubClient],
) -> None:
    broker, client = stubbed
    receiver = client.receiver(REQUEST_NAME)
    receiver.messages.append(received(0, body=[b"{}"], message_id="job-1"))
    receiver.failures.append(sb.ServiceBusConnectionError(message="connection lost"))
    (delivery,) = broker.receive(REQUEST_QUEUE, 1, 0.0)
    with pytest.raises(BrokerError) as first:
        broker.complete(delivery)
    assert not isinstance(first.value, LeaseLost)
    broker.complete(delivery)
    assert [m.message_id for m in receiver.completed] == ["job-1"]


def test_failures_that_do_not_pass_are_not_broker_errors(
    stubbed: tuple[ServiceBusBroker, StubClient],
) -> None:
    broker, client = stubbed
    client.sender(RESULT_NAME).failures.append(sb.MessageSizeExceededError(message="over 256 KB"))
    with pytest.raises(PayloadTooLarge, match="size limit"):
        broker.send(RESPONSE_QUEUE, b"{}", message_id="r1")
    client.receiver(REQUEST_NAME).receive_failures.append(sb.MessagingEntityNotFoundError(message="no queue"))
    with pytest.raises(ConfigError, match="no such queue"):
        broker.receive(REQUEST_QUEUE, 1, 0.0)


def test_a_worker_rides_out_transient_service_bus_failures(
    stubbed: tuple[ServiceBusBroker, StubClient], tmp_path: Path
) -> None:
    broker, client = stubbed
    request = RequestMessage("job-1", "record", {"n": 1}, time.time())
    client.receiver(REQUEST_NAME).messages.append(received(0, body=[request.to_json()], message_id="job-1"))
    client.sender(RESULT_NAME).failures += [
        sb.ServiceBusServerBusyError(message="server busy"),
        sb.OperationTimeoutError(message="operation timed out"),
    ]
    client.receiver(REQUEST_NAME).failures.append(sb.ServiceBusConnectionError(message="connection lost"))
    runner = PipelineRunner(load_pipelines(WORKER_PIPELINES), ModelRepository(tmp_path))
    worker = Worker(
        broker, runner, config=WorkerConfig(max_batch=4), backoff=Backoff(first_s=0.01, max_s=0.05)
    )
    worker.process(broker.receive(REQUEST_QUEUE, 4, 0.0))
    (sent,) = client.sender(RESULT_NAME).sent
    assert ResultMessage.from_json(b"".join(sent.body)).output == {"echo": {"n": 1}}
    assert [m.message_id for m in client.receiver(REQUEST_NAME).completed] == ["job-1"]
    assert not worker.outage.down


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


@pytest.mark.slow
def test_live_a_600_kb_body_goes_through_the_claim_check(live: ServiceBusBroker, request: Any) -> None:
    from nearline.claim_check import ClaimCheck, OutOfLine
    from nearline.constants import BODIES_CONTAINER

    azurite = request.getfixturevalue("azurite")  # tests/azurite.py; started only when live runs
    live.claims = OutOfLine(ClaimCheck(), azurite.container(BODIES_CONTAINER))
    queue = f"test-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"text": "x" * 600_000}).encode()
    live.send(queue, body, message_id="big")
    [got] = live.receive(queue, 1, wait_s=5)
    assert got.body == body
    live.complete(got)
    assert azurite.names(BODIES_CONTAINER) == []


# --- dead letters: purge by id (nearline dlq purge/redrive) -----------------------------------


class StubDeadLetterReceiver:
    """A lane's ``$deadletterqueue`` receiver: what is not completed comes round again at once."""

    def __init__(self, messages: list[ServiceBusReceivedMessage]) -> None:
        self.queue = list(messages)
        self.completed: list[str] = []
        self.abandoned: list[str] = []
        self.opened_with: dict[str, Any] = {}

    def __enter__(self) -> StubDeadLetterReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Any]:
        out, self.queue = self.queue[:max_message_count], self.queue[max_message_count:]
        return out

    def complete_message(self, message: ServiceBusReceivedMessage) -> None:
        self.completed.append(str(message.message_id))

    def abandon_message(self, message: ServiceBusReceivedMessage) -> None:
        self.abandoned.append(str(message.message_id))
        self.queue.append(message)


def test_purging_dead_letters_completes_those_named_and_gives_the_others_back_once() -> None:
    from azure.servicebus import ServiceBusSubQueue

    from nearline.brokers.servicebus_wire import purge_dead

    dead = StubDeadLetterReceiver([received(1, body=[b"x"], message_id=f"job-{n}") for n in range(5)])

    class Client:
        def get_queue_receiver(self, name: str, **options: Any) -> StubDeadLetterReceiver:
            dead.opened_with = {"name": name, **options}
            return dead

    assert purge_dead(Client(), REQUEST_QUEUE, "high", {"job-1", "job-3", "job-9"}, wait_s=0) == 2
    assert dead.opened_with == {
        "name": lane_queue(REQUEST_QUEUE, "high"),
        "sub_queue": ServiceBusSubQueue.DEAD_LETTER,
    }
    assert dead.completed == ["job-1", "job-3"]
    # job-9 is not there: every other message was looked at once and given back once.
    assert sorted(dead.abandoned) == ["job-0", "job-2", "job-4"]


def test_a_dead_letter_keeps_the_lane_it_was_listed_under() -> None:
    dead = to_dead_letter(received(3, body=[b"x"]), REQUEST_QUEUE, lane="low")
    assert (dead.lane, dead.dead_at) == ("low", None)
