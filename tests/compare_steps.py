"""Pipeline steps for comparison and rollout tests: a classifier, and one that fails on demand.

Copied next to a test's pipelines file for ``nearline serve`` (a project folder's step modules
import from there).
"""

from __future__ import annotations

from typing import Any

from nearline.errors import InvalidInput


def classify(item: dict[str, Any]) -> dict[str, Any]:
    """A classifier: the label is the input's ``topic``, and ``score`` tells deployments apart."""
    return {"label": item.get("topic", "none"), "scores": {"v": 1.0}}


def contrary(item: dict[str, Any]) -> dict[str, Any]:
    """A classifier that disagrees with :func:`classify` where the input says ``flip``."""
    label = "other" if item.get("flip") else item.get("topic", "none")
    return {"label": label, "scores": {"v": 0.5}}


def fragile(item: dict[str, Any]) -> dict[str, Any]:
    """Fails every input (a deployment made to fail), but for ``{"ok": true}``."""
    if not item.get("ok"):
        raise InvalidInput("this deployment fails every input")
    return {"label": "fine"}
