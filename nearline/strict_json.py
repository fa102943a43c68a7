"""Strict JSON: what nearline accepts as a request body and stores as a job's output.

The rules are I-JSON's (RFC 7493, the profile of JSON that every parser reads alike) plus a
nesting limit, because each thing they exclude parses in Python and then breaks later:

* UTF-8 text (a leading byte-order mark is ignored), with no lone UTF-16 surrogate in a string
  or an object key: ``"\\ud800"`` parses to a Python string that cannot be encoded as UTF-8, so a
  record holding one may be stored and then never read back;
* numbers that fit an IEEE 754 double: no ``NaN``, ``Infinity`` or ``-Infinity`` (Python reads
  them, JSON Schema's ``minimum``/``maximum`` let NaN through, JSON renderers refuse them), and
  nothing beyond ±1.8e308 (``1e400`` parses to ``inf``; a 400-digit integer breaks ``float()``);
* no object key given twice (parsers differ on which one wins);
* arrays and objects nested at most :data:`~nearline.constants.MAX_JSON_DEPTH` deep. A body is
  measured on its bytes before it is parsed, so the parser never recurses that deep (Python's
  raises ``RecursionError`` near 1,000 levels, and deep values break encoders further on).

:func:`load` parses a body by these rules; :func:`problem` checks a value built in Python (a
pipeline's output) by the same rules. Both name the place at fault, e.g. ``input.values[3]``.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import sys
from itertools import accumulate
from typing import Any

from nearline.constants import MAX_JSON_DEPTH

#: The largest number a double holds; I-JSON numbers stay within ±this.
MAX_NUMBER = sys.float_info.max
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NESTING = [0] * 256
_NESTING[ord("[")] = _NESTING[ord("{")] = 1
_NESTING[ord("]")] = _NESTING[ord("}")] = -1
_CHUNK = 8192  # brackets measured at a time: a deep body is refused after its first chunk
#: Bytes to "9" for digits and " " for the rest: a run of 309 nines is an integer that may be
#: over MAX_NUMBER (which has 309 digits), found without a Python loop over the body.
_DIGIT_RUNS = bytes(0x39 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGITS = b"9" * len(str(int(MAX_NUMBER)))
#: A ``\uD800``-``\uDFFF`` escape: the only way a surrogate gets into a parsed string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SHOWN = 40  # a key or a number longer than this is quoted back abridged


class StrictJSONError(ValueError):
    """A value or body breaks the rules; the message names the place."""


class _Number(float):
    """A non-finite float parsed from the body, remembering how the body wrote it."""

    text: str


def load(body: bytes, name: str = "request body", *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse ``body`` by the rules above.

    Args:
        body: The raw bytes.
        name: What ``body`` is called in messages about the whole of it.
        max_depth: Deepest nesting of arrays and objects allowed (the outermost is level 1).

    Raises:
        StrictJSONError: Not UTF-8, nested too deep, not JSON, or breaking a rule above; the
            message names the place (e.g. ``input.values[3]: NaN is not a finite number ...``).
    """
    bom = len(codecs.BOM_UTF8) if body.startswith(codecs.BOM_UTF8) else 0
    try:
        text = body[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start
        raise StrictJSONError(
            f"{name} is not UTF-8: byte 0x{body[at]:02x} at position {at} ({exc.reason})"
        ) from None
    if deeper_than(body, max_depth):
        raise StrictJSONError(f"{name} nests arrays and objects deeper than {max_depth} levels")
    odd: list[float] = []  # the non-finite numbers met while parsing
    try:
        value = json.loads(
            text,
            parse_constant=lambda literal: _non_finite(float(literal), literal, odd),
            parse_float=lambda literal: _non_finite(float(literal), literal, odd),
            object_pairs_hook=_object,
        )
    except RecursionError:  # cannot happen after deeper_than(); kept so that it is never a 500
        raise StrictJSONError(f"{name} nests arrays and objects deeper than {max_depth} levels") from None
    except StrictJSONError as exc:
        raise StrictJSONError(f"{name}: {exc}") from None
    except ValueError as exc:
        raise StrictJSONError(f"{name} is not valid JSON: {exc}") from None
    # Only these can hide a problem once parsed; most bodies skip the walk.
    if odd or _SURROGATE_ESCAPE.search(text) or _LONG_DIGITS in body.translate(_DIGIT_RUNS):
        found = problem(value, whole=name, max_depth=max_depth)
        if found:
            raise StrictJSONError(found)
    return value


def deeper_than(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` in ``body``, without parsing it.

    Brackets inside strings do not count; brackets need not balance (an unclosed ``[[[[``
    counts as deep as it goes). Linear in ``len(body)``, and it stops at the first level over
    ``limit``.
    """
    if body.count(b"[") + body.count(b"{") <= limit:  # the common case: too few to be too deep
        return False
    # Drop escaped backslashes, then escaped quotes: every quote left opens or closes a string,
    # so the pieces between quotes alternate outside/inside. (Past an error, such as a
    # backslash outside a string, this may miscount; the parser stops at that error anyway.)
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    depth = 0
    for start in range(0, len(brackets), _CHUNK):
        levels = list(accumulate(map(_NESTING.__getitem__, brackets[start : start + _CHUNK]), initial=depth))
        if max(levels) > limit:
            return True
        depth = levels[-1]
    return False


def problem(
    value: Any, prefix: str = "", whole: str = "value", *, max_depth: int = MAX_JSON_DEPTH
) -> str | None:
    """A place where ``value`` breaks the rules (the first one found), or None.

    Args:
        value: A value built of dicts, lists, tuples, strings, numbers, booleans and None.
        prefix: The name paths start with (``"output"`` gives ``output.scores[2]``; ``""``
            gives ``scores[2]``).
        whole: What ``value`` is called when the problem is ``value`` itself.
        max_depth: Deepest nesting of arrays and objects allowed.

    Returns:
        ``"<path>: <what is wrong>"``, e.g. ``"output.ratio: NaN is not a finite number; ..."``.
    """
    what = _what(value, 1, max_depth)
    if what:
        return f"{_where(prefix, (), whole)}: {what}"
    todo: list[tuple[Any, tuple[Any, ...]]] = [(value, ())] if isinstance(value, dict | list | tuple) else []
    while todo:
        container, path = todo.pop()
        for key, item in container.items() if isinstance(container, dict) else enumerate(container):
            if type(key) is not int and not (type(key) is str and key.isascii()):
                what = _bad_key(key)
                if what:
                    return f"{_where(prefix, path, whole)}: {what}"
            kind = type(item)  # the plain cases first, without a call: this runs once per value
            if (kind is float and item - item == 0) or (kind is str and item.isascii()):
                continue
            if (kind is int and -MAX_NUMBER <= item <= MAX_NUMBER) or kind is bool or item is None:
                continue
            what = _what(item, len(path) + 2, max_depth)
            if what:
                return f"{_where(prefix, (*path, key), whole)}: {what}"
            if isinstance(item, dict | list | tuple):
                todo.append((item, (*path, key)))
    return None


_SURROGATE = "holds a lone UTF-16 surrogate; text must be valid Unicode (UTF-8)"
_RANGE = f"numbers must be finite, within ±{MAX_NUMBER:.1e}"


def _what(item: Any, depth: int, max_depth: int) -> str | None:
    """What is wrong with ``item`` itself (not its contents), at ``depth``; None if nothing."""
    if item is None or isinstance(item, bool):
        return None
    if isinstance(item, str):
        return None if _encodable(item) else f"the string {_SURROGATE}"
    if isinstance(item, int):
        if -MAX_NUMBER <= item <= MAX_NUMBER:
            return None
        return f"an integer of {len(str(abs(item)))} digits is out of range; {_RANGE}"
    if isinstance(item, float):
        return None if math.isfinite(item) else f"{_literal(item)} is not a finite number; {_RANGE}"
    if isinstance(item, dict | list | tuple):
        return f"arrays and objects nest deeper than {max_depth} levels" if depth > max_depth else None
    return f"a {type(item).__name__} is not a JSON value"


def _bad_key(key: Any) -> str | None:
    """What is wrong with an object key; json.dumps writes numbers, booleans and None as strings."""
    if isinstance(key, str):
        return None if _encodable(key) else f"the key {_shown(key)} {_SURROGATE}"
    if isinstance(key, int | float | bool | None):
        return None
    return f"the key {key!r} is a {type(key).__name__}, not a string"


def _non_finite(number: float, literal: str, odd: list[float]) -> float:
    """``number`` as parsed, or, when it is not finite, a marked copy remembering ``literal``."""
    if math.isfinite(number):
        return number
    marked = _Number(number)
    marked.text = literal
    odd.append(marked)
    return marked


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"the key {_shown(key)} appears twice in one object")
            seen.add(key)
    return obj


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _literal(number: float) -> str:
    text = getattr(number, "text", None)
    if text is None:
        return "NaN" if math.isnan(number) else "Infinity" if number > 0 else "-Infinity"
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN // 2]}...{text[-8:]}"


def _shown(key: str) -> str:
    """A key quoted back: ASCII only (no surrogate can reach a response), abridged."""
    text = ascii(key)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 4]}...'"


def _where(prefix: str, path: tuple[Any, ...], whole: str) -> str:
    parts = [prefix]
    for key in path:
        if isinstance(key, int) and not isinstance(key, bool):
            parts.append(f"[{key}]")
        elif isinstance(key, str) and key.isidentifier() and len(key) <= _SHOWN:
            parts.append(f".{key}" if any(parts) else key)
        else:
            parts.append(f"[{_shown(str(key))}]")
    where = "".join(parts) or whole
    return where if len(where) <= 3 * _SHOWN else f"{where[:_SHOWN]}...{where[-_SHOWN:]}"
