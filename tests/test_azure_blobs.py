"""The claim check on Azure: large bodies through Blob Storage (a real Azurite), both directions.

The Service Bus calls stay at the level this machine can reach (tests/test_servicebus.py: the
SDK's own message and batch objects under a stand-in client, whose batches hold Standard's
256 KiB); the bodies go out of line into Azurite and come back through the claim-check code the
Service Bus broker uses (:class:`nearline.claim_check.OutOfLine`): the ``enqueue`` activity's
send, a worker's receive, result and completion, and the response function's read. Against a
live namespace, ``tests/test_servicebus.py``'s live tests run the same broker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.functions.servicebus import ServiceBusMessage as HostMessage
from azurite import Azurite, azurite_fixture  # noqa: F401 - registers the fixture
from durable_history import FakeDurableClient, run
from test_servicebus import CONNECTION, StubClient, received

from nearline.azure_blobs import AzureBlobs, open_container
from nearline.brokers.servicebus import ServiceBusBroker
from nearline.brokers.servicebus_wire import CLAIM_PROPERTY, claim_name, lane_queue
from nearline.claim_check import ClaimCheck, OutOfLine
from nearline.constants import (
    BODIES_CONTAINER,
    MAX_TIMEOUT_S,
    REQUEST_QUEUE,
    RESPONSE_QUEUE,
    TOMBSTONES_CONTAINER,
)
from nearline.errors import BrokerError, ConfigError, PayloadTooLarge
from nearline.messages import RequestMessage, ResultMessage
from nearline.models.repository import ModelRepository
from nearline.pipelines.runner import PipelineRunner
from nearline.pipelines.spec import load_pipelines
from nearline.worker import Worker, WorkerConfig
from orchestrations import responses, scoring
from orchestrations.azure_status import RESULT_EVENT, SCORING_ORCHESTRATOR

REQUESTS = lane_queue(REQUEST_QUEUE, "normal")
RESULTS = lane_queue(RESPONSE_QUEUE, "normal")
WORKER_PIPELINES = Path(__file__).parent / "data" / "worker_pipelines.yaml"
BIG = {"text": "x" * 600_000}  # a 600 KB input; the echo pipeline's result is as large


@pytest.fixture
def bodies(azurite: Azurite) -> Iterator[AzureBlobs]:
    """The claim check's container, empty."""
    store = azurite.container(BODIES_CONTAINER)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def broker(
    azurite: Azurite, bodies: AzureBlobs, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServiceBusBroker, StubClient]]:
    """The Service Bus broker over the SDK stand-in, its claim check configured as a deployment
    configures it: ``NEARLINE_BLOB_STORE`` naming the (Azurite) account."""
    client = StubClient()
    monkeypatch.setattr(
        "azure.servicebus.ServiceBusClient.from_connection_string", staticmethod(lambda _: client)
    )
    monkeypatch.setenv("NEARLINE_BLOB_STORE", azurite.connection_string)
    b = ServiceBusBroker(CONNECTION, lanes=["normal"])
    try:
        yield b, client
    finally:
        b.close()


def deliver_sent(client: StubClient, sent_to: str, receive_from: str) -> None:
    """Hand what was sent to ``sent_to`` to the receiver of ``receive_from``, as Service Bus would."""
    for msg in client.sender(sent_to).sent:
        client.receiver(receive_from).messages.append(
            received(
                0,
                body=[b"".join(msg.body)],
                message_id=str(msg.message_id),
                **dict(msg.application_properties or {}),
            )
        )


def test_a_600_kb_input_and_result_go_out_of_line_and_come_back_with_no_blob_left(
    azurite: Azurite,
    broker: tuple[ServiceBusBroker, StubClient],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    b, client = broker
    monkeypatch.setattr(scoring, "_broker", b)
    job = {
        "id": "a" * 32,
        "pipeline": "record",
        "input": BIG,
        "deadline": time.time() + 60,
        "priority": "normal",
    }

    # The enqueue activity sends the request: the message names a blob, the blob holds the body.
    assert scoring.enqueue(job) == {"queued": True}
    (sent,) = client.sender(REQUESTS).sent
    assert b"".join(sent.body) == b"" and claim_name(sent.application_properties)
    (blob,) = azurite.names(BODIES_CONTAINER)
    assert blob == claim_name(sent.application_properties) and blob.startswith(f"{REQUESTS}/{job['id']}/")

    # A worker receives the original body, computes, publishes a 600 KB result, completes.
    deliver_sent(client, REQUESTS, REQUESTS)
    runner = PipelineRunner(load_pipelines(WORKER_PIPELINES), ModelRepository(tmp_path))
    worker = Worker(b, runner, config=WorkerConfig(max_batch=4))
    (delivery,) = b.receive(REQUEST_QUEUE, 4, 0.0)
    assert RequestMessage.from_json(delivery.body).input == BIG
    worker.process([delivery])
    assert [m.message_id for m in client.receiver(REQUESTS).completed] == [job["id"]]
    (result_msg,) = client.sender(RESULTS).sent
    result_blob = claim_name(result_msg.application_properties)
    assert azurite.names(BODIES_CONTAINER) == [result_blob]  # the request's blob went with it

    # The response function reads it back (as the host hands it over) and raises the event.
    host_msg = HostMessage(
        body=b"".join(result_msg.body),
        message_id=str(result_msg.message_id),
        application_properties=dict(result_msg.application_properties),
        user_properties={},
    )
    durable = FakeDurableClient()
    run(durable.start_new(SCORING_ORCHESTRATOR, job["id"], {"job": job}))
    outcome = run(
        responses.receive(host_msg.get_body(), host_msg.application_properties, durable, lambda: b.claims)
    )
    assert outcome == "delivered"
    [(instance, event, payload)] = durable.events
    assert (instance, event) == (job["id"], RESULT_EVENT)
    assert ResultMessage.from_json(json.dumps(payload)).output == {"echo": BIG}
    assert azurite.names(BODIES_CONTAINER) == []


def test_small_bodies_travel_inline_and_touch_no_store(
    azurite: Azurite, broker: tuple[ServiceBusBroker, StubClient]
) -> None:
    b, client = broker
    b.send(REQUEST_QUEUE, b'{"small": 1}', message_id="m1")
    (sent,) = client.sender(REQUESTS).sent
    assert b"".join(sent.body) == b'{"small": 1}' and claim_name(sent.application_properties) is None
    assert azurite.names(BODIES_CONTAINER) == []


def test_a_body_under_the_threshold_that_alone_does_not_fit_goes_out_of_line(
    azurite: Azurite, bodies: AzureBlobs, broker: tuple[ServiceBusBroker, StubClient]
) -> None:
    b, client = broker
    b.claims = OutOfLine(ClaimCheck(1024 * 1024), bodies)  # a threshold above the queue's limit
    b.send_many(RESPONSE_QUEUE, [("small", b"s"), ("big", b"b" * 300_000), ("after", b"a")])
    sent = {str(m.message_id): m for m in client.sender(RESULTS).sent}
    assert set(sent) == {"small", "big", "after"}
    assert [claim_name(sent[k].application_properties) is not None for k in ("small", "big", "after")] == [
        False,
        True,
        False,
    ]
    assert len(azurite.names(BODIES_CONTAINER)) == 1


def test_without_a_blob_store_a_large_body_is_refused_naming_the_setting(
    broker: tuple[ServiceBusBroker, StubClient],
) -> None:
    b, client = broker
    b.claims = OutOfLine(ClaimCheck(), None)
    with pytest.raises(PayloadTooLarge, match="NEARLINE_BLOB_STORE"):
        b.send(REQUEST_QUEUE, b"x" * 300_000, message_id="m1")
    assert client.sender(REQUESTS).sent == []


class Unreachable:
    """A blob store whose account does not answer (what the SDK's failures become)."""

    def put(self, key: str, body: bytes, ttl_s: float) -> None:
        raise BrokerError("blob store: could not store: connection refused")

    def get_many(self, keys: Any) -> list[bytes | None]:
        raise BrokerError("blob store: could not read: connection refused")

    def delete_many(self, keys: Any) -> None:
        raise BrokerError("blob store: could not delete: connection refused")

    def names(self, prefix: str) -> list[str]:
        raise BrokerError("blob store: could not list: connection refused")


def test_a_store_that_does_not_answer_gives_the_messages_back_never_an_empty_body(
    broker: tuple[ServiceBusBroker, StubClient],
) -> None:
    b, client = broker
    b.claims = OutOfLine(ClaimCheck(), Unreachable())
    client.receiver(REQUESTS).messages.append(received(0, body=[b""], message_id="m1", claim_check="x/m1/1"))
    abandoned: list[Any] = []
    client.receiver(REQUESTS).abandon_message = abandoned.append  # type: ignore[attr-defined]
    with pytest.raises(BrokerError, match="connection refused"):
        b.receive(REQUEST_QUEUE, 4, 0.0)
    assert [m.message_id for m in abandoned] == ["m1"]  # redelivered at once, the worker retries


def test_a_blob_that_is_gone_reads_as_an_empty_body(
    azurite: Azurite, broker: tuple[ServiceBusBroker, StubClient]
) -> None:
    b, client = broker
    client.receiver(REQUESTS).messages.append(
        received(0, body=[b""], message_id="m1", **{CLAIM_PROPERTY: f"{REQUESTS}/m1/deleted-by-hand"})
    )
    (delivery,) = b.receive(REQUEST_QUEUE, 4, 0.0)
    assert delivery.body == b""  # the worker dead-letters it as malformed: PoisonMessage


# --- the blob store itself, against Azurite --------------------------------------------------


def test_the_store_puts_reads_and_deletes_many_at_once(bodies: AzureBlobs) -> None:
    bodies.put("q/a/1", b"A" * 700_000, 60)
    bodies.put("q/b/1", b"B", 60)
    assert bodies.get_many(["q/a/1", "q/missing", "q/b/1"]) == [b"A" * 700_000, None, b"B"]
    bodies.delete_many(["q/a/1", "q/b/1", "q/missing"])  # a key already gone is no error
    assert bodies.get_many(["q/a/1", "q/b/1"]) == [None, None]


def test_a_missing_container_is_created_on_first_write(azurite: Azurite) -> None:
    store = open_container(azurite.connection_string, f"fresh-{int(time.time() * 1000)}")
    try:
        assert store.get_many(["k"]) == [None]
        store.put("k", b"v", 60)
        assert store.get_many(["k"]) == [b"v"]
    finally:
        store.close()


@pytest.mark.parametrize("setting", ["http://127.0.0.1:10000/devstoreaccount1", "account-name", ""])
def test_a_blob_store_setting_that_is_neither_a_url_nor_a_connection_string_is_refused(setting: str) -> None:
    with pytest.raises(ConfigError, match="blob store"):
        open_container(setting, BODIES_CONTAINER)


def test_the_documented_lifecycle_rule_covers_both_containers_and_outlives_a_message() -> None:
    """The rule in docs/azure.md's provisioning commands (Azurite has no management plane)."""
    doc = (Path(__file__).parent.parent / "docs" / "azure.md").read_text()
    policy = json.loads(doc.split("cat > lifecycle.json <<'JSON'\n", 1)[1].split("\nJSON\n", 1)[0])
    [rule] = policy["rules"]
    assert rule["enabled"] and rule["definition"]["filters"]["prefixMatch"] == [
        f"{BODIES_CONTAINER}/",
        f"{TOMBSTONES_CONTAINER}/",
    ]
    days = rule["definition"]["actions"]["baseBlob"]["delete"]["daysAfterCreationGreaterThan"]
    assert days * 86400 > MAX_TIMEOUT_S  # never a blob whose message can still be delivered
    assert "management-policy create" in doc and "--policy @lifecycle.json" in doc
