"""Claim check: a message body over a size limit travels by reference, transparently.

The sender stores a large body out of line (a *blob*) and enqueues a small reference in its
place; the receiver resolves the reference, so ``Delivery.body`` is always the original bytes;
settling the message for good (complete, dead-letter, expiry) deletes the blob. Workers and
clients never see the difference: a 1 MB input or result goes through the same code as a
100-byte one.

This module holds the policy (the size limit, the blob's key and lifetime), the one interface
every blob store offers (:class:`BlobStore`: Redis keys, an Azure Storage container) and, for
brokers without server-side scripts, the whole round trip (:class:`OutOfLine`). A broker applies
the policy where its atomicity lives: the Redis broker writes the blob in the same script as the
message, so a duplicate send can never overwrite a leased message's blob; the Service Bus broker
puts each body under a name of its own (:meth:`OutOfLine.stash`) before it sends the message
that names it, and deletes the blob once it completes that message.

Configured by the broker URL option ``claim_check_bytes=N`` or the environment variable
``NEARLINE_CLAIM_CHECK_BYTES`` (the URL wins); ``0`` turns the claim check off.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nearline import settings
from nearline.constants import BODIES_CONTAINER, CLAIM_CHECK_BYTES, RETENTION_S
from nearline.errors import ConfigError, PayloadTooLarge

log = logging.getLogger("nearline.claim_check")

#: Bodies larger than this go out of line (why this figure: :data:`nearline.constants.CLAIM_CHECK_BYTES`).
DEFAULT_CLAIM_CHECK_BYTES = CLAIM_CHECK_BYTES

#: Lifetime of a blob whose message has no TTL. Settling deletes blobs; this bounds the memory
#: a message lost to an operator's XDEL/XTRIM can leave behind. Result messages (no TTL) are
#: consumed within seconds, so a day is far beyond any real wait.
UNBOUNDED_BLOB_TTL_S = RETENTION_S

#: Added to a message's own TTL: a message whose TTL passes while it is leased is still
#: completed by its receiver, which must be able to read the body until the lease ends.
BLOB_GRACE_S = 3600.0


class BlobStore(Protocol):
    """Where out-of-line bodies live, by key: one interface for every broker's claim check."""

    def put(self, key: str, body: bytes, ttl_s: float) -> None:
        """Store ``body`` under ``key`` for at least ``ttl_s`` seconds (a store whose blobs
        cannot expire one by one bounds them with a rule of its own instead)."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The bodies under ``keys``, in order (None where one is gone), in one round trip."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys``; a key already gone is no error."""


class RedisBlobs:
    """:class:`BlobStore` over a ``redis.Redis`` client. The Redis broker writes and deletes its
    blobs inside its scripts (atomic with the message) and reads them through this."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def put(self, key: str, body: bytes, ttl_s: float) -> None:
        self._client.set(key, body, px=max(int(ttl_s * 1000), 1))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return list(self._client.mget(list(keys))) if keys else []

    def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            self._client.delete(*keys)


@dataclass(frozen=True)
class ClaimCheck:
    """When a body goes out of line, where it goes and for how long.

    Attributes:
        threshold: Bodies longer than this many bytes are stored as blobs; 0 disables.
    """

    threshold: int = DEFAULT_CLAIM_CHECK_BYTES

    @classmethod
    def configured(
        cls, url_option: str | None = None, environ: Mapping[str, str] | None = None
    ) -> ClaimCheck:
        """The claim check a broker URL option, else ``NEARLINE_CLAIM_CHECK_BYTES``, asks for.

        Raises:
            ConfigError: The limit is not a whole number of bytes >= 0.
        """
        if url_option is None:
            return cls(settings.RedisSettings.from_env(environ).claim_check_bytes)
        if url_option == "":
            return cls()
        try:
            return cls(settings.CLAIM_CHECK_BYTES.parse(url_option))
        except ValueError as exc:
            raise ConfigError(f"claim check limit claim_check_bytes={url_option!r}: {exc}") from None

    def needed(self, body: bytes) -> bool:
        """True when ``body`` must travel by reference."""
        return 0 < self.threshold < len(body)

    @staticmethod
    def blob_key(queue: str, message_id: str) -> str:
        """Where the body of ``message_id`` on ``queue`` is kept.

        Named by message id, not a fresh uuid: a queue holds one message per id (sends are
        idempotent), so every party (sender, receiver, settler) can name the blob without
        carrying the reference around.
        """
        return f"{queue}:blob:{message_id}"

    @staticmethod
    def blob_ttl_s(message_ttl_s: float | None) -> float:
        """How long a blob lives: past its message's TTL and any lease running over it."""
        if message_ttl_s is None:
            return UNBOUNDED_BLOB_TTL_S
        return message_ttl_s + BLOB_GRACE_S

    @staticmethod
    def fetch(store: BlobStore, keys: Sequence[str]) -> list[bytes | None]:
        """The blobs under ``keys`` in one round trip (None where a blob is gone)."""
        return store.get_many(keys) if keys else []


@dataclass(frozen=True)
class OutOfLine:
    """The claim check of a broker without server-side scripts (Service Bus), round trip.

    A body over the threshold is put in ``store`` under a name of its own (queue, message id and
    a random suffix: a duplicate send, which the broker drops, never overwrites the blob of the
    message it duplicates), and the message carries that name instead of the body. Receivers
    read it back (:meth:`resolve`); completing the message deletes it (:meth:`release`). What a
    lost message leaves behind (a send the broker dropped as a duplicate, a message that expired
    or was dead-lettered) is bounded by the store's own expiry rule.

    Attributes:
        policy: The threshold.
        store: Where bodies go; None: nowhere, so a body over the threshold cannot be sent.
    """

    policy: ClaimCheck
    store: BlobStore | None

    @classmethod
    def configured(cls, environ: Mapping[str, str] | None = None) -> OutOfLine:
        """``NEARLINE_CLAIM_CHECK_BYTES`` over the bodies container of ``NEARLINE_BLOB_STORE``
        (none when it is unset: then only bodies under the threshold can be sent)."""
        found = settings.ServiceBusSettings.from_env(environ)
        store: BlobStore | None = None
        if found.blob_store:
            from nearline.azure_blobs import open_container

            store = open_container(found.blob_store, BODIES_CONTAINER)
        return cls(ClaimCheck(found.claim_check_bytes), store)

    def needed(self, body: bytes) -> bool:
        """True when ``body`` must travel by reference."""
        return self.policy.needed(body)

    def stash(self, queue: str, message_id: str, body: bytes, ttl_s: float | None) -> str:
        """Put ``body`` out of line; returns the name the message carries.

        Raises:
            PayloadTooLarge: There is no store to put it in.
        """
        if self.store is None:
            raise PayloadTooLarge(
                f"a {len(body)}-byte message for {queue} needs the claim check, and no blob store is"
                " configured (NEARLINE_BLOB_STORE; docs/azure.md)"
            )
        name = f"{queue}/{message_id}/{uuid.uuid4().hex}"
        self.store.put(name, body, self.policy.blob_ttl_s(ttl_s))
        return name

    def resolve(self, names: Sequence[str | None], bodies: Sequence[bytes]) -> list[bytes]:
        """``bodies`` with each one that names a blob (its ``names`` entry) replaced by the blob.

        A blob that is gone (deleted by hand, or by the expiry rule) reads as an empty body, which
        the receiver's own check refuses (a request is dead-lettered as malformed).
        """
        wanted = [n for n in names if n]
        if not wanted:
            return list(bodies)
        if self.store is None:
            log.error("%d message(s) name a blob and no blob store is configured", len(wanted))
            found: dict[str, bytes | None] = {}
        else:
            found = dict(zip(wanted, self.policy.fetch(self.store, wanted), strict=True))
        out = []
        for name, body in zip(names, bodies, strict=True):
            if name and found.get(name) is None:
                log.warning("the body of a claim-checked message is gone: %s", name)
            out.append((found.get(name) or b"") if name else body)
        return out

    def release(self, names: Sequence[str | None]) -> None:
        """Delete the blobs of messages settled for good; best effort (the expiry rule is the
        backstop), so a store that fails here never fails the settle."""
        gone = [n for n in names if n]
        if not gone or self.store is None:
            return
        try:
            self.store.delete_many(gone)
        except Exception as exc:  # the message is settled already; the blob only costs storage
            log.warning("could not delete %d claim-check blob(s), the expiry rule will: %s", len(gone), exc)
