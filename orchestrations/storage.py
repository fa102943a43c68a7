"""The Function app's storage account (``NEARLINE_BLOB_STORE``), opened on first use per process.

Two containers of it: the claim check's bodies (result messages too large for Service Bus,
which :mod:`orchestrations.responses` reads back) and the tombstones the terminate route writes
for the workers (:mod:`nearline.tombstones`). The ``enqueue`` activity's broker opens its own
claim check from the same settings. Without the setting there are neither: large results cannot
be read, and a terminated job's queued request is still computed (its result is dropped).
"""

from __future__ import annotations

import logging
import threading

from nearline.claim_check import OutOfLine
from nearline.constants import TOMBSTONES_CONTAINER
from nearline.settings import BLOB_STORE, FunctionsSettings
from nearline.tombstones import Tombstones

log = logging.getLogger("nearline.azure.storage")

_lock = threading.Lock()
_claims: OutOfLine | None = None
_tombstones: Tombstones | None = None
_opened = False


def claims() -> OutOfLine:
    """The claim check of the response function (the same code as the Service Bus broker's)."""
    global _claims
    with _lock:
        if _claims is None:
            _claims = OutOfLine.configured()
        return _claims


def tombstones() -> Tombstones | None:
    """Where the terminate route records terminated jobs; None when no blob store is configured."""
    global _tombstones, _opened
    with _lock:
        if not _opened:
            _tombstones, _opened = _open_tombstones(FunctionsSettings.from_env().blob_store), True
        return _tombstones


def _open_tombstones(setting: str | None) -> Tombstones | None:
    if not setting:
        log.warning("%s is not set: terminated jobs' queued requests are still computed", BLOB_STORE.name)
        return None
    from nearline.azure_blobs import open_container

    return Tombstones(open_container(setting, TOMBSTONES_CONTAINER))
