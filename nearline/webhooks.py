"""Webhook events as nearline sends them, signed per the Standard Webhooks specification, and
:func:`verify` for receivers.

An event is a POST whose body is the JSON object ``{"type", "timestamp", "data"}``: ``type`` is
``job.completed``, ``job.failed`` or ``job.terminated``, ``timestamp`` the job's end (ISO 8601
UTC) and ``data`` the job's status document (docs/api.md); past :data:`MAX_INLINE_BYTES` the
input and output are left out and the event links to the job. Three headers go with it
(https://www.standardwebhooks.com/):

* ``webhook-id``: ``msg_<job id>``, the same on every attempt, so a receiver can drop repeats;
* ``webhook-timestamp``: when this attempt was signed, in epoch seconds;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` for each secret,
  separated by spaces: two while a secret is rotated, so receivers holding either one verify.

A secret is written ``whsec_<base64 of 24 to 64 random bytes>`` (:func:`new_secret` makes one);
``NEARLINE_WEBHOOK_SECRET`` holds one, or two separated by a comma while rotating.

A receiver needs only this module (no server parts)::

    from nearline.webhooks import verify
    event = verify(body, headers, "whsec_...")  # raises WebhookVerificationError

``verify`` refuses a timestamp more than five minutes from the receiver's clock, so a captured
request cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nearline.errors import RequestError

SECRET_PREFIX = "whsec_"
#: Secret sizes the specification allows (bytes once decoded).
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
#: How far a signature's timestamp may be from the receiver's clock (the specification's 5 min).
TOLERANCE_S = 300
#: Secrets signing at once: the current one and, while rotating, the next.
MAX_SECRETS = 2
#: Largest event sent with the job's input and output; a larger one links to the job instead
#: (the claim-check rule): receivers and the proxies before them often refuse bodies of a few
#: hundred KB, and an event should be cheap to accept and to retry.
MAX_INLINE_BYTES = 64 * 1024
#: ``type`` of the event for each way a job ends.
EVENT_TYPES = {"Completed": "job.completed", "Failed": "job.failed", "Terminated": "job.terminated"}


class WebhookVerificationError(RequestError):
    """A webhook whose signature, timestamp or headers do not verify; the message says which."""

    code = "WebhookVerificationFailed"


@dataclass(frozen=True)
class WebhookSecret:
    """One signing secret: its bytes (never shown in a repr)."""

    key: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        """``whsec_<base64>`` (the prefix may be left out).

        Raises:
            ValueError: Not base64, or of a size the specification does not allow.
        """
        raw = text.strip().removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"a webhook secret is {SECRET_PREFIX} and base64 text") from None
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise ValueError(
                f"a webhook secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
                f" (make one with: python -m nearline.webhooks)"
            )
        return cls(key)

    def __str__(self) -> str:
        return SECRET_PREFIX + base64.b64encode(self.key).decode("ascii")


def parse_secrets(raw: str) -> tuple[WebhookSecret, ...]:
    """``NEARLINE_WEBHOOK_SECRET``: one secret, or two separated by a comma while rotating.

    Raises:
        ValueError: A secret is malformed, or there are more than two.
    """
    items = [part.strip() for part in raw.split(",") if part.strip()]
    if len(items) > MAX_SECRETS:
        raise ValueError(f"at most {MAX_SECRETS} secrets (the current one and the next)")
    return tuple(WebhookSecret.parse(item) for item in items)


def new_secret() -> str:
    """A fresh random secret in ``whsec_`` form (32 bytes)."""
    return str(WebhookSecret(secrets.token_bytes(32)))


def message_id(job_id: str) -> str:
    """The ``webhook-id`` of a job's event: stable across attempts and replicas."""
    return f"msg_{job_id}"


def event_type(runtime_status: str) -> str:
    """The event ``type`` for a job's terminal ``runtimeStatus``."""
    return EVENT_TYPES[runtime_status]


def event_body(document: Mapping[str, Any], status_url: str | None = None) -> bytes:
    """The body of the event for an ended job's status ``document``: compact UTF-8 JSON.

    Past :data:`MAX_INLINE_BYTES`, the claim-check rule: ``data.input`` and ``data.output`` are
    left out (null, named in ``omitted``) and ``statusQueryGetUri`` (``status_url``, when known)
    is where the receiver fetches the whole document.
    """
    event: dict[str, Any] = {
        "type": event_type(str(document["runtimeStatus"])),
        "timestamp": document["lastUpdatedTime"],
        "data": document,
    }
    body = _dumps(event)
    if len(body) <= MAX_INLINE_BYTES:
        return body
    event["data"] = {**document, "input": None, "output": None}
    event["omitted"] = ["input", "output"]
    if status_url:
        event["statusQueryGetUri"] = status_url
    return _dumps(event)


def _dumps(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def signature(secret: WebhookSecret, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``msg_id.timestamp.body`` under ``secret``."""
    digest = hmac.new(secret.key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(
    msg_id: str, body: bytes, keys: Iterable[WebhookSecret], now: float | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: one signature per secret.

    Without secrets, ``webhook-signature`` is left out (receivers that verify refuse such a
    request, as they should).
    """
    timestamp = int(time.time() if now is None else now)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp)}
    signatures = [signature(key, msg_id, timestamp, body) for key in keys]
    if signatures:
        headers["webhook-signature"] = " ".join(signatures)
    return headers


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | WebhookSecret | Iterable[str | WebhookSecret],
    *,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> Any:
    """Check a webhook's signature and timestamp; the parsed JSON body when they hold.

    Args:
        body: The request body exactly as received (bytes, or the text they decode to).
        headers: The request headers (any case).
        secret: The secret (``whsec_...``), or several (a receiver that rotates accepts either).
        tolerance_s: Largest difference between ``webhook-timestamp`` and ``now``.
        now: The receiver's clock (epoch seconds); default ``time.time()``.

    Raises:
        WebhookVerificationError: A header is missing or malformed, the timestamp is out of
            tolerance, or no signature matches any secret.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signed = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signed):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not epoch seconds") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp {timestamp} is outside the {tolerance_s:g} s tolerance"
        )
    offered = [part.split(",", 1)[1] for part in signed.split() if part.startswith("v1,")]
    for key in _keys(secret):
        expected = signature(key, msg_id, timestamp, raw).split(",", 1)[1]
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise WebhookVerificationError(f"the signed body is not JSON: {exc}") from None
    raise WebhookVerificationError("no webhook-signature matches the secret")


def _keys(secret: str | WebhookSecret | Iterable[str | WebhookSecret]) -> list[WebhookSecret]:
    items = [secret] if isinstance(secret, str | WebhookSecret) else list(secret)
    keys: list[WebhookSecret] = []
    for item in items:
        if isinstance(item, WebhookSecret):
            keys.append(item)
            continue
        try:
            keys.extend(parse_secrets(item) if "," in item else [WebhookSecret.parse(item)])
        except ValueError as exc:
            raise WebhookVerificationError(f"the receiver's secret is unusable: {exc}") from None
    if not keys:
        raise WebhookVerificationError("no secret to verify with")
    return keys


if __name__ == "__main__":  # python -m nearline.webhooks: print a new secret
    print(new_secret())
