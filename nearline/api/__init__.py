"""The HTTP API of DESIGN §2 (Starlette): thin adapters over :class:`nearline.service.JobService`."""

from nearline.api.app import ApiConfig, create_app

__all__ = ["ApiConfig", "create_app"]
