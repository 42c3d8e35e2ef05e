"""Checking a reviewer's edit before it is recorded: a draft against the step's output
schema, a tool call against the tool's argument schema, a checkpoint's corrections against
the schemas of the steps they correct. What is approved is what runs, so it must be valid."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from desk.tools import ToolRefused, get_tool
from roles.workflow import schema_errors

REQUIRED = re.compile(r"^'(.+)' is a required property$")


class InvalidEdit(Exception):
    def __init__(self, message: str, errors: list[dict[str, str]]):
        super().__init__(message)
        self.errors = errors


def step_definitions(request) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in request.run.role_version.definition["steps"]}


def edit_schema(request) -> dict[str, Any] | None:
    """The JSON Schema an edit of this request's proposal is checked against (for a draft
    or a tool call), or None for a checkpoint."""
    kind = request.step.kind
    if kind == "llm":
        return step_definitions(request)[request.step.key]["output_schema"]
    if kind == "tool":
        try:
            return get_tool(request.proposal.get("tool", "")).args_schema
        except ToolRefused:
            return {"type": "object"}
    return None


def checked_edit(request, edited: Any) -> dict[str, Any]:
    """The edited proposal, complete and valid, in the proposal's own shape.

    Raises InvalidEdit listing every problem found.
    """
    if not isinstance(edited, dict):
        raise InvalidEdit("The edit must be an object.", [])
    kind = request.step.kind
    proposal = request.proposal
    if kind == "llm":
        draft = edited.get("draft")
        _check(edit_schema(request), draft, prefix="")
        return {"draft": draft}
    if kind == "tool":
        if edited.get("tool", proposal.get("tool")) != proposal.get("tool"):
            raise InvalidEdit(
                "An edit may change the call's arguments, not which tool it calls.",
                [{"field": "tool", "message": "must stay " + str(proposal.get("tool"))}],
            )
        args = edited.get("args")
        _check(edit_schema(request), args, prefix="")
        return {"tool": proposal.get("tool"), "args": args}
    # A checkpoint: the reviewer corrects outputs of the steps before it; what follows
    # uses the corrected outputs.
    outputs = edited.get("outputs")
    if not isinstance(outputs, dict):
        raise InvalidEdit("The checkpoint's edit must give the corrected outputs.", [])
    known = proposal.get("outputs") or {}
    unknown = sorted(set(outputs) - set(known))
    if unknown:
        raise InvalidEdit(
            "Only outputs of earlier steps can be corrected.",
            [{"field": key, "message": "is not an earlier step"} for key in unknown],
        )
    definitions = step_definitions(request)
    errors: list[dict[str, str]] = []
    for key, value in outputs.items():
        schema = definitions.get(key, {}).get("output_schema")
        if schema is not None:
            errors += [
                {"field": f"{key}.{e['field']}", "message": e["message"]}
                for e in schema_errors(schema, value)
            ]
    if errors:
        raise InvalidEdit("The corrected outputs do not fit their steps' schemas.", errors)
    return {**proposal, "outputs": {**known, **outputs}}


def _check(schema: dict[str, Any] | None, value: Any, *, prefix: str) -> None:
    if not isinstance(value, dict):
        raise InvalidEdit("The edit must be an object.", [])
    errors = []
    for error in schema_errors(schema or {"type": "object"}, value):
        missing = REQUIRED.match(error["message"])
        if error["field"] == "(root)" and missing:
            error = {"field": missing.group(1), "message": "This field is required."}
        errors.append(error)
    if errors:
        raise InvalidEdit(
            "The edit does not fit what the step must produce: "
            + "; ".join(f"{e['field']}: {e['message']}" for e in errors),
            errors,
        )


def proposal_diff(before: Any, after: Any) -> str:
    """A unified diff of two proposals as pretty JSON (what an edit changed)."""

    def lines(value):
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    return "\n".join(
        difflib.unified_diff(lines(before), lines(after), "proposed", "approved", lineterm="")
    )
