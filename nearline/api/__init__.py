"""The HTTP contract (docs/api.md) on Starlette: a thin adapter over :mod:`nearline.http`."""

from nearline.api.app import create_app

__all__ = ["create_app"]
