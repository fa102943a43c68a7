"""Live traffic splits: an endpoint's split as changed at run time (docs/deployments.md).

``pipelines.yaml`` gives each endpoint its starting split; ``PUT /api/endpoints/{name}/traffic``
(``Jobs.set_split``) stores a change, which wins from then on and survives restarts. The split
store sits beside the status store, in the same backend:

* ``memory://`` → :mod:`nearline.splits.memory` (one per job seam: nothing survives the process)
* ``sqlite:///file`` → :mod:`nearline.splits.sqlite` (tables in the embedded profile's file)
* ``redis://`` → :mod:`nearline.splits.redis` (keys beside the job records)

:class:`nearline.splits.live.LiveSplits` reads them through a cache of at most
:data:`~nearline.splits.live.MAX_AGE_S`, so every API replica applies a change within a second.
"""

from __future__ import annotations

from nearline.errors import ConfigError
from nearline.splits.base import Change, SplitStore
from nearline.store.base import StatusStore

__all__ = ["Change", "SplitStore", "splits_for"]


def splits_for(store: StatusStore) -> SplitStore:
    """The split store kept beside ``store`` (same backend, same file or database).

    Raises:
        ConfigError: ``store`` is of a kind with no split store.
    """
    # By the store's URL scheme, not its class: the Redis store's module would bring the
    # broker's (and its Azure claim-check) into every importer of the job seam.
    scheme = str(getattr(store, "url", "")).partition(":")[0]
    if scheme == "memory":
        from nearline.splits.memory import MemorySplits

        return MemorySplits()
    if scheme == "sqlite":
        from nearline.splits.sqlite import SqliteSplits

        return SqliteSplits(str(getattr(store, "url", "")))
    if scheme in ("redis", "rediss") and getattr(store, "client", None) is not None:
        from nearline.splits.redis import RedisSplits

        return RedisSplits(store.client)  # type: ignore[attr-defined]
    raise ConfigError(f"{type(store).__name__} keeps no traffic splits")
