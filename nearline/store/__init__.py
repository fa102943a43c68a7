"""Status stores, chosen by the same URL as the broker (one backend holds both).

``memory://`` → :mod:`nearline.store.memory`; ``sqlite:///file`` → :mod:`nearline.store.sqlite`
(the broker's file); ``redis://`` → :mod:`nearline.store.redis_hashes`. Service Bus has no
store: on Azure, Durable Functions' instance state is the store. ``memory://`` stores of one URL
are one per process (:func:`nearline.brokers.shared_instance`), like the brokers.
"""

from __future__ import annotations

from nearline.brokers import load_class, scheme_of, shared_instance
from nearline.errors import ConfigError
from nearline.store.base import StatusStore

__all__ = ["StatusStore", "open_store"]

STORE_ALIASES = {
    "memory": "nearline.store.memory:MemoryStore",
    "sqlite": "nearline.store.sqlite:SqliteStore",
    "redis": "nearline.store.redis_hashes:RedisStore",
}


def open_store(url: str) -> StatusStore:
    """Open the status store kept beside the broker at ``url``."""
    scheme = scheme_of(url)
    if scheme not in STORE_ALIASES:
        raise ConfigError(
            f"{scheme}:// has no status store here (on Azure, Durable Functions keeps job state)"
        )
    cls = load_class(STORE_ALIASES[scheme])
    return shared_instance(url, cls) if scheme == "memory" else cls(url)  # type: ignore[no-any-return]
