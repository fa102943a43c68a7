"""The OpenAPI 3.1 document, generated from the catalog so each pipeline's input schema is in it.

Each pipeline gets its own ``/api/score/<name>`` path: its request body schema is exact, which is
what lets generated clients and schemathesis exercise the real input contract.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from nearline import __version__
from nearline.constants import LANES, MAX_TIMEOUT_S, MAX_WAIT_S
from nearline.outcomes import MAX_WINDOW_S, WINDOW_S

if TYPE_CHECKING:
    from nearline.pipelines.spec import Catalog, Pipeline

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_ACCEPTED = {
    "type": "object",
    "required": ["id", "statusQueryGetUri", "terminatePostUri", "purgeHistoryDeleteUri"],
    "properties": {
        k: {"type": "string"}
        for k in ("id", "statusQueryGetUri", "terminatePostUri", "purgeHistoryDeleteUri")
    },
}
_STATUS = {
    "type": "object",
    "required": [
        "instanceId",
        "name",
        "runtimeStatus",
        "input",
        "output",
        "customStatus",
        "createdTime",
        "lastUpdatedTime",
    ],
    "properties": {
        "instanceId": {"type": "string"},
        "name": {"type": "string"},
        "runtimeStatus": {"enum": ["Pending", "Running", "Completed", "Failed", "Terminated"]},
        "input": {},
        "output": {},
        "customStatus": {},
        "createdTime": {"type": ["string", "null"]},
        "lastUpdatedTime": {"type": ["string", "null"]},
    },
}
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_DEPLOYMENT = {
    "name": "nearline-deployment",
    "in": "header",
    "required": False,
    "description": "score with this deployment of the endpoint, bypassing the traffic split",
    "schema": {"type": "string"},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ERROR, "error") for c in codes}


def _score_operation(
    name: str, description: str, input_schema: dict[str, Any], examples: tuple[Any, ...] = ()
) -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["input"],
        "additionalProperties": False,
        "properties": {
            "input": copy.deepcopy(input_schema),
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
            "priority": {"enum": list(LANES)},
            "callback_url": {"type": "string", "format": "uri"},
        },
    }
    return {
        "post": {
            "operationId": f"score_{name}",
            "summary": description or f"Score with pipeline {name}",
            "parameters": [
                _WAIT,
                _DEPLOYMENT,
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                },
            ],
            "requestBody": {"required": True, "content": {"application/json": _body(body, examples)}},
            "responses": {
                "200": _json(_STATUS, "the job ended within the wait"),
                "202": _json(_ACCEPTED, "accepted; poll statusQueryGetUri"),
                **_errors(400, 401, 404, 409, 413, 422, 503),
            },
        }
    }


def _body(schema: dict[str, Any], examples: tuple[Any, ...]) -> dict[str, Any]:
    """The request body's media type: the pipeline's examples as whole bodies, so that "Try it
    out" starts from a request that scores (not one generated from the schema, with a
    ``callback_url`` to example.com)."""
    content: dict[str, Any] = {"schema": schema}
    if examples:
        content["examples"] = {
            f"example{i + 1}": {"summary": f"example {i + 1}", "value": {"input": copy.deepcopy(e)}}
            for i, e in enumerate(examples)
        }
    return content


def _examples(pipeline: Pipeline) -> tuple[Any, ...]:
    """The pipeline's examples, else a sample built from its input schema, else none."""
    from nearline.pipelines.samples import sample_input

    sample = sample_input(pipeline)
    return pipeline.examples or (() if sample is None else (sample,))


def openapi_document(catalog: Catalog, server_url: str) -> dict[str, Any]:
    """OpenAPI 3.1 for the routes of docs/api.md (Routes), with one score path per pipeline."""
    paths: dict[str, Any] = {
        f"/api/score/{p.name}": _score_operation(p.name, p.description, p.input_schema, _examples(p))
        for p in catalog
    }
    paths["/api/jobs/{id}"] = {
        "get": {
            "operationId": "get_job",
            "parameters": [_ID, _WAIT],
            "responses": {
                "200": _json(_STATUS, "terminal"),
                "202": _json(_STATUS, "pending or running"),
                **_errors(400, 401, 404),
            },
        },
        "delete": {
            "operationId": "purge_job",
            "parameters": [_ID],
            "responses": {"200": {"description": "purged"}, **_errors(401, 404, 409)},
        },
    }
    paths["/api/jobs/{id}/terminate"] = {
        "post": {
            "operationId": "terminate_job",
            "parameters": [
                _ID,
                {"name": "reason", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {"202": {"description": "terminated"}, **_errors(401, 404, 410)},
        },
    }
    paths["/api/pipelines"] = {
        "get": {
            "operationId": "list_pipelines",
            "responses": {"200": {"description": "pipelines with their input JSON Schemas"}, **_errors(401)},
        }
    }
    paths.update(_endpoint_paths())
    paths.update(_dead_letter_paths())
    paths["/api/health"] = {"get": {"operationId": "health", "responses": {"200": {"description": "ok"}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nearline",
            "version": __version__,
            "description": "Near-real-time scoring: submit, get 202 + a status URL, poll.",
        },
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "code": {"type": "apiKey", "in": "query", "name": "code"},
            }
        },
    }


def _endpoint_paths() -> dict[str, Any]:
    """``/api/endpoints`` and ``/api/endpoints/{name}`` (docs/deployments.md)."""
    return {
        "/api/endpoints": {
            "get": {
                "operationId": "list_endpoints",
                "responses": {
                    "200": {"description": "endpoints with deployments and traffic"},
                    **_errors(401),
                },
            }
        },
        "/api/endpoints/{name}": {
            "get": {
                "operationId": "read_endpoint",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "deployments, models, traffic"}, **_errors(401, 404)},
            }
        },
        "/api/endpoints/{name}/traffic": {
            "put": {
                "operationId": "set_traffic",
                "description": "change the live split (an admin key): docs/deployments.md",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _SPLIT}}},
                "responses": {
                    "200": {"description": "the endpoint with its new split"},
                    **_errors(400, 401, 403, 404, 413),
                },
            }
        },
        "/api/endpoints/{name}/compare": {
            "get": {
                "operationId": "compare_deployments",
                "description": "each deployment's requests, failures and latency, and mirror agreement",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "window_s", "in": "query", "schema": _WINDOW},
                ],
                "responses": {"200": {"description": "the comparison"}, **_errors(400, 401, 404)},
            }
        },
    }


#: ``?window_s=`` of ``/compare`` (nearline/outcomes.py).
_WINDOW = {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_S, "default": WINDOW_S}


_PERCENTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100}}
#: ``PUT /api/endpoints/{name}/traffic``: traffic sums to 100 (or all 0); mirror at most 50 in
#: all, only to deployments at 0 (rules checked by the server, nearline/pipelines/traffic.py).
_SPLIT = {
    "type": "object",
    "required": ["traffic"],
    "additionalProperties": False,
    "properties": {"traffic": _PERCENTS, "mirror": _PERCENTS, "reason": {"type": "string", "maxLength": 500}},
}


def _dead_letter_paths() -> dict[str, Any]:
    """The admin API for dead letters (nearline/http/admin.py; docs/operations.md)."""
    text = {"type": "string"}
    filters = [
        {"name": "pipeline", "in": "query", "schema": text},
        {"name": "reason", "in": "query", "schema": text},
        {"name": "older_than_s", "in": "query", "schema": {"type": "number", "minimum": 0}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ]
    chosen = [
        {"name": "ids", "in": "query", "schema": text},
        {"name": "all", "in": "query", "schema": {"type": "boolean"}},
    ]
    body = {
        "type": "object",
        "properties": {"ids": {"type": "array", "items": text}, "all": {"type": "boolean"}},
    }

    def op(
        name: str, answer: str, codes: tuple[int, ...] = (400, 401, 403, 404), **more: Any
    ) -> dict[str, Any]:
        responses = {"200": {"description": answer}, **_errors(*codes)}
        return {
            "operationId": name,
            "description": "an admin key: docs/operations.md",
            **more,
            "responses": responses,
        }

    return {
        "/api/admin/deadletters": {
            "get": op("list_dead_letters", "dead letters, oldest first", parameters=filters),
            "delete": op("purge_dead_letters", "how many were purged", parameters=chosen + filters),
        },
        "/api/admin/deadletters/{id}": {
            "get": op(
                "read_dead_letter",
                "the dead letter and its request",
                codes=(401, 403, 404),
                parameters=[{"name": "id", "in": "path", "required": True, "schema": text}],
            )
        },
        "/api/admin/deadletters/redrive": {
            "post": op(
                "redrive_dead_letters",
                "the ids redriven and missing",
                requestBody={"required": True, "content": {"application/json": {"schema": body}}},
            )
        },
    }
