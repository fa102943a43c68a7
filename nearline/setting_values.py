"""The value types of settings: each parses a variable's or a flag's text, or says what is wrong.

A parser raises ``ValueError`` with a short reason (``"must be >= 1"``); :mod:`nearline.settings`
turns it into a :class:`~nearline.errors.ConfigError` naming the variable, or argparse into a
usage error naming the flag.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Turns a variable's or flag's text into its value; raises ``ValueError`` saying what is wrong.
Parse = Callable[[str], Any]


def text(raw: str) -> str:
    """Any text."""
    return raw


def path(raw: str) -> Path:
    """A file or folder."""
    return Path(raw)


def paths(raw: str) -> tuple[Path, ...]:
    """Files or folders, comma-separated; blanks around and between items are dropped."""
    return tuple(Path(p) for p in keys(raw))


def keys(raw: str) -> tuple[str, ...]:
    """A comma-separated list; blanks around and between items are dropped."""
    return tuple(k.strip() for k in raw.split(",") if k.strip())


def switch(raw: str) -> bool:
    """A flag without a value (``store_true``); never given text."""
    raise ValueError("takes no value")


def whole(minimum: int, maximum: int | None = None) -> Parse:
    """A whole number in ``[minimum, maximum]``."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("not a whole number") from None
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be <= {maximum}")
        return value

    return parse


def number(minimum: float, *, inclusive: bool = True) -> Parse:
    """A number at least (``inclusive``) or above ``minimum``."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("not a number") from None
        if value != value or value < minimum or (value == minimum and not inclusive):
            raise ValueError(f"must be {'>=' if inclusive else '>'} {minimum:g}")
        return value

    return parse


class OneOf:
    """One of a few words (argparse shows them as the flag's choices)."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices

    def __call__(self, raw: str) -> str:
        if raw not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return raw
