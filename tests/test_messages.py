"""Wire messages: round trips, and bad bodies rejected with MessageError (never guessed at)."""

from __future__ import annotations

import json

import pytest

from nearline.messages import MessageError, RequestMessage, ResultMessage


def test_request_round_trip_keeps_every_field() -> None:
    msg = RequestMessage("j1", "topics", {"text": "héllo"}, 1.5, deadline=9.0, priority="high", attempt=2)
    assert RequestMessage.from_json(msg.to_json()) == msg
    assert set(json.loads(msg.to_json())) == {
        "id",
        "pipeline",
        "input",
        "enqueued_at",
        "deadline",
        "priority",
        "attempt",
    }


def test_request_expiry_uses_the_deadline() -> None:
    msg = RequestMessage("j1", "p", None, 0.0, deadline=10.0)
    assert msg.expired(10.0) and not msg.expired(9.99)
    assert not RequestMessage("j2", "p", None, 0.0).expired(1e12)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"pipeline": "p", "enqueued_at": 1}',
        b'{"id": "", "pipeline": "p", "enqueued_at": 1}',
        b'{"id": "a", "pipeline": "p", "enqueued_at": "x"}',
        b'{"id": "a", "pipeline": "p", "enqueued_at": 1, "priority": "urgent"}',
        b"\xff\xfe",
    ],
)
def test_bad_request_bodies_are_message_errors(body: bytes) -> None:
    with pytest.raises(MessageError):
        RequestMessage.from_json(body)


def test_result_completed_and_failed_shapes() -> None:
    ok = ResultMessage.completed("j", {"label": 3}, worker="w", timings={"model": 1.5})
    doc = json.loads(ok.to_json())
    assert doc["output"] == {"label": 3} and "error" not in doc
    assert ResultMessage.from_json(ok.to_json()) == ok
    bad = ResultMessage.failed("j", "ModelError", "boom")
    doc = json.loads(bad.to_json())
    assert doc["error"] == {"code": "ModelError", "message": "boom"} and "output" not in doc
    assert ResultMessage.from_json(bad.to_json()).error == {"code": "ModelError", "message": "boom"}


@pytest.mark.parametrize(
    "body", [b'{"id": "j", "status": "Done"}', b'{"id": "j", "status": "Failed"}', b'{"status": "Completed"}']
)
def test_bad_result_bodies_are_message_errors(body: bytes) -> None:
    with pytest.raises(MessageError):
        ResultMessage.from_json(body)
