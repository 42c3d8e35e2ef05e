"""The OpenAPI document of the intake API, served at /api/v1/openapi.json.

It states every status each operation answers and every constraint the server enforces:
tests/desk/test_api.py checks every route is described and every response matches it, and
tests/desk/test_api_fuzz.py fuzzes the API from this document (schemathesis).
"""

from tenants.ids import MAX_ID
from tenants.safe_json import MAX_DEPTH, MAX_NUMBER, SAFE_STRING_PATTERN

SAFE_STRING = {"type": "string", "pattern": SAFE_STRING_PATTERN}
# Any safe JSON value (tenants.safe_json); the nesting limit is stated, not encoded.
SAFE_VALUE = {
    "description": f"Safe JSON: no NUL character or lone surrogate in any string or key, "
    f"finite numbers of magnitude at most {MAX_NUMBER}, nested at most {MAX_DEPTH} deep.",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        {"type": "number", "minimum": -MAX_NUMBER, "maximum": MAX_NUMBER},
        SAFE_STRING,
        {"type": "array", "items": {"$ref": "#/components/schemas/SafeValue"}},
        {"$ref": "#/components/schemas/SafeObject"},
    ],
}
SAFE_OBJECT = {
    "type": "object",
    "propertyNames": SAFE_STRING,
    "additionalProperties": {"$ref": "#/components/schemas/SafeValue"},
}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array"},
            },
        }
    },
}

# Ids are random (tenants.ids): not ordered, not consecutive, and within JavaScript's exact
# integer range.
RANDOM_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}

RUN_SUMMARY_PROPERTIES = {
    "id": RANDOM_ID,
    "status": {
        "enum": [
            "queued",
            "running",
            "waiting_approval",
            "completed",
            "rejected",
            "failed",
            "cancelled",
        ]
    },
    "role": {"type": "string"},
    "version": {"type": "integer"},
    "created_at": {"type": "string", "format": "date-time"},
    "links": {
        "type": "object",
        "required": ["self"],
        "properties": {"self": {"type": "string"}},
    },
}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _error(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, ref: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _header(description: str, schema: dict, *, required: bool = True) -> dict:
    return {"description": description, "required": required, "schema": schema}


LOCATION = {"Location": _header("The run's URL.", {"type": "string"})}
AUTH_ERRORS = {
    "401": _error("Missing, unknown or revoked key."),
    "429": {
        **_error("Over the key's rate limit; see the Retry-After header."),
        "headers": {
            "Retry-After": _header(
                "Seconds until the next minute's requests.", {"type": "integer", "minimum": 0}
            )
        },
    },
}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {
        "title": "AgentDesk intake API",
        "version": "1",
        "description": "Start runs of a tenant's AI employees and follow them. Every error "
        'is JSON: `{"error": {"code", "message", "details"}}`. Bodies are '
        "`application/json` of at most 64 KiB (DESK_API_MAX_BODY_BYTES), and safe JSON: no "
        "NUL character or lone surrogate in any string or key, finite numbers of magnitude "
        f"at most {MAX_NUMBER} (no NaN or Infinity), nested at most {MAX_DEPTH} deep; "
        "anything else is a 422 with code `unsafe_json`.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/runs": {
            "post": {
                "summary": "Start a run",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 200, "pattern": "^[ -~]*$"},
                        "description": "Repeat a request safely: the same key and body "
                        "answer with the same run (200); a different body is a 409. At most "
                        "200 printable ASCII characters (else a 400), surrounding spaces "
                        "ignored. Without it (or blank), every request starts a new run.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/StartRun"}}
                    },
                },
                "responses": {
                    "201": {**_json("The run was queued.", "RunSummary"), "headers": LOCATION},
                    "200": {
                        **_json("This Idempotency-Key already started this run.", "RunSummary"),
                        "headers": LOCATION,
                    },
                    "400": _error(
                        "Malformed JSON (`malformed_json`), a content type other than "
                        "application/json (`unsupported_content_type`) or a bad "
                        "Idempotency-Key (`invalid_idempotency_key`)."
                    ),
                    **AUTH_ERRORS,
                    "403": _error("The tenant is suspended (`tenant_inactive`)."),
                    "404": _error("No such role for this key (`role_not_found`)."),
                    "409": _error(
                        "Idempotency-Key reused with another body (`idempotency_conflict`), "
                        "or the role has no published version (`no_active_version`)."
                    ),
                    "413": _error("The body is too large (`payload_too_large`)."),
                    "422": _error(
                        "The body is not an object of `role` and `input` "
                        "(`invalid_request`), is not safe JSON (`unsafe_json`), or the input "
                        "does not match the role's schema (`invalid_input`); see details."
                    ),
                },
            }
        },
        "/api/v1/runs/{run_id}": {
            "get": {
                "summary": "A run's status, steps, outputs and pending approval",
                "parameters": [
                    {
                        "name": "run_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                        "description": "A run's id; any other integer is a 404.",
                    }
                ],
                "responses": {
                    "200": _json("The run.", "Run"),
                    **AUTH_ERRORS,
                    "404": _error("No such run for this key's tenant."),
                },
            }
        },
        "/api/v1/roles": {
            "get": {
                "summary": "The roles this key may start",
                "responses": {"200": _json("The roles.", "RoleList"), **AUTH_ERRORS},
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "The OpenAPI document."}},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": ERROR,
            "SafeValue": SAFE_VALUE,
            "SafeObject": SAFE_OBJECT,
            "StartRun": {
                "type": "object",
                "required": ["role", "input"],
                "additionalProperties": False,
                "properties": {
                    "role": {**SAFE_STRING, "minLength": 1, "description": "The role's slug."},
                    "input": {
                        "$ref": "#/components/schemas/SafeObject",
                        "description": "Matches the role's input schema (GET /api/v1/roles); "
                        "safe JSON.",
                    },
                },
            },
            "RunSummary": {
                "type": "object",
                "required": list(RUN_SUMMARY_PROPERTIES),
                "properties": RUN_SUMMARY_PROPERTIES,
            },
            "Run": {
                "type": "object",
                "required": [
                    *RUN_SUMMARY_PROPERTIES,
                    "started_at",
                    "finished_at",
                    "error",
                    "usage",
                    "steps",
                    "outputs",
                    "pending_approval",
                ],
                "properties": {
                    **RUN_SUMMARY_PROPERTIES,
                    "started_at": NULLABLE_TIME,
                    "finished_at": NULLABLE_TIME,
                    "error": {"type": "string"},
                    "usage": {
                        "type": "object",
                        "required": ["prompt_tokens", "completion_tokens"],
                        "properties": {
                            "prompt_tokens": {"type": "integer"},
                            "completion_tokens": {"type": "integer"},
                        },
                    },
                    "steps": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": [
                                "key",
                                "kind",
                                "category",
                                "status",
                                "attempts",
                                "started_at",
                                "finished_at",
                            ],
                            "properties": {
                                "key": {"type": "string"},
                                "kind": {"enum": ["llm", "tool", "review"]},
                                "category": {"type": "string"},
                                "status": {"type": "string"},
                                "attempts": {"type": "integer"},
                                "started_at": NULLABLE_TIME,
                                "finished_at": NULLABLE_TIME,
                            },
                        },
                    },
                    "outputs": {
                        "type": "object",
                        "description": "Completed steps' outputs, except client records read.",
                    },
                    "pending_approval": {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "required": [
                                    "id",
                                    "step",
                                    "category",
                                    "required_approvals",
                                    "approvals",
                                    "due_at",
                                ],
                                "properties": {
                                    "id": RANDOM_ID,
                                    "step": {"type": "string"},
                                    "category": {"type": "string"},
                                    "required_approvals": {"type": "integer"},
                                    "approvals": {"type": "integer"},
                                    "due_at": {"type": "string", "format": "date-time"},
                                },
                            },
                        ]
                    },
                },
            },
            "RoleList": {
                "type": "object",
                "required": ["roles"],
                "properties": {
                    "roles": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["slug", "name", "purpose", "input_schema"],
                            "properties": {
                                "slug": {"type": "string"},
                                "name": {"type": "string"},
                                "purpose": {"type": "string"},
                                "input_schema": {"type": "object"},
                                "target_turnaround_minutes": {"type": "integer"},
                            },
                        },
                    }
                },
            },
        },
    },
}
