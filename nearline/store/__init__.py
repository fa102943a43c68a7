"""Status stores, chosen by the same URL as the broker (one backend holds both).

``memory://`` → :mod:`nearline.store.memory`; ``sqlite:///file`` → :mod:`nearline.store.sqlite`
(the broker's file); ``redis://`` → :mod:`nearline.store.redis_hashes`. Service Bus has no
store: on Azure, Durable Functions' instance state is the store.
"""

from __future__ import annotations

import threading

from nearline.brokers import load_class, scheme_of
from nearline.errors import ConfigError
from nearline.store.base import StatusStore

__all__ = ["StatusStore", "open_store"]

STORE_ALIASES = {
    "memory": "nearline.store.memory:MemoryStore",
    "sqlite": "nearline.store.sqlite:SqliteStore",
    "redis": "nearline.store.redis_hashes:RedisStore",
}

_shared: dict[str, StatusStore] = {}
_shared_lock = threading.Lock()


def open_store(url: str) -> StatusStore:
    """Open the status store kept beside the broker at ``url``."""
    scheme = scheme_of(url)
    if scheme not in STORE_ALIASES:
        raise ConfigError(
            f"{scheme}:// has no status store here (on Azure, Durable Functions keeps job state)"
        )
    cls = load_class(STORE_ALIASES[scheme])
    if scheme != "memory":
        return cls(url)  # type: ignore[no-any-return]
    with _shared_lock:
        if url not in _shared:
            _shared[url] = cls(url)
        return _shared[url]
