"""Signed events (`nearline.webhooks`), checked against the Standard Webhooks reference library
(`standardwebhooks` from PyPI), never against nearline's own signing code alone."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as ReferenceError

from nearline import webhooks
from nearline.errors import ConfigError
from nearline.jobs import JobRecord, JobStatus, status_document
from nearline.settings import WebhookSettings
from nearline.webhooks import WebhookSecret, WebhookVerificationError, verify

# The specification's own example secret, and a second one for rotation.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEXT = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def document(status: JobStatus = JobStatus.COMPLETED, output: object = None) -> dict[str, object]:
    job = JobRecord("a" * 32, "digits", {"pixels": [0] * 64}, created=1.8e9, updated=1.8e9 + 0.25)
    return status_document(job.with_status(status, output if output is not None else {"label": 3}, 1.8e9 + 1))


def signed(
    secrets: str = SECRET, body: bytes | None = None, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    body = webhooks.event_body(document()) if body is None else body
    headers = webhooks.signed_headers(
        webhooks.message_id("a" * 32), body, webhooks.parse_secrets(secrets), now=now
    )
    return body, headers


def test_the_reference_library_verifies_what_nearline_signs() -> None:
    body, headers = signed()
    event = Webhook(SECRET).verify(body, headers)
    assert event["type"] == "job.completed"
    assert event["timestamp"] == "2027-01-15T08:00:01.000000Z"
    assert event["data"]["instanceId"] == "a" * 32 and event["data"]["output"] == {"label": 3}
    assert headers["webhook-id"] == "msg_" + "a" * 32


def test_nearline_verifies_what_the_reference_library_signs() -> None:
    body = json.dumps({"type": "job.failed", "data": {}}).encode()
    msg_id, now = "msg_x", datetime.now(UTC)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, now, body.decode()),
    }
    assert verify(body, headers, SECRET) == {"type": "job.failed", "data": {}}
    assert verify(body.decode(), {k.upper(): v for k, v in headers.items()}, SECRET)["type"] == "job.failed"


def test_while_rotating_both_secrets_sign_and_each_verifies_alone() -> None:
    body, headers = signed(f"{SECRET}, {NEXT}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, NEXT):
        assert Webhook(secret).verify(body, headers)["type"] == "job.completed"
        assert verify(body, headers, secret)["type"] == "job.completed"
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(ReferenceError):
        Webhook(other).verify(body, headers)
    assert verify(body, headers, [other, NEXT])["type"] == "job.completed"  # a receiver rotating too


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b, h: (b.replace(b'"label":3', b'"label":4'), h),
        lambda b, h: (b, {**h, "webhook-id": "msg_other"}),
        lambda b, h: (b, {**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}),
        lambda b, h: (b, {k: v for k, v in h.items() if k != "webhook-signature"}),
        lambda b, h: (b, {**h, "webhook-signature": "v2," + h["webhook-signature"][3:]}),
    ],
    ids=["body", "id", "timestamp", "no-signature", "other-version"],
)
def test_a_tampered_event_fails_both_verifiers(tamper) -> None:  # type: ignore[no-untyped-def]
    body, headers = tamper(*signed())
    with pytest.raises(ReferenceError):
        Webhook(SECRET).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, SECRET)


@pytest.mark.parametrize("age", [-301, 301])
def test_a_timestamp_over_five_minutes_away_fails_both_verifiers(age: int) -> None:
    body, headers = signed(now=time.time() - age)
    with pytest.raises(ReferenceError, match="too"):
        Webhook(SECRET).verify(body, headers)
    with pytest.raises(WebhookVerificationError, match="300 s"):
        verify(body, headers, SECRET)


def test_without_a_secret_nothing_is_signed_and_receivers_refuse_it() -> None:
    body = webhooks.event_body(document())
    headers = webhooks.signed_headers("msg_1", body, ())
    assert "webhook-signature" not in headers
    with pytest.raises(ReferenceError):
        Webhook(SECRET).verify(body, headers)


@pytest.mark.parametrize(
    ("status", "output", "event"),
    [
        (JobStatus.COMPLETED, {"label": 1}, "job.completed"),
        (JobStatus.FAILED, {"error": {"code": "DeadlineExceeded", "message": "late"}}, "job.failed"),
        (JobStatus.TERMINATED, "enough", "job.terminated"),
    ],
)
def test_the_event_type_follows_the_end(status: JobStatus, output: object, event: str) -> None:
    body = webhooks.event_body(document(status, output))
    parsed = json.loads(body)
    assert (parsed["type"], parsed["data"]["output"]) == (event, output)
    assert set(parsed) == {"type", "timestamp", "data"}


def test_a_new_secret_is_in_the_specs_form_and_round_trips() -> None:
    made = webhooks.new_secret()
    assert made.startswith("whsec_") and str(WebhookSecret.parse(made)) == made
    Webhook(made)  # the reference library accepts it
    assert repr(WebhookSecret.parse(made)) == "WebhookSecret()"  # never shown


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("whsec_!!!", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
        (",".join([SECRET, NEXT, SECRET]), "at most 2"),
    ],
)
def test_a_bad_secret_is_a_config_error_naming_the_variable(raw: str, why: str) -> None:
    with pytest.raises(ConfigError, match="NEARLINE_WEBHOOK_SECRET") as caught:
        WebhookSettings.from_env({"NEARLINE_WEBHOOK_SECRET": raw})
    assert why in caught.value.message
    assert raw not in caught.value.message  # a secret is never shown


def test_the_settings_read_both_secrets_in_order() -> None:
    cfg = WebhookSettings.from_env({"NEARLINE_WEBHOOK_SECRET": f"{SECRET},{NEXT}"})
    assert [str(s) for s in cfg.secrets] == [SECRET, NEXT]


def test_a_large_event_leaves_input_and_output_out_and_links_to_the_job() -> None:
    big = document(output={"values": list(range(20_000))})
    body = webhooks.event_body(big, "https://api.example.test/api/jobs/" + "a" * 32)
    assert len(body) < webhooks.MAX_INLINE_BYTES
    event = json.loads(body)
    assert event["omitted"] == ["input", "output"]
    assert event["data"]["input"] is None and event["data"]["output"] is None
    assert event["data"]["instanceId"] == "a" * 32 and event["type"] == "job.completed"
    assert event["statusQueryGetUri"].endswith("/api/jobs/" + "a" * 32)
    small = json.loads(webhooks.event_body(document(), "https://x.test/"))
    assert "omitted" not in small and "statusQueryGetUri" not in small
