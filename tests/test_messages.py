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


def test_a_deep_input_encodes_without_recursing_per_level() -> None:
    """600 levels broke ``dataclasses.asdict`` (a RecursionError the API turned into a 503)."""
    deep: list[object] = []
    for _ in range(600):
        deep = [deep]
    msg = RequestMessage("j", "identity", {"v": deep}, 1.0)
    assert json.loads(msg.to_json())["input"] == {"v": deep}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_never_travel(value: float) -> None:
    """JSON has no NaN or Infinity: a message holding one is refused when sent and received."""
    with pytest.raises(ValueError, match="JSON compliant"):
        ResultMessage.completed("j", {"p": [value]}).to_json()
    with pytest.raises(ValueError, match="JSON compliant"):
        RequestMessage("j", "p", {"p": value}, 1.0).to_json()
    literal = json.dumps(value).encode()  # Python writes NaN, Infinity, -Infinity
    with pytest.raises(MessageError, match="not a finite number"):
        ResultMessage.from_json(b'{"id": "j", "status": "Completed", "output": {"p": [' + literal + b"]}}")
    with pytest.raises(MessageError, match="not a finite number"):
        RequestMessage.from_json(b'{"id": "j", "pipeline": "p", "enqueued_at": 1, "input": ' + literal + b"}")
