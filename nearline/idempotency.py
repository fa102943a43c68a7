"""Idempotency keys, after the IETF draft "The Idempotency-Key HTTP Header Field".

A submit request may carry ``Idempotency-Key``. The key belongs to a *slot*: a digest of the
caller's scope, the pipeline and the key, so that two callers (two API keys) or two pipelines
never share a key. The first request with a key claims its slot; a repeat is answered from the
slot's job, after comparing the request's *fingerprint* (the pipeline and the parsed body):

* the same fingerprint: the original job (nothing new starts);
* a different one: ``422`` :class:`~nearline.errors.IdempotencyKeyReused`, naming the key;
* the first request is still being created (its record claimed, its message not yet sent):
  ``409`` :class:`~nearline.errors.Conflict`.

Job ids are never derived from a key alone. The store-backed profiles give every job a random id
and keep the slot → job map beside the records (a purge frees the slot, and a later request with
the key gets a new id, so nothing the purged job left behind can be applied to it). The Azure
profile has no store to hold a map: its keyed ids are :func:`keyed_id`, an HMAC of the slot
under a per-installation secret, which a client cannot compute.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import TYPE_CHECKING

from nearline.errors import Conflict, IdempotencyKeyReused, RequestError
from nearline.jobs import JobRecord, JobStatus

if TYPE_CHECKING:
    from nearline.submissions import Submission

#: Longest accepted ``Idempotency-Key``, in characters (400 above).
MAX_IDEMPOTENCY_KEY = 200
#: Shortest installation secret accepted for :func:`keyed_id`: 32 characters, e.g. the 64 hex
#: digits of ``openssl rand -hex 32``; a short one could be found by trying.
MIN_SECRET_CHARS = 32


def check_key(key: str | None) -> str | None:
    """The ``Idempotency-Key`` header's value, or None when absent; 400 when out of bounds."""
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise RequestError(f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    return key


def caller_scope(api_key: str | None) -> str:
    """The scope of a caller's keys: a digest of the API key it sent ("" when it sent none).

    A digest, so that no stored record holds an API key.
    """
    return "" if not api_key else _digest(["api-key", api_key])


def slot(scope: str, pipeline: str, key: str) -> str:
    """The slot an ``Idempotency-Key`` claims: one per caller scope, pipeline and key."""
    return _digest(["slot", scope, pipeline, key])


def fingerprint(sub: Submission) -> str:
    """A digest of the request as parsed: the pipeline and every body field, defaults applied.

    Parsed, not raw: a body that spells the default priority out, or orders its fields
    differently, is the same request.
    """
    return _digest(["request", sub.pipeline, sub.input, sub.timeout_s, sub.priority, sub.callback_url])


def keyed_id(secret: str, key_slot: str) -> str:
    """The job id of a keyed submission where no map can be kept (Azure): 32 hex digits.

    An HMAC-SHA256 under the installation's secret: the same slot always names the same job, and
    nobody without the secret can compute the id from the key.
    """
    return hmac.new(secret.encode(), key_slot.encode(), hashlib.sha256).hexdigest()[:32]


def reused(existing: JobRecord, job: JobRecord) -> JobRecord:
    """The answer to a repeat of a keyed request: ``existing``, the job holding the slot.

    Args:
        existing: The job that holds the slot.
        job: The job the repeat would have created.

    Raises:
        IdempotencyKeyReused: (422) the repeat is a different request.
        Conflict: (409) the first request is still being created.
    """
    key = job.idempotency_key
    if existing.fingerprint != job.fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used for a different request to pipeline"
            f" {job.pipeline!r}; send a new request with a new key"
        )
    if existing.status is JobStatus.PENDING and not existing.enqueued:
        raise Conflict(
            f"the first request with Idempotency-Key {key!r} is still being created; retry in a moment"
        )
    return existing


def _digest(parts: list[object]) -> str:
    # JSON keeps the parts apart (no separator can be forged) and escapes every non-ASCII
    # character, lone surrogates included, so any parsed body can be hashed.
    text = json.dumps(parts, separators=(",", ":"), sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()
