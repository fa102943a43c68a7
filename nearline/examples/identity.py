"""The ``identity`` example: returns its input unchanged (measures queue and HTTP overhead)."""

from __future__ import annotations

from typing import Any


def identity(items: list[Any]) -> list[Any]:
    """A batch step that returns the batch as it is."""
    return items
