"""Azure Blob Storage as a :class:`~nearline.claim_check.BlobStore`: the Service Bus profile's
claim check, and the tombstones of terminated jobs (:mod:`nearline.tombstones`).

Where: ``NEARLINE_BLOB_STORE``, in the broker URL's style. ``https://<account>.blob.core.windows.net``
authenticates with ``DefaultAzureCredential`` (workload identity on AKS, managed identity on
Functions, ``az login`` on a laptop); a storage connection string (``...;AccountKey=...``, or
Azurite's, whose ``BlobEndpoint`` is a loopback URL) uses the key.

A store is one container of that account (:data:`~nearline.constants.BODIES_CONTAINER`,
:data:`~nearline.constants.TOMBSTONES_CONTAINER`), created on first write when it is missing
(Azurite, a development account); production containers come from ``az`` together with the
lifecycle rule that bounds what lost messages leave behind (docs/azure.md). Blobs have no
expiry of their own: ``ttl_s`` is left to that rule.

Reads and deletes of many keys run concurrently on a few threads, so a batch of them costs about
one round trip. A failure that passes (timeout, throttling, a connection lost) is a
:class:`~nearline.errors.BrokerError`, which a worker retries until the account answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

from nearline.errors import BrokerError, ConfigError

#: Requests in flight for one call's keys: a batch of 32 is 4 rounds at most, and the HTTP
#: transport keeps 10 connections per host, so none is opened and dropped per request.
THREADS = 8

T = TypeVar("T")


def account_client(setting: str) -> Any:
    """A ``BlobServiceClient`` for the account ``setting`` names (a URL or a connection string).

    Raises:
        ConfigError: Neither an ``https://`` account URL nor a connection string.
    """
    from azure.storage.blob import BlobServiceClient

    if ("=" in setting and ";" in setting) or setting.startswith("UseDevelopmentStorage="):
        return BlobServiceClient.from_connection_string(setting)
    parts = urlsplit(setting)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(
            f"blob store {setting.split(';')[0]!r}: expected https://<account>.blob.core.windows.net"
            " or a storage connection string"
        )
    from azure.identity import DefaultAzureCredential

    return BlobServiceClient(setting, credential=DefaultAzureCredential())


def open_container(setting: str, container: str) -> AzureBlobs:
    """The container ``container`` of the account ``setting`` names, as a blob store."""
    return AzureBlobs(account_client(setting).get_container_client(container))


class AzureBlobs:
    """A :class:`~nearline.claim_check.BlobStore` over one container (see the module docstring).

    Args:
        container: An ``azure.storage.blob.ContainerClient``.
    """

    def __init__(self, container: Any) -> None:
        self.container = container
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="blobs")

    @property
    def name(self) -> str:
        """The container's name."""
        return str(self.container.container_name)

    def put(self, key: str, body: bytes, ttl_s: float) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._call(f"store {key}", lambda: self.container.upload_blob(key, body, overwrite=True))
        except _Missing as missing:
            if not _container_missing(missing.error):
                raise BrokerError(f"blob store {self.name}: could not store {key}: {missing.error}") from None
            with contextlib.suppress(Exception):  # a twin may create it first; the retry tells
                self.container.create_container()
            try:
                self._call(f"store {key}", lambda: self.container.upload_blob(key, body, overwrite=True))
            except (_Missing, ResourceNotFoundError) as exc:
                raise BrokerError(f"blob store {self.name}: could not create the container: {exc}") from None

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._each(keys, self._get)

    def delete_many(self, keys: Sequence[str]) -> None:
        self._each(keys, self._delete)

    def names(self, prefix: str) -> list[str]:
        """The names of the blobs that start with ``prefix`` (one listing: one request per 5,000)."""
        try:
            return self._call(
                f"list {prefix}", lambda: [b.name for b in self.container.list_blobs(name_starts_with=prefix)]
            )
        except _Missing:
            return []

    def close(self) -> None:
        """Stop the threads and close the HTTP connections; the store is unusable afterwards."""
        self._pool.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.container.close()

    def _get(self, key: str) -> bytes | None:
        try:
            return bytes(self._call(f"read {key}", lambda: self.container.download_blob(key).readall()))
        except _Missing:
            return None

    def _delete(self, key: str) -> None:
        with contextlib.suppress(_Missing):
            self._call(f"delete {key}", lambda: self.container.delete_blob(key))

    def _each(self, keys: Sequence[str], fn: Callable[[str], T]) -> list[T]:
        if len(keys) <= 1:
            return [fn(k) for k in keys]
        return list(self._pool.map(fn, keys))

    def _call(self, doing: str, fn: Callable[[], T]) -> T:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return fn()
        except ResourceNotFoundError as exc:
            raise _Missing(exc) from None
        except AzureError as exc:
            raise BrokerError(f"blob store {self.name}: could not {doing}: {exc}") from exc


class _Missing(Exception):
    """A blob (or its container) that is not there: an answer, not a failure."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _container_missing(error: Exception) -> bool:
    return str(getattr(error, "error_code", "") or "") == "ContainerNotFound"
