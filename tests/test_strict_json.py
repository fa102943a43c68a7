"""Strict JSON (nearline.strict_json): what it refuses, where it says the fault is, and the
nesting pre-scan, checked against a plain tokenizer on random bytes."""

from __future__ import annotations

import json
import random

import pytest

from nearline.constants import MAX_JSON_DEPTH
from nearline.strict_json import StrictJSONError, deeper_than, load, problem


def reached(body: bytes) -> int:
    """The deepest nesting a JSON parser can reach before ``body`` stops being JSON: strings
    skipped escape by escape; outside them, a backslash is where a parser stops."""
    depth = deepest = 0
    inside = escaped = False
    for byte in body:
        char = chr(byte)
        if inside:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                inside = False
        elif char == '"':
            inside = True
        elif char == "\\":
            break
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def test_the_depth_check_sees_every_level_a_parser_reaches() -> None:
    rng = random.Random(7)
    pieces = [b"[", b"]", b"{", b"}", b'"', b"\\", b"\\\\", b'\\"', b"a", b","]
    for _ in range(20_000):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))
        depth = reached(body)
        assert depth == 0 or (deeper_than(body, depth - 1) and deeper_than(body, depth // 2)), body


def test_the_depth_check_is_exact_on_valid_json() -> None:
    rng = random.Random(11)
    texts = ["", "[", "]", "{}", '"', "\\", '\\"', "\u005b", "é"]

    def value(depth: int) -> tuple[object, int]:
        kind = rng.choice(["list", "dict", "text", "number"] if depth < 8 else ["text", "number"])
        if kind == "text":
            return "".join(rng.choice(texts) for _ in range(rng.randint(0, 4))), 0
        if kind == "number":
            return rng.random(), 0
        children = [value(depth + 1) for _ in range(rng.randint(0, 3))]
        inner = max((d for _, d in children), default=0) + 1
        if kind == "list":
            return [v for v, _ in children], inner
        return {rng.choice(texts) + str(i): v for i, (v, _) in enumerate(children)}, inner

    for _ in range(2_000):
        doc, depth = value(0)
        for ascii_only in (True, False):
            body = json.dumps(doc, ensure_ascii=ascii_only).encode()
            assert not deeper_than(body, depth) and (depth == 0 or deeper_than(body, depth - 1)), doc


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b'{"a": [1, {"b": []}]}', 4),
        (b'["[[[[", "]]]]", "\\"[[", "\\\\", [[]]]', 3),
        (b'{"k[": "\\\\\\"[{", "v": [[[]]]}', 4),
        (b"[" * 1000, 1000),
        (b"[" * 20_000 + b"]" * 20_000, 20_000),  # over several chunks
        (b'["' + b"[" * 1000, 1),  # an unterminated string: its brackets do not count
    ],
)
def test_nesting_skips_strings(body: bytes, depth: int) -> None:
    assert deeper_than(body, depth - 1) and not deeper_than(body, depth)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"v": [1, NaN]}', "v[1]: NaN is not a finite number; numbers must be finite"),
        (b'{"v": {"w": -Infinity}}', "v.w: -Infinity is not a finite number"),
        (b'{"v": 1e400}', "v: 1e400 is not a finite number"),
        (b'{"v": -1' + b"0" * 300 + b"e10}", "...00000e10 is not a finite number"),
        (b'{"n": 2' + b"0" * 310 + b"}", "n: an integer of 311 digits is out of range"),
        (b"NaN", "request body: NaN is not a finite number"),
        (b'{"t": ["ok", "\\ud800"]}', "t[1]: the string holds a lone UTF-16 surrogate"),
        (b'{"a": {"\\udfff": 1}}', "a: the key '\\udfff' holds a lone UTF-16 surrogate"),
        (b'{"a b": {"c": [NaN]}}', "['a b'].c[0]: NaN"),
        (b'{"a": 1, "a": 2}', "request body: the key 'a' appears twice in one object"),
        (b'{"s": "\xff"}', "request body is not UTF-8: byte 0xff at position 7"),
        (b'\xef\xbb\xbf{"s": "\xff"}', "request body is not UTF-8: byte 0xff at position 10"),
        ('{"s": 1}'.encode("utf-16"), "request body is not UTF-8"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "deeper than 64 levels"),
        (b"[" * 1_000_000, "deeper than 64 levels"),
        (b"{not json", "request body is not valid JSON"),
        (b"", "request body is not valid JSON"),
    ],
)
def test_load_refuses_and_names_the_place(body: bytes, message: str) -> None:
    with pytest.raises(StrictJSONError) as err:
        load(body)
    assert message in str(err.value)
    str(err.value).encode("utf-8")  # a message can always be sent back


@pytest.mark.parametrize(
    "value",
    [
        {"s": "😀 naïve \u0000", "n": [0, -0.0, 1e308, 5e-324, 2**63, -(2**1000)]},
        {"": None, "k": [True, False, {}]},
        json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH),
    ],
)
def test_load_accepts_what_python_writes(value: object) -> None:
    for ascii_only in (True, False):
        body = json.dumps(value, ensure_ascii=ascii_only).encode()
        assert load(body) == value
    assert load(b"\xef\xbb\xbf" + json.dumps(value).encode()) == value  # a byte-order mark


def test_problem_checks_python_values() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    assert problem({"p": [0.5, 1]}, "output") is None
    assert problem({"p": [0.5, float("nan")]}, "output") == (
        "output.p[1]: NaN is not a finite number; numbers must be finite, within ±1.8e+308"
    )
    assert problem(float("inf"), "output", "output") is not None
    assert problem((1, {2: 3}), "output") is None  # what json.dumps writes as [1, {"2": 3}]
    assert problem({(1, 2): 3}, "output") == "output: the key (1, 2) is a tuple, not a string"
    assert problem({"s": {1}}, "output") == "output.s: a set is not a JSON value"
    found = problem(cycle, "output")
    assert found is not None and found.endswith("arrays and objects nest deeper than 64 levels")
    assert len(found) < 200
