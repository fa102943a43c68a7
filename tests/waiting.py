"""Waiting in tests for a condition, never for a fixed time.

``wait_until(predicate, timeout, what)`` polls ``predicate`` until it is true and fails with
``timed out after T s waiting for <what>`` when ``timeout`` passes first. ``what`` is a
description, or a function returning one: it is called (and any object formatted) only then,
so it may gather diagnostics at the moment of failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: object, *, interval: float = 0.02) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns something true; return that.

    Raises:
        AssertionError: ``timeout`` s passed with the predicate still false; the message names
            ``what`` (called first if it is callable).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}")
        time.sleep(interval)
