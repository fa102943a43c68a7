"""Pipeline steps for worker tests: ones that count calls, fail, crash, or take their time."""

from __future__ import annotations

import os
import time
from typing import Any

from nearline.errors import InvalidInput

#: Inputs each process has computed, in order (tests inspect it in-process).
COMPUTED: list[Any] = []


def record(items: list[Any]) -> list[Any]:
    """Identity that remembers what it computed."""
    COMPUTED.extend(items)
    return [{"echo": item} for item in items]


def picky(item: dict[str, Any]) -> dict[str, Any]:
    """Refuses an item whose ``bad`` is true with InvalidInput (the job fails InvalidInput)."""
    if item.get("bad"):
        raise InvalidInput("this item is bad")
    return item


def explode(item: Any) -> Any:
    """A step with a bug in it."""
    raise RuntimeError("kaboom")


def crash(items: list[Any]) -> list[Any]:
    """Kills the worker process when an item asks for it (poison); identity otherwise."""
    if any(isinstance(i, dict) and i.get("crash") for i in items):
        os._exit(1)
    return items


def slow(items: list[Any]) -> list[Any]:
    """Sleeps ``sleep`` seconds (the first item's), then echoes: keeps a batch in flight."""
    time.sleep(float(items[0].get("sleep", 0.5)) if items and isinstance(items[0], dict) else 0.5)
    return items


def not_finite(item: dict[str, Any]) -> dict[str, Any]:
    """A numerical bug: a 0/0 ratio comes out NaN (``"nan": false``: an infinity instead)."""
    return {"ratio": float("nan") if item.get("nan", True) else float("inf"), "of": item}


def lookup(item: dict[str, Any]) -> dict[str, Any]:
    """A post-processing bug: reads a key no step wrote (a KeyError: the server's fault)."""
    return {"label": item["scores"]}


#: Each batch ``sized`` computed, as the lengths of its items' ``text`` (in batch order).
BATCHES: list[list[int]] = []


def sized(items: list[Any]) -> list[Any]:
    """Echoes each item's ``text`` and its length, after 20 ms a batch; remembers the batch."""
    BATCHES.append([len(item["text"]) for item in items])
    time.sleep(0.02)
    return [{"text": item["text"], "length": len(item["text"])} for item in items]
