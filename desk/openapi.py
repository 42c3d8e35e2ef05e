"""The OpenAPI document of the intake API, served at /api/v1/openapi.json.

tests/desk/test_api.py checks every route is described and every response matches it.
"""

from tenants.ids import MAX_ID

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


AUTH_ERRORS = {
    "401": _error("Missing, unknown or revoked key."),
    "429": _error("Over the key's rate limit; see the Retry-After header."),
}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {
        "title": "AgentDesk intake API",
        "version": "1",
        "description": "Start runs of a tenant's AI employees and follow them.",
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
                        "schema": {"type": "string", "maxLength": 200},
                        "description": "Repeat a request safely: the same key and body "
                        "answer with the same run (200); a different body is a 409.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/StartRun"}}
                    },
                },
                "responses": {
                    "201": _json("The run was queued.", "RunSummary"),
                    "200": _json("This Idempotency-Key already started this run.", "RunSummary"),
                    "400": _error("Malformed JSON or wrong content type."),
                    **AUTH_ERRORS,
                    "404": _error("No such role for this key."),
                    "409": _error("Idempotency-Key reused with another body, or no version."),
                    "413": _error("The body is too large."),
                    "422": _error("The input does not match the role's schema (see details)."),
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
            "StartRun": {
                "type": "object",
                "required": ["role", "input"],
                "additionalProperties": False,
                "properties": {
                    "role": {"type": "string", "description": "The role's slug."},
                    "input": {"type": "object", "description": "Matches the role's schema."},
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
