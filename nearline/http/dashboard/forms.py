"""The "try it" form of a pipeline, built from its input schema, and the input read back from it.

One field per top-level property of an object schema: text for strings, number boxes for
numbers and integers, a checkbox for booleans, JSON for the rest (arrays, objects); any other
schema is one JSON field. Fields start with the pipeline's sample input. What comes back is
checked by the submit itself (the schema, the limits): a form cannot send what the API refuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from nearline.errors import RequestError
from nearline.pipelines.samples import sample_input
from nearline.pipelines.spec import Pipeline
from nearline.strict_json import StrictJSONError, load

#: A string field longer than this (or without a maxLength) is a text area.
SHORT_TEXT = 120
#: The one field of a schema that is not an object with properties: the whole input, as JSON.
WHOLE = "input (JSON)"


@dataclass(frozen=True)
class Field:
    """One form field: its name, kind (text, textarea, number, integer, boolean, json), value."""

    name: str
    kind: str
    value: str
    required: bool
    description: str = ""


def fields(pipeline: Pipeline) -> list[Field]:
    """The form's fields, filled with the pipeline's sample input."""
    schema, sample = pipeline.input_schema, sample_input(pipeline)
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, dict) or not props:
        return [Field(WHOLE, "json", _json(sample), True, "the whole input")]
    required = set(schema.get("required") or ())
    values = sample if isinstance(sample, dict) else {}
    return [_field(name, sub, values.get(name), name in required) for name, sub in props.items()]


def _field(name: str, schema: Any, value: Any, required: bool) -> Field:
    schema = schema if isinstance(schema, dict) else {}
    kind = {"string": "text", "number": "number", "integer": "integer", "boolean": "boolean"}.get(
        str(schema.get("type")), "json"
    )
    if kind == "text" and int(schema.get("maxLength", SHORT_TEXT + 1)) > SHORT_TEXT:
        kind = "textarea"
    if kind in ("text", "textarea"):
        shown = "" if value is None else str(value)
    elif kind == "boolean":
        shown = "true" if value else ""
    else:
        shown = "" if value is None else _json(value)
    return Field(name, kind, shown, required, str(schema.get("description", "")))


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value)


def read_input(pipeline: Pipeline, body: bytes) -> Any:
    """The input a posted form (``application/x-www-form-urlencoded``) describes; 400 naming
    the field that does not parse."""
    form = _form(body)
    out: dict[str, Any] = {}
    for f in fields(pipeline):
        raw = form.get(f"field.{f.name}", "")
        if f.kind == "boolean":
            out[f.name] = raw == "true"
        elif raw.strip() or (f.kind in ("text", "textarea") and f.required):
            out[f.name] = _value(f, raw)
    return out.get(WHOLE) if WHOLE in out or [f.name for f in fields(pipeline)] == [WHOLE] else out


def _value(f: Field, raw: str) -> Any:
    if f.kind in ("text", "textarea"):
        return raw
    try:
        if f.kind == "integer":
            return int(raw)
        value = load(raw.encode(), f"field {f.name!r}")
    except (StrictJSONError, ValueError) as exc:
        raise RequestError(f"field {f.name!r}: {exc}") from None
    if f.kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise RequestError(f"field {f.name!r} must be a number")
    return value


def split_request(pipeline: Pipeline, body: bytes) -> bytes:
    """The ``PUT /api/endpoints/{name}/traffic`` body a posted traffic form describes: fields
    ``traffic.<deployment>`` and ``mirror.<deployment>`` (whole percents) and ``reason``."""
    form = _form(body)
    doc: dict[str, Any] = {"traffic": {}, "mirror": {}, "reason": form.get("reason", "")}
    for d in pipeline.deployments:
        for part in ("traffic", "mirror"):
            raw = form.get(f"{part}.{d.name}", "").strip() or "0"
            if not raw.isdigit():
                raise RequestError(f"field '{part}.{d.name}' must be a whole percent, 0 to 100")
            doc[part][d.name] = int(raw)
    return json.dumps(doc).encode()


def _form(body: bytes) -> dict[str, str]:
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the form is not UTF-8 form data") from None
