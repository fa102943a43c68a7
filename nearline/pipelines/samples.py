"""A sample input for a pipeline: its first ``examples:`` entry, or one built from its input schema.

``nearline check`` runs a pipeline without examples on a sample built here, and ``nearline
serve`` prints a ``curl`` line with one. The builder covers what input schemas usually say
(types, ``required``, ``properties``, ``items``, lengths and bounds, ``enum``, ``const``,
``default``, ``examples``, the first branch of ``anyOf``/``oneOf``); whatever it builds is
checked against the schema, and a schema it cannot satisfy gives None (add ``examples:``).
"""

from __future__ import annotations

from typing import Any

import jsonschema

from nearline.pipelines.spec import Pipeline

#: How deep the builder follows nested schemas before giving up.
_MAX_DEPTH = 32


def sample_input(pipeline: Pipeline) -> Any | None:
    """The pipeline's first example, else a sample built from its schema, else None."""
    if pipeline.examples:
        return pipeline.examples[0]
    return from_schema(pipeline.input_schema)


def from_schema(schema: dict[str, Any]) -> Any | None:
    """A value valid against ``schema`` (JSON Schema 2020-12), or None when none is found."""
    try:
        value = _build(schema, 0)
    except _NoSample:
        return None
    return value if jsonschema.Draft202012Validator(schema).is_valid(value) else None


class _NoSample(Exception):
    pass


def _build(schema: Any, depth: int) -> Any:
    if depth > _MAX_DEPTH or not isinstance(schema, dict):
        if schema is True or schema == {}:
            return {}
        raise _NoSample
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    for key in ("examples", "enum"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _build(schema[key][0], depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    builder = _BUILDERS.get(kind)  # type: ignore[arg-type]
    if builder is None:
        raise _NoSample
    return builder(schema, depth)


def _object(schema: dict[str, Any], depth: int) -> dict[str, Any]:
    props = schema.get("properties", {})
    required = schema.get("required", [])
    return {key: _build(props.get(key, {}), depth + 1) for key in required}


def _array(schema: dict[str, Any], depth: int) -> list[Any]:
    prefix = [_build(s, depth + 1) for s in schema.get("prefixItems", [])]
    count = max(int(schema.get("minItems", 1)), len(prefix))
    if "maxItems" in schema:
        count = min(count, int(schema["maxItems"]))
    items = schema.get("items", {})
    return (prefix + [_build(items, depth + 1) for _ in range(count - len(prefix))])[:count]


def _string(schema: dict[str, Any], depth: int) -> str:
    text = "sample"
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    text = text.ljust(low, "x")
    return text[: int(high)] if high is not None else text


def _number(schema: dict[str, Any], depth: int) -> float:
    if "minimum" in schema:
        return float(schema["minimum"])
    if "exclusiveMinimum" in schema:
        return float(schema["exclusiveMinimum"]) + 1
    if "maximum" in schema:
        return min(0.0, float(schema["maximum"]))
    return 0.0


def _integer(schema: dict[str, Any], depth: int) -> int:
    value = _number(schema, depth)
    return int(value) if value == int(value) else int(value) + 1


_BUILDERS = {
    "object": _object,
    "array": _array,
    "string": _string,
    "number": _number,
    "integer": _integer,
    "boolean": lambda schema, depth: False,
    "null": lambda schema, depth: None,
}
