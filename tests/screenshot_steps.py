"""Steps of the ``tour`` pipeline that tests/screenshots.py photographs: three batch steps that
take a few milliseconds each, so a job's page has steps worth drawing."""

from __future__ import annotations

import time
from typing import Any


def _taking(seconds: float, items: list[Any]) -> list[Any]:
    time.sleep(seconds)
    return items


def tokenize(items: list[Any]) -> list[Any]:
    """About 2 ms a batch."""
    return _taking(0.002, items)


def embed(items: list[Any]) -> list[Any]:
    """About 9 ms a batch."""
    return _taking(0.009, items)


def classify(items: list[Any]) -> list[Any]:
    """About 3 ms a batch; answers a label."""
    return [{"label": "sport", "of": item} for item in _taking(0.003, items)]
