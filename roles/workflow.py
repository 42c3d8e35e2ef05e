"""Role bundles: validation on save, and sandboxed rendering at run time.

A role version's definition is its whole bundle, everything that decides what the AI
employee does (a run pinned to the version behaves the same whatever is edited later)::

    {"model": {"name": "...", "temperature": 0, "max_tokens": 800, ...},
     "system": "You are ...",
     "input_schema": {...JSON Schema of a run's input...},
     "outputs": "What it delivers", "escalation_conditions": "When a person takes over",
     "target_turnaround_minutes": 240,
     "allowed_tools": ["records.search"], "allowed_data_kinds": ["contact"],
     "tools": {"records.search": {"category": "data_access", "args_schema": {...}}},
     "approval_rules": [{"category": "client_comms", "required_approvals": 2,
                         "approver_groups": ["Partners"], ...}],
     "steps": [
        {"key": "classify", "kind": "llm", "category": "internal",
         "prompt": "Classify: {{ input.body }}", "output_schema": {...}},
        {"key": "lookup", "kind": "tool", "category": "internal", "tool": "records.search",
         "args": {"email": "{{ input.from_email }}"}, "reason": "Find the sender's records"},
        {"key": "check", "kind": "review", "category": "internal", "instructions": "..."},
     ]}

`tools` pins each allowed tool's category and argument schema as they were when the
draft was saved (`pin_tools`); the runtime refuses a tool whose code has drifted from the
pin. `approval_rules` only ever tighten the tenant-wide policy (approvals.gate).

Templates are Jinja in a sandbox: authored text is data, never code. A tool argument
that is exactly one `{{ expression }}` keeps the expression's native type (a list of ids
stays a list); any other text renders to a string.

Least privilege: an empty `allowed_tools` or `allowed_data_kinds` allows nothing. A tool
marks the arguments that say whom or what it acts on (a recipient, a record reference) with
`"x-desk-target": true` in its `args_schema`. A target may read only the run's input, the
run's tenant, role and id, records an earlier records tool read, and text written in the
bundle itself (a fixed internal address, seen by both people who publish the version).
Anything else (an llm step's output, a checkpoint's, another tool's, `steps` read by a
computed key) is model output: the step that uses it must be approved itself, so that a
reviewer sees the rendered value, under an approval rule of the bundle (which gates the
step whatever the tenant's policy). `validate_definition` checks this on save and the
runtime again before the tool runs (`target_refusal`), for bundles stored behind
validation's back.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tenants import safe_json

STEP_KINDS = ("llm", "tool", "review")
CATEGORIES = (
    "internal",
    "data_access",
    "client_comms",
    "scope_commitment",
    "financial",
    "scheduling",
)
# How strict a category is: a tool's step may carry its tool's category or a stricter one.
CATEGORY_RANK = {
    "internal": 0,
    "data_access": 1,
    "scheduling": 1,
    "client_comms": 2,
    "scope_commitment": 2,
    "financial": 2,
}
KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
SINGLE_EXPRESSION = re.compile(r"^\{\{(.*)\}\}$", re.DOTALL)
MODEL_SETTINGS = {"name", "temperature", "max_tokens", "timeout_seconds", "max_attempts"}
# What a bundle may hold, and what a key left out of a draft means (an empty allow-list
# allows nothing: fail closed).
BUNDLE_DEFAULTS: dict[str, Any] = {
    "model": {},
    "system": "",
    "input_schema": {},
    "outputs": "",
    "escalation_conditions": "",
    "target_turnaround_minutes": 240,
    "allowed_tools": [],
    "allowed_data_kinds": [],
    "tools": {},
    "approval_rules": [],
}
BUNDLE_KEYS = frozenset({*BUNDLE_DEFAULTS, "steps"})
# An approval rule's settings, and the type each must have.
RULE_SETTINGS: dict[str, type | tuple[type, ...]] = {
    "category": str,
    "required_approvals": int,
    "due_minutes": int,
    "approver_groups": list,
    "remind_every_minutes": int,
    "max_reminders": int,
    "final_action": str,
    "max_rounds": int,
    "allow_bulk": bool,
    "email_links": bool,
}
FINAL_ACTIONS = ("hold", "reject")
DATA_KIND_PATTERN = re.compile(r"^[-a-zA-Z0-9_]+$")
# The JSON Schema annotation a tool puts on each argument that names whom or what it acts on.
TARGET_MARK = "x-desk-target"
# Context roots a target may read without an approval at its step (besides records).
TRUSTED_ROOTS = frozenset({"input", "tenant", "role", "run"})
CONTEXT_ROOTS = frozenset({*TRUSTED_ROOTS, "steps"})
# What a target value may be: an address or a reference, not a document.
MAX_TARGET_LENGTH = 320
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

_env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_validator_class = jsonschema.Draft202012Validator


class RenderError(Exception):
    """A template could not be rendered against the run's context."""


def render_text(template: str, context: dict[str, Any]) -> str:
    """Render authored text in the sandbox.

    Raises RenderError when the template refers to something missing or forbidden.
    """
    try:
        return _env.from_string(template).render(context)
    except (UndefinedError, SecurityError, TemplateSyntaxError, TypeError, ValueError) as exc:
        raise RenderError(str(exc)) from exc


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render a tool argument: strings are templates, lists and objects are walked."""
    if isinstance(value, str):
        match = SINGLE_EXPRESSION.match(value.strip())
        if match and "{{" not in match.group(1) and "}}" not in match.group(1):
            try:
                result = _env.compile_expression(match.group(1).strip(), undefined_to_none=False)(
                    **context
                )
                if isinstance(result, StrictUndefined):
                    str(result)  # raises UndefinedError with the missing name
                return result
            except (UndefinedError, SecurityError, TemplateSyntaxError, TypeError) as exc:
                raise RenderError(str(exc)) from exc
        return render_text(value, context)
    if isinstance(value, list):
        return [render_value(item, context) for item in value]
    if isinstance(value, dict):
        return {key: render_value(item, context) for key, item in value.items()}
    return value


def validate_json_schema(schema: Any, *, label: str) -> None:
    """Raise ValidationError unless `schema` is a valid JSON Schema (Draft 2020-12)."""
    if not isinstance(schema, dict):
        raise ValidationError(f"{label} must be a JSON object (a JSON Schema).")
    try:
        _validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValidationError(f"{label} is not a valid JSON Schema: {exc.message}") from exc


def schema_errors(schema: dict, instance: Any) -> list[dict[str, str]]:
    """Every way `instance` fails `schema`, as [{"field", "message"}] (empty when valid)."""
    validator = _validator_class(schema, format_checker=_validator_class.FORMAT_CHECKER)
    errors = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.path)):
        field = ".".join(str(p) for p in error.path) or "(root)"
        errors.append({"field": field, "message": error.message})
    return errors


def tool_registry() -> dict[str, str]:
    return settings.DESK_TOOLS


def tool_category(tool: str) -> str:
    """The least strict category a step calling `tool` may have (internal if unknown)."""
    path = tool_registry().get(tool)
    return getattr(import_string(path), "category", "internal") if path else "internal"


def at_least(category: str, least: str) -> bool:
    """Whether `category` is `least` or stricter than it."""
    return category == least or CATEGORY_RANK.get(category, -1) > CATEGORY_RANK.get(least, 3)


def _check_template(text: Any, *, where: str, errors: list[str]) -> None:
    if not isinstance(text, str):
        errors.append(f"{where} must be text.")
        return
    try:
        _env.parse(text)
    except TemplateSyntaxError as exc:
        errors.append(f"{where} has a template error on line {exc.lineno}: {exc.message}")


def _check_args(args: Any, *, where: str, errors: list[str]) -> None:
    if isinstance(args, str):
        _check_template(args, where=where, errors=errors)
    elif isinstance(args, list):
        for i, item in enumerate(args):
            _check_args(item, where=f"{where}[{i}]", errors=errors)
    elif isinstance(args, dict):
        for name, item in args.items():
            _check_args(item, where=f"{where}.{name}", errors=errors)


def tool_pin(tool: str) -> dict[str, Any]:
    """What a bundle pins of a registered tool: its category and argument schema."""
    impl = import_string(tool_registry()[tool])
    return {
        "category": getattr(impl, "category", "internal"),
        # A copy: a bundle being edited must not alias the tool's class attribute.
        "args_schema": copy.deepcopy(getattr(impl, "args_schema", {"type": "object"})),
    }


def pin_tools(definition: dict[str, Any]) -> dict[str, Any]:
    """The bundle with every default filled in and its allowed tools pinned as registered now."""
    bundle = {**BUNDLE_DEFAULTS, **definition}
    tools = tool_registry()
    bundle["tools"] = {
        name: tool_pin(name) for name in sorted(set(bundle["allowed_tools"] or [])) if name in tools
    }
    return bundle


def tool_drift(definition: dict[str, Any], tool: str) -> str:
    """Why the registered `tool` no longer matches what the bundle pinned ("" when it does)."""
    pinned = (definition.get("tools") or {}).get(tool)
    if pinned is None:
        return f"the version did not pin the tool '{tool}'"
    if tool not in tool_registry():
        return f"the tool '{tool}' is no longer registered"
    current = tool_pin(tool)
    # A pin saved before tools marked their targets still matches; the marks the code
    # declares now apply to it anyway (`tool_targets`).
    changed = [
        part
        for part in ("category", "args_schema")
        if _unmarked(pinned.get(part)) != _unmarked(current[part])
    ]
    if changed:
        return f"the tool '{tool}' changed its {' and '.join(changed)} since the version was saved"
    return ""


def _unmarked(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _unmarked(v) for k, v in schema.items() if k != TARGET_MARK}
    if isinstance(schema, list):
        return [_unmarked(v) for v in schema]
    return schema


def target_args(args_schema: Any) -> set[str]:
    """The arguments a tool's schema marks as targets (`"x-desk-target": true`)."""
    properties = args_schema.get("properties") if isinstance(args_schema, dict) else None
    if not isinstance(properties, dict):
        return set()
    return {
        name
        for name, prop in properties.items()
        if isinstance(prop, dict) and prop.get(TARGET_MARK) is True
    }


def tool_targets(definition: dict[str, Any], tool: str) -> set[str]:
    """The target arguments of `tool` for a version: those its pin marks and those the
    registered code marks now (the stricter union; a pin cannot unmark a target)."""
    pinned = ((definition.get("tools") or {}).get(tool) or {}).get("args_schema")
    path = tool_registry().get(tool)
    current = getattr(import_string(path), "args_schema", {}) if path else {}
    return target_args(pinned) | target_args(current)


def reads_records(tool: str) -> bool:
    """Whether the registered `tool` returns the tenant's records (a source of targets)."""
    path = tool_registry().get(tool)
    return bool(path and getattr(import_string(path), "reads_records", False))


def template_reads(value: Any) -> set[str]:
    """What a templated argument reads from the run's context, found in its syntax tree:
    "input", "tenant", "role", "run", "steps.<key>", or "steps.*" for steps read whole or
    by a computed key. Every read anywhere in the template counts (a `{% set %}`, a loop,
    a condition), so a value cannot launder where it came from through a local name. A
    template that does not parse reads "steps.*" (fail closed)."""
    if isinstance(value, list):
        return set().union(*(template_reads(item) for item in value))
    if isinstance(value, dict):
        return set().union(*(template_reads(item) for item in value.values()))
    if not isinstance(value, str):
        return set()
    try:
        tree = _env.parse(value)
    except TemplateSyntaxError:
        return {"steps.*"}
    reads: set[str] = set()
    _collect_reads(tree, reads)
    return reads


def _collect_reads(node: nodes.Node, reads: set[str]) -> None:
    if isinstance(node, nodes.Getattr | nodes.Getitem) and _is_name(node.node, "steps"):
        if isinstance(node, nodes.Getattr):
            reads.add(f"steps.{node.attr}")
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            reads.add(f"steps.{node.arg.value}")
        else:
            reads.add("steps.*")
            _collect_reads(node.arg, reads)
        return
    if isinstance(node, nodes.Name) and node.ctx == "load" and node.name in CONTEXT_ROOTS:
        reads.add("steps.*" if node.name == "steps" else node.name)
        return
    for child in node.iter_child_nodes():
        _collect_reads(child, reads)


def _is_name(node: nodes.Node, name: str) -> bool:
    return isinstance(node, nodes.Name) and node.name == name


def untrusted_reads(value: Any, *, record_steps: set[str]) -> list[str]:
    """The reads of a templated target that need an approval at its step: everything but
    the input, the run's tenant, role and id, and the steps in `record_steps` (earlier
    steps whose records tool read the tenant's records)."""
    return sorted(
        read
        for read in template_reads(value)
        if read not in TRUSTED_ROOTS and read.removeprefix("steps.") not in record_steps
    )


def target_value_problem(value: Any) -> str:
    """Why a rendered target value is refused ("" when it is not): each text in it must be
    short (an address or a reference) and free of control characters such as NUL."""
    texts = value if isinstance(value, list) else [value]
    for text in texts:
        if not isinstance(text, str):
            continue
        if len(text) > MAX_TARGET_LENGTH:
            return f"is longer than {MAX_TARGET_LENGTH} characters"
        if CONTROL_CHARACTER.search(text):
            return "contains a control character"
    return ""


def target_refusal(
    definition: dict[str, Any],
    step_def: dict[str, Any],
    args: Any,
    *,
    record_steps: set[str],
    approved_here: bool,
) -> str:
    """Why this step may not act on the targets in `args` ("" when it may): a target read
    model output (per its template in `step_def`) and the call was not approved at this
    step, or a target value is overlong or holds control characters. `approved_here`: a
    reviewer approved these exact arguments at this step."""
    tool = step_def.get("tool", "")
    key = step_def.get("key", "")
    templates = step_def.get("args") if isinstance(step_def.get("args"), dict) else {}
    values = args if isinstance(args, dict) else {}
    for name in sorted(tool_targets(definition, tool)):
        if not approved_here and name in templates:
            reads = untrusted_reads(templates[name], record_steps=record_steps)
            if reads:
                return (
                    f"Refused: the target '{name}' of step '{key}' reads {', '.join(reads)} "
                    "(model output) and was not approved at this step."
                )
        problem = target_value_problem(values.get(name))
        if problem:
            return f"Refused: the target '{name}' of step '{key}' {problem}."
    return ""


def tool_call_refusal(definition: dict[str, Any], tool: str, args: Any) -> str:
    """Why a version may not make this call ("" when it may): the tool is not in the
    bundle's allow-list (an empty list allows nothing), its code drifted from the pin, or
    the arguments do not fit the pinned schema."""
    if tool not in (definition.get("allowed_tools") or []):
        return f"This role version may not use the tool '{tool}'."
    drift = tool_drift(definition, tool)
    if drift:
        return f"Refused: {drift}; publish a new version to use it."
    problems = schema_errors(definition["tools"][tool]["args_schema"], args)
    if problems:
        where = ", ".join(f"{p['field']}: {p['message']}" for p in problems[:3])
        return f"The arguments do not fit the '{tool}' schema the version pinned ({where})."
    return ""


def _check_bundle(definition: dict[str, Any], errors: list[str]) -> list[str]:
    """Check the bundle's keys besides the steps; return its allowed tools."""
    unknown = set(definition) - BUNDLE_KEYS
    if unknown:
        errors.append(f"The bundle has unknown keys: {', '.join(sorted(unknown))}.")
    if "input_schema" in definition:
        try:
            validate_json_schema(definition["input_schema"], label="The input schema")
        except ValidationError as exc:
            errors.extend(exc.messages)
    for key in ("outputs", "escalation_conditions"):
        if not isinstance(definition.get(key, ""), str):
            errors.append(f"'{key}' must be text.")
    minutes = definition.get("target_turnaround_minutes", 240)
    if type(minutes) is not int or not 1 <= minutes <= 525_600:
        errors.append("'target_turnaround_minutes' must be a whole number of minutes, 1 or more.")
    tools = tool_registry()
    allowed = definition.get("allowed_tools", [])
    if not isinstance(allowed, list) or not all(isinstance(t, str) for t in allowed):
        errors.append("'allowed_tools' must be a list of tool names.")
        allowed = []
    for name in allowed:
        if name not in tools:
            errors.append(f"'allowed_tools' names an unknown tool '{name}'.")
    kinds = definition.get("allowed_data_kinds", [])
    if not isinstance(kinds, list) or not all(
        isinstance(k, str) and DATA_KIND_PATTERN.match(k) for k in kinds
    ):
        errors.append("'allowed_data_kinds' must be a list of data kinds (letters, digits, - _).")
    pinned = definition.get("tools", {})
    if not isinstance(pinned, dict) or not all(
        isinstance(p, dict) and set(p) == {"category", "args_schema"} for p in pinned.values()
    ):
        errors.append("'tools' must map tool names to their pinned category and args_schema.")
    elif set(pinned) - set(allowed):
        errors.append("'tools' pins a tool that is not in 'allowed_tools'.")
    _check_rules(definition.get("approval_rules", []), errors)
    return allowed


def _check_rules(rules: Any, errors: list[str]) -> None:
    if not isinstance(rules, list):
        errors.append("'approval_rules' must be a list of rules.")
        return
    seen: set[str] = set()
    for index, rule in enumerate(rules, start=1):
        where = f"Approval rule {index}"
        if not isinstance(rule, dict):
            errors.append(f"{where} must be an object.")
            continue
        category = rule.get("category")
        if category not in CATEGORIES:
            errors.append(f"{where}: 'category' must be one of {', '.join(CATEGORIES)}.")
        elif category in seen:
            errors.append(f"{where}: the category '{category}' has two rules.")
        else:
            where = f"Approval rule '{category}'"
            seen.add(category)
        for name, value in rule.items():
            expected = RULE_SETTINGS.get(name)
            if expected is None:
                errors.append(f"{where}: unknown setting '{name}'.")
            elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                errors.append(f"{where}: '{name}' has the wrong type.")
            elif expected is int and value < (0 if name == "max_reminders" else 1):
                errors.append(f"{where}: '{name}' is too small.")
        groups = rule.get("approver_groups", [])
        required = rule.get("required_approvals", 1)
        if isinstance(groups, list) and not all(isinstance(g, str) and g for g in groups):
            errors.append(f"{where}: 'approver_groups' lists groups by name.")
        elif isinstance(groups, list) and isinstance(required, int) and len(groups) > required:
            errors.append(f"{where}: require at least one approval per approver group.")
        if rule.get("final_action", "hold") not in FINAL_ACTIONS:
            errors.append(f"{where}: 'final_action' must be hold or reject.")


def _ruled_categories(rules: Any) -> set[str]:
    """The categories the bundle's own approval rules gate (whatever the tenant's policy)."""
    if not isinstance(rules, list):
        return set()
    return {r.get("category") for r in rules if isinstance(r, dict)} & set(CATEGORIES)


def _check_targets(
    step: dict[str, Any],
    args: dict[str, Any],
    *,
    where: str,
    record_steps: set[str],
    ruled: set[str],
    errors: list[str],
) -> None:
    """A target that reads model output must be approved at its own step, under a rule of
    the bundle's (the tenant's policy alone may let the category run unreviewed)."""
    impl = import_string(tool_registry()[step["tool"]])
    category = step.get("category")
    for name in sorted(target_args(getattr(impl, "args_schema", {}))):
        if name not in args:
            continue
        reads = untrusted_reads(args[name], record_steps=record_steps)
        if not reads:
            continue
        needs = []
        if step.get("covered_by") is not None:
            needs.append(f"not be covered by '{step['covered_by']}'")
        if category not in ruled:
            needs.append(f"have an approval rule for '{category}' in 'approval_rules'")
        if needs:
            errors.append(
                f"{where}: the target '{name}' reads {', '.join(reads)}, which is model output "
                "(only input, records a records tool read and fixed text are trusted); "
                f"a reviewer must approve the rendered value at this step, so the step must "
                f"{' and '.join(needs)}."
            )


def _check_data_kinds(tool: str, args: Any, kinds: Any, *, where: str, errors: list[str]) -> None:
    """A records tool needs a data kind to read; a fixed `kind` must be one of them."""
    if not isinstance(kinds, list):
        return
    if not kinds:
        errors.append(
            f"{where}: '{tool}' reads records, but 'allowed_data_kinds' is empty "
            "(an empty list allows nothing)."
        )
        return
    kind = args.get("kind") if isinstance(args, dict) else None
    if isinstance(kind, str) and "{" not in kind and kind not in kinds:
        errors.append(f"{where}: the kind '{kind}' is not in 'allowed_data_kinds'.")


def validate_definition(definition: Any) -> None:
    """Check a role bundle; raise ValidationError listing every problem found."""
    errors: list[str] = []
    if not isinstance(definition, dict):
        raise ValidationError("The definition must be a JSON object with a 'steps' list.")
    try:
        safe_json.check(definition)
    except safe_json.UnsafeJSON as exc:
        raise ValidationError(f"The definition is not safe JSON: {exc}") from None
    allowed_tools = _check_bundle(definition, errors)
    model = definition.get("model", {})
    if not isinstance(model, dict):
        errors.append("'model' must be an object.")
    else:
        unknown = set(model) - MODEL_SETTINGS
        if unknown:
            errors.append(f"'model' has unknown settings: {', '.join(sorted(unknown))}.")
    if "system" in definition:
        _check_template(definition["system"], where="'system'", errors=errors)
    steps = definition.get("steps")
    if not isinstance(steps, list) or not steps:
        errors.append("'steps' must be a non-empty list.")
        steps = []
    seen: set[str] = set()
    gated_candidates: set[str] = set()
    record_steps: set[str] = set()
    ruled = _ruled_categories(definition.get("approval_rules"))
    data_kinds = definition.get("allowed_data_kinds", [])
    tools = tool_registry()
    for index, step in enumerate(steps, start=1):
        where = f"Step {index}"
        if not isinstance(step, dict):
            errors.append(f"{where} must be an object.")
            continue
        key = step.get("key")
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            errors.append(f"{where} needs a 'key' of lowercase letters, digits and _.")
        elif key in seen:
            errors.append(f"{where}: the key '{key}' is used twice.")
        else:
            where = f"Step '{key}'"
            seen.add(key)
        kind = step.get("kind")
        if kind not in STEP_KINDS:
            errors.append(f"{where}: 'kind' must be one of {', '.join(STEP_KINDS)}.")
        category = step.get("category")
        if category not in CATEGORIES:
            errors.append(f"{where}: 'category' must be one of {', '.join(CATEGORIES)}.")
        covered_by = step.get("covered_by")
        if covered_by is not None and covered_by not in gated_candidates:
            errors.append(f"{where}: 'covered_by' must name an earlier llm or review step.")
        if kind == "llm":
            if "prompt" not in step:
                errors.append(f"{where}: an llm step needs a 'prompt'.")
            else:
                _check_template(step["prompt"], where=f"{where} prompt", errors=errors)
            if "output_schema" not in step:
                errors.append(f"{where}: an llm step needs an 'output_schema'.")
            else:
                try:
                    validate_json_schema(step["output_schema"], label=f"{where} output_schema")
                except ValidationError as exc:
                    errors.extend(exc.messages)
        elif kind == "tool":
            tool = step.get("tool")
            if tool not in tools:
                errors.append(
                    f"{where}: unknown tool '{tool}'; known tools: {', '.join(sorted(tools))}."
                )
            else:
                if tool not in allowed_tools:
                    errors.append(f"{where}: '{tool}' is not in the bundle's allowed tools.")
                least = tool_category(tool)
                if category in CATEGORY_RANK and not at_least(category, least):
                    errors.append(
                        f"{where}: '{tool}' runs as '{least}' at least; "
                        f"the label '{category}' is weaker."
                    )
                args = step.get("args", {})
                if not isinstance(args, dict):
                    errors.append(f"{where}: 'args' must be an object.")
                else:
                    _check_args(args, where=f"{where} args", errors=errors)
                    required = getattr(import_string(tools[tool]), "required_args", ())
                    missing = [name for name in required if name not in args]
                    if missing:
                        errors.append(f"{where}: '{tool}' needs the args {', '.join(missing)}.")
                    _check_targets(
                        step,
                        args,
                        where=where,
                        record_steps=record_steps,
                        ruled=ruled,
                        errors=errors,
                    )
                if reads_records(tool):
                    _check_data_kinds(tool, args, data_kinds, where=where, errors=errors)
                    if isinstance(key, str):
                        record_steps.add(key)
        elif kind == "review" and "instructions" in step:
            _check_template(step["instructions"], where=f"{where} instructions", errors=errors)
        if "reason" in step and not isinstance(step["reason"], str):
            errors.append(f"{where}: 'reason' must be text.")
        if isinstance(key, str) and kind in ("llm", "review"):
            gated_candidates.add(key)
    if errors:
        raise ValidationError(errors)
