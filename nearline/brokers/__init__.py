"""Broker backends, chosen by URL scheme from one alias table.

=====================================  ==========================================
URL                                    backend
=====================================  ==========================================
``memory://[name]``                    :mod:`nearline.brokers.memory`
``sqlite:///path/to/file.db``          :mod:`nearline.brokers.sqlite`
``redis://host:6379/0``                :mod:`nearline.brokers.redis_streams`
``servicebus://ns.servicebus.windows.net``  :mod:`nearline.brokers.servicebus`
``Endpoint=sb://...`` (connection string)   :mod:`nearline.brokers.servicebus`
=====================================  ==========================================
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from nearline.brokers.base import Broker, DeadLetter, Delivery, LeaseLost
from nearline.errors import ConfigError

__all__ = ["Broker", "DeadLetter", "Delivery", "LeaseLost", "open_broker", "scheme_of", "shared_instance"]

T = TypeVar("T")

#: scheme → "module:Class". Modules are imported on first use so that a profile's client
#: libraries (redis, azure-servicebus) are needed only where that profile runs.
BROKER_ALIASES = {
    "memory": "nearline.brokers.memory:MemoryBroker",
    "sqlite": "nearline.brokers.sqlite:SqliteBroker",
    "redis": "nearline.brokers.redis_streams:RedisBroker",
    "servicebus": "nearline.brokers.servicebus:ServiceBusBroker",
}

# memory:// backends (brokers and status stores) of one URL are shared in a process: that is
# what makes an embedded server's API and its worker threads one system.
_shared: dict[tuple[Callable[[str], Any], str], Any] = {}
_shared_lock = threading.Lock()


def scheme_of(url: str) -> str:
    """The alias-table key for ``url`` (a Service Bus connection string maps to servicebus)."""
    if url.startswith("Endpoint=sb://"):
        return "servicebus"
    scheme = urlsplit(url).scheme
    if scheme not in BROKER_ALIASES:
        known = ", ".join(f"{s}://" for s in BROKER_ALIASES)
        raise ConfigError(f"broker URL {url!r}: unknown scheme {scheme!r} (expected one of {known})")
    return scheme


def load_class(spec: str) -> type:
    """Import ``"module:Class"``."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def shared_instance(url: str, factory: Callable[[str], T]) -> T:
    """The process's one ``factory(url)``, made on first use: how ``memory://`` backends share.

    One instance per ``(factory, url)``: the broker and the status store of one URL are two.
    """
    with _shared_lock:
        key = (factory, url)
        if key not in _shared:
            _shared[key] = factory(url)
        return _shared[key]  # type: ignore[no-any-return]


def open_broker(url: str) -> Broker:
    """Open the broker ``url`` names; ``memory://`` URLs return the process's shared instance."""
    scheme = scheme_of(url)
    cls = load_class(BROKER_ALIASES[scheme])
    return shared_instance(url, cls) if scheme == "memory" else cls(url)  # type: ignore[no-any-return]
