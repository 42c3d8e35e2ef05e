"""Evaluating one golden case against one role version, without side effects.

The version's steps are walked as the runtime walks them (desk.engine's context and
rendering, the configured model provider), with three differences:

- a tool that only reads (category `data_access` or `internal`, no side effects) runs for
  real, read-only, inside the tenant's row-level-security context, under the version's
  allowed tools and data kinds (an empty allow-list allows nothing); any other tool
  (`email.send`, anything with side effects) is never executed: it is recorded as called
  with its rendered arguments and its output is `{"simulated": true}`;
- a step the approval gate would stop (`approvals.gate.step_rule` is not None, unless an
  earlier gated step covers it, as `covered_by` does at run time) counts as a gate hit and
  goes on as if approved unchanged;
- nothing is written: no run, no outbox message, no usage. The caller audits the reads
  (`Evaluation.reads`) with the result it saves (roles.golden.run_suite).

Expectations (checked by `validate_expectations` when a case is saved):

    {"output_schema": {...},        JSON Schema the final step's output must satisfy (a
                                    simulated call's output is the call's arguments)
     "fields": [{"path": "draft.subject", "op": "equals" | "contains" | "matches",
                 "value": ...}],    `path` starts with a step key; a tool step's entry is
                                    {"args": ..., "output": ...}
     "tools_called": ["email.send"], "tools_not_called": ["records.get"],
     "gates_hit": ["draft"],        step keys that must hit a gate
     "max_tokens": 2000, "max_cost": "0.05",
     "rubric": "The reply is courteous."}   model-graded: {"pass": bool, "reason": str}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from approvals.gate import step_rule
from desk.engine import model_request_for, render_step, template_context
from desk.models import ModelPrice
from desk.providers import ModelRequest, Provider, ProviderError, get_provider
from desk.tools import ToolContext, ToolRefused, get_tool
from desk.tools.base import DataRead
from roles.models import RoleVersion
from roles.workflow import (
    RenderError,
    reads_records,
    schema_errors,
    target_refusal,
    tool_call_refusal,
    validate_json_schema,
)
from tenants import rls

EXPECTATION_KEYS = {
    "output_schema",
    "fields",
    "tools_called",
    "tools_not_called",
    "gates_hit",
    "max_tokens",
    "max_cost",
    "rubric",
}
FIELD_OPS = ("equals", "contains", "matches")
READ_ONLY_CATEGORIES = ("data_access", "internal")
RUBRIC_SCHEMA = {
    "type": "object",
    "properties": {"pass": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["pass", "reason"],
    "additionalProperties": False,
}


def canonical_digest(value: Any) -> str:
    """SHA-256 of a JSON value's canonical form (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def bundle_digest(version: RoleVersion) -> str:
    """What a suite run is for: the digest of the version's bundle as it is now."""
    return version.digest


def case_digest(*, input: Any, expectations: Any) -> str:
    """What a case result is for: the digest of the case's content when evaluated."""
    return canonical_digest({"input": input, "expectations": expectations})


def provider_label() -> str:
    return settings.DESK_LLM_PROVIDER


# --- expectations --------------------------------------------------------------------------


def _names(value: Any, *, key: str, errors: list[str]) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        errors.append(f"'{key}' must be a list of names.")


def validate_expectations(expectations: Any) -> None:
    """Raise ValidationError listing every problem of a case's expectations."""
    if not isinstance(expectations, dict):
        raise ValidationError("The expectations must be a JSON object.")
    errors: list[str] = []
    unknown = sorted(set(expectations) - EXPECTATION_KEYS)
    if unknown:
        errors.append(
            f"Unknown expectations: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(EXPECTATION_KEYS))})."
        )
    if "output_schema" in expectations:
        try:
            validate_json_schema(expectations["output_schema"], label="'output_schema'")
        except ValidationError as exc:
            errors.extend(exc.messages)
    fields = expectations.get("fields", [])
    if not isinstance(fields, list):
        errors.append("'fields' must be a list of {path, op, value}.")
        fields = []
    for index, item in enumerate(fields, start=1):
        where = f"Field {index}"
        if not isinstance(item, dict) or set(item) != {"path", "op", "value"}:
            errors.append(f"{where} must be an object with exactly 'path', 'op' and 'value'.")
            continue
        path = item["path"]
        if not isinstance(path, str) or not all(path.split(".")):
            errors.append(f"{where}: 'path' must be dotted text starting with a step key.")
        if item["op"] not in FIELD_OPS:
            errors.append(f"{where}: 'op' must be one of {', '.join(FIELD_OPS)}.")
        elif item["op"] == "matches":
            if not isinstance(item["value"], str):
                errors.append(f"{where}: 'matches' needs a regular expression as text.")
            else:
                try:
                    re.compile(item["value"])
                except re.error as exc:
                    errors.append(f"{where}: not a regular expression: {exc}.")
    for key in ("tools_called", "tools_not_called", "gates_hit"):
        if key in expectations:
            _names(expectations[key], key=key, errors=errors)
    if "max_tokens" in expectations:
        value = expectations["max_tokens"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            errors.append("'max_tokens' must be a whole number of at least 0.")
    if "max_cost" in expectations:
        value = expectations["max_cost"]
        try:
            if not isinstance(value, str) or Decimal(value) < 0 or not Decimal(value).is_finite():
                raise InvalidOperation
        except InvalidOperation:
            errors.append("'max_cost' must be a decimal number as text, e.g. \"0.05\".")
    if "rubric" in expectations and (
        not isinstance(expectations["rubric"], str) or not expectations["rubric"].strip()
    ):
        errors.append("'rubric' must be non-empty text.")
    if errors:
        raise ValidationError(errors)


# --- evaluation ------------------------------------------------------------------------------


@dataclass
class Evaluation:
    status: str = "passed"  # passed | failed | error
    checks: list[dict[str, Any]] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)  # by step key
    tools_called: list[dict[str, Any]] = field(default_factory=list)
    gates_hit: list[str] = field(default_factory=list)
    tokens: int = 0
    cost: Decimal = Decimal(0)
    error: str = ""
    # What the read-only tools read (and refused), by step: the caller audits them.
    reads: list[tuple[dict[str, Any], DataRead]] = field(default_factory=list)
    refusals: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    final_output: Any = None

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})


class _Stop(Exception):
    def __init__(self, message: str, *, status: str = "error"):
        super().__init__(message)
        self.status = status


def _complete(provider: Provider, request: ModelRequest):
    return async_to_sync(provider.acomplete)(request)


def _price(model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    with transaction.atomic():
        price = ModelPrice.objects.filter(model=model).first()
    if price is None:
        return Decimal(0)
    return price.cost(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def evaluate(
    *, version: RoleVersion, input: Any, expectations: dict[str, Any], provider=None
) -> Evaluation:
    """Walk `version`'s steps on `input` and check `expectations`; never writes, never
    raises for what the version or the case does (that is the result's status)."""
    result = Evaluation()
    try:
        provider = provider or _tenant_provider(version)
        _walk(version, input, provider, result)
    except _Stop as stop:
        result.status = stop.status
        result.error = str(stop)
        if stop.status == "failed":
            result.check("step outputs satisfy their schemas", False, str(stop))
        return result
    model = (version.definition.get("model") or {}).get("name", "offline-1")
    _check(result, expectations, provider, model=model)
    result.status = "passed" if all(c["ok"] for c in result.checks) else "failed"
    return result


def _tenant_provider(version: RoleVersion) -> Provider:
    """The tenant's own provider (its API key, if it has one)."""
    with rls.tenant_context(version.tenant_id):
        tenant = version.tenant
    try:
        return get_provider(tenant=tenant)
    except ProviderError as exc:
        raise _Stop(f"The model provider cannot be used: {exc}") from exc


def _walk(version: RoleVersion, input: Any, provider, result: Evaluation) -> None:
    """Database work in short tenant contexts of its own; model calls outside any
    transaction (they are I/O, and may take long)."""
    definition = version.definition
    with rls.tenant_context(version.tenant_id):
        tenant, role = version.tenant, version.role
        rules = [
            step_rule(tenant_id=version.tenant_id, version=version, index=index)
            for index in range(len(version.steps))
        ]
    schema = version.input_schema
    if schema:
        problems = schema_errors(schema, input)
        if problems:
            detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
            raise _Stop(f"The input does not satisfy the version's input schema: {detail}")
    outputs: dict[str, Any] = {}
    gated: set[str] = set()
    for index, step_def in enumerate(version.steps):
        key, kind = step_def["key"], step_def["kind"]
        context = template_context(
            input=input, outputs=outputs, tenant=tenant, role=role, run_id=None
        )
        rule = rules[index]
        covered = step_def.get("covered_by") in gated
        if rule is not None and not covered:
            result.gates_hit.append(key)
            gated.add(key)
        try:
            rendered = render_step(step_def, definition, context)
        except RenderError as exc:
            raise _Stop(f"Step '{key}': template error: {exc}") from exc
        if kind == "llm":
            request = model_request_for(definition=definition, step_def=step_def, rendered=rendered)
            try:
                response = _complete(provider, request)
            except ProviderError as exc:
                raise _Stop(f"Step '{key}': the model call failed: {exc}") from exc
            result.tokens += response.prompt_tokens + response.completion_tokens
            result.cost += _price(
                response.model, response.prompt_tokens, response.completion_tokens
            )
            problems = schema_errors(step_def["output_schema"], response.output)
            if problems:
                detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
                raise _Stop(f"Step '{key}': the output fails its schema: {detail}", status="failed")
            outputs[key] = result.output[key] = response.output
            result.final_output = response.output
        elif kind == "tool":
            name, args = rendered["tool"], rendered["args"]
            # As at run time: a target that read model output needs this step's own gate
            # (here approved unchanged), and only earlier records tools' outputs are trusted.
            record_steps = {
                s["key"]
                for s in version.steps[:index]
                if s["kind"] == "tool" and reads_records(s.get("tool", ""))
            }
            refusal = target_refusal(
                definition,
                step_def,
                args,
                record_steps=record_steps,
                approved_here=rule is not None and not covered,
            )
            output, executed = _call_tool(
                version, step_def, name, args, result, target_problem=refusal
            )
            result.tools_called.append(
                {"step": key, "tool": name, "args": args, "executed": executed}
            )
            outputs[key] = output
            result.output[key] = {"args": args, "output": output}
            result.final_output = output if executed else args
        else:
            # A checkpoint approved unchanged.
            outputs[key] = result.output[key] = {"approved": True}
            result.final_output = outputs[key]


def _call_tool(
    version, step_def, name: str, args: Any, result: Evaluation, *, target_problem: str = ""
) -> tuple[Any, bool]:
    key = step_def["key"]
    refusal = tool_call_refusal(version.definition, name, args) or target_problem
    if refusal:
        raise _Stop(f"Step '{key}': {refusal}")
    try:
        tool = get_tool(name)
    except ToolRefused as exc:
        raise _Stop(f"Step '{key}': {exc}") from exc
    if tool.has_side_effects or tool.category not in READ_ONLY_CATEGORIES:
        return {"simulated": True}, False
    ctx = ToolContext(
        tenant=version.tenant,
        run_id=None,
        step_id=None,
        idempotency_key="",
        allowed_data_kinds=version.allowed_data_kinds,
    )
    try:
        with rls.tenant_context(version.tenant_id), transaction.atomic():
            output = tool.run(args, ctx)
            # Read-only: whatever a tool might have written is undone.
            transaction.set_rollback(True)
    except ToolRefused as exc:
        result.refusals.append((step_def, {"tool": name, **exc.data, "message": str(exc)}))
        raise _Stop(f"Step '{key}': refused: {exc}") from exc
    finally:
        result.reads += [(step_def, read) for read in ctx.reads]
        result.refusals += [(step_def, refusal) for refusal in ctx.refusals]
    return output, True


# --- checks ----------------------------------------------------------------------------------

_MISSING = object()


def resolve(outputs: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the outputs (list items by index), or _MISSING."""
    value: Any = outputs
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _field_check(outputs: dict[str, Any], item: dict[str, Any]) -> tuple[bool, str]:
    actual = resolve(outputs, item["path"])
    if actual is _MISSING:
        return False, "no such field in the outputs"
    op, expected = item["op"], item["value"]
    if op == "equals":
        ok = actual == expected
    elif op == "contains":
        ok = isinstance(actual, (str, list, dict)) and (
            (isinstance(actual, str) and isinstance(expected, str) and expected in actual)
            or (not isinstance(actual, str) and expected in actual)
        )
    else:
        ok = isinstance(actual, str) and re.search(expected, actual) is not None
    return ok, "" if ok else f"got {json.dumps(actual, ensure_ascii=False)[:300]}"


def _check(result: Evaluation, expectations: dict[str, Any], provider, *, model: str) -> None:
    if "output_schema" in expectations:
        problems = schema_errors(expectations["output_schema"], result.final_output)
        result.check(
            "the final output satisfies output_schema",
            not problems,
            "; ".join(f"{p['field']}: {p['message']}" for p in problems),
        )
    for item in expectations.get("fields", []):
        ok, detail = _field_check(result.output, item)
        result.check(f"{item['path']} {item['op']} {json.dumps(item['value'])[:100]}", ok, detail)
    called = {call["tool"] for call in result.tools_called}
    for name in expectations.get("tools_called", []):
        result.check(f"calls {name}", name in called)
    for name in expectations.get("tools_not_called", []):
        result.check(f"does not call {name}", name not in called)
    for key in expectations.get("gates_hit", []):
        result.check(f"step {key} hits a gate", key in result.gates_hit)
    if "max_tokens" in expectations:
        limit = expectations["max_tokens"]
        result.check(f"at most {limit} tokens", result.tokens <= limit, f"used {result.tokens}")
    if "max_cost" in expectations:
        limit = Decimal(expectations["max_cost"])
        result.check(f"costs at most {limit}", result.cost <= limit, f"cost {result.cost}")
    if expectations.get("rubric"):
        ok, detail = _grade(result, expectations["rubric"], provider, model=model)
        result.check("rubric", ok, detail)


def _grade(result: Evaluation, rubric: str, provider, *, model: str) -> tuple[bool, str]:
    """Ask the model whether the outputs meet the rubric (its tokens are the grader's, not
    the version's)."""
    prompt = (
        "You grade the work of an AI employee against a rubric. Answer whether it passes.\n"
        f"Rubric: {rubric}\n"
        f"Outputs: {json.dumps(result.output, ensure_ascii=False, sort_keys=True)}"
    )
    try:
        response = _complete(
            provider, ModelRequest(prompt=prompt, output_schema=RUBRIC_SCHEMA, model=model)
        )
    except ProviderError as exc:
        return False, f"the grader failed: {exc}"
    answer = response.output
    if schema_errors(RUBRIC_SCHEMA, answer):
        return False, "the grader's answer was not {pass, reason}"
    return bool(answer["pass"]), str(answer["reason"])
