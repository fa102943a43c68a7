"""Claim check: a message body over a size limit travels by reference, transparently.

The sender stores a large body out of line (a *blob*) and enqueues a small reference in its
place; the receiver resolves the reference, so ``Delivery.body`` is always the original bytes;
settling the message for good (complete, dead-letter, expiry) deletes the blob. Workers and
clients never see the difference: a 1 MB input or result goes through the same code as a
100-byte one.

This module holds the policy (the size limit, the blob's key and lifetime) and the read side;
a broker applies it where its atomicity lives (the Redis broker writes the blob in the same
script as the message, so a duplicate send can never overwrite a leased message's blob).

Configured by the broker URL option ``claim_check_bytes=N`` or the environment variable
``NEARLINE_CLAIM_CHECK_BYTES`` (the URL wins); ``0`` turns the claim check off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nearline import settings
from nearline.constants import CLAIM_CHECK_BYTES, RETENTION_S
from nearline.errors import ConfigError

#: Bodies larger than this go out of line (why this figure: :data:`nearline.constants.CLAIM_CHECK_BYTES`).
DEFAULT_CLAIM_CHECK_BYTES = CLAIM_CHECK_BYTES

#: Lifetime of a blob whose message has no TTL. Settling deletes blobs; this bounds the memory
#: a message lost to an operator's XDEL/XTRIM can leave behind. Result messages (no TTL) are
#: consumed within seconds, so a day is far beyond any real wait.
UNBOUNDED_BLOB_TTL_S = RETENTION_S

#: Added to a message's own TTL: a message whose TTL passes while it is leased is still
#: completed by its receiver, which must be able to read the body until the lease ends.
BLOB_GRACE_S = 3600.0


class BlobReader(Protocol):
    """The one call the read side needs from a client (``redis.Redis`` has it)."""

    def mget(self, keys: Any, *args: Any) -> Any: ...


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
    def fetch(client: BlobReader, keys: Sequence[str]) -> list[bytes | None]:
        """The blobs under ``keys`` in one round trip (None where a blob is gone)."""
        return list(client.mget(keys)) if keys else []
