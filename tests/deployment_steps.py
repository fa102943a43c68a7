"""Pipeline steps for deployment tests: each deployment tags its output with its own name.

Also copied next to a test's pipelines file for ``nearline serve`` (a project folder's step
modules import from there).
"""

from __future__ import annotations

from typing import Any

#: Each batch a tagging step ran: ``(tag, [item ids])`` (tests inspect it in-process).
BATCHES: list[tuple[str, list[Any]]] = []


def tagger(repository: Any, tag: str) -> Any:
    """A batch step that echoes each item with ``deployment: tag`` and remembers the batch."""

    def tag_batch(items: list[Any]) -> list[Any]:
        BATCHES.append((tag, [item.get("id") for item in items]))
        return [{"echo": item, "deployment": tag} for item in items]

    return tag_batch
