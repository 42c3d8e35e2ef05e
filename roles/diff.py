"""Readable differences between two role versions' bundles (pure Python, no database).

`diff_bundles(old, new)` lists what changed as `Change`s a person can read: which part of
the bundle (its section), where in it ("step 'draft' · prompt", "approval rule
'client_comms' · required approvals"), how (added, removed, changed, moved) and what:
a unified line diff for authored text (prompts, instructions), the values before and
after as compact JSON for everything else.

Steps are matched by their `key`, tools by their name and approval rules by their
category, so a reordered step reads as moved, not as removed and added again. Sets
(allowed tools, allowed data kinds) are compared as sets. The order is stable: sections
in the order of SECTIONS, steps in the new version's order (removed ones last), keys of
objects in a fixed order for known fields, then alphabetically — PostgreSQL's jsonb does
not keep the order the keys were written in.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from django.template.loader import render_to_string
from django.utils.safestring import SafeString

MODEL = "model settings"
SYSTEM = "system prompt"
STEPS = "steps"
INPUT_SCHEMA = "input schema"
ALLOWED_TOOLS = "allowed tools"
ALLOWED_DATA_KINDS = "allowed data kinds"
APPROVAL_RULES = "approval rules"
SERVICE_LEVEL = "service level"
TOOLS = "tools"
OTHER = "other"
SECTIONS = (
    MODEL,
    SYSTEM,
    STEPS,
    INPUT_SCHEMA,
    ALLOWED_TOOLS,
    ALLOWED_DATA_KINDS,
    APPROVAL_RULES,
    SERVICE_LEVEL,
    TOOLS,
    OTHER,
)

ADDED, REMOVED, CHANGED, MOVED = "added", "removed", "changed", "moved"

# Fields whose value is prose a person wrote: shown as a line diff.
TEXT_FIELDS = {"prompt", "instructions", "system", "outputs", "escalation_conditions"}
# Known fields first, in the order people read a step or a rule; anything else follows.
FIELD_ORDER = (
    "key",
    "kind",
    "category",
    "tool",
    "covered_by",
    "mode",
    "required_approvals",
    "prompt",
    "instructions",
    "args",
    "reason",
    "output_schema",
)
LABELS = {
    "target_turnaround_minutes": "target turnaround (minutes)",
    "args_schema": "args schema",
    "output_schema": "output schema",
}

_MISSING = object()


@dataclass(frozen=True)
class Change:
    """One difference between two bundles."""

    section: str  # one of SECTIONS
    path: str  # where, for a person: "step 'draft' · prompt"
    kind: str  # ADDED, REMOVED, CHANGED or MOVED
    before: str | None = None  # compact JSON (a move: "position 2")
    after: str | None = None
    lines: tuple[str, ...] = ()  # a text's unified diff, without the file header

    @property
    def is_text(self) -> bool:
        return bool(self.lines)


def diff_bundles(old: dict | None, new: dict) -> list[Change]:
    """List what changed from bundle `old` (None: nothing before) to bundle `new`."""
    old = old or {}
    changes: list[Change] = []
    changes += _diff_value(MODEL, ("model",), _dict(old, "model"), _dict(new, "model"))
    changes += _diff_value(
        SYSTEM, ("system prompt",), _get(old, "system"), _get(new, "system"), text=True
    )
    changes += _diff_steps(_list(old, "steps"), _list(new, "steps"))
    changes += _diff_value(
        INPUT_SCHEMA, ("input schema",), _dict(old, "input_schema"), _dict(new, "input_schema")
    )
    for key, section in (
        ("allowed_tools", ALLOWED_TOOLS),
        ("allowed_data_kinds", ALLOWED_DATA_KINDS),
    ):
        changes += _diff_set(section, _list(old, key), _list(new, key))
    changes += _diff_keyed(
        APPROVAL_RULES,
        "approval rule",
        _keyed(_list(old, "approval_rules"), "category"),
        _keyed(_list(new, "approval_rules"), "category"),
    )
    changes += _diff_value(
        SERVICE_LEVEL,
        (_label("target_turnaround_minutes"),),
        _get(old, "target_turnaround_minutes"),
        _get(new, "target_turnaround_minutes"),
    )
    changes += _diff_keyed(TOOLS, "tool", _dict(old, "tools"), _dict(new, "tools"))
    known = {
        "model",
        "system",
        "steps",
        "input_schema",
        "allowed_tools",
        "allowed_data_kinds",
        "approval_rules",
        "target_turnaround_minutes",
        "tools",
    }
    for key in _ordered_keys(old, new):
        if key not in known:
            changes += _diff_value(
                OTHER, (_label(key),), _get(old, key), _get(new, key), text=key in TEXT_FIELDS
            )
    return changes


def render_diff_html(changes: list[Change]) -> SafeString:
    """The changes as an HTML table (every value escaped), as the admin pages show them."""
    return render_to_string("admin/roles/includes/bundle_diff.html", {"changes": changes})


# --- the sections ---------------------------------------------------------------------------


def _diff_steps(old_steps: list, new_steps: list) -> list[Change]:
    old = _keyed(old_steps, "key")
    new = _keyed(new_steps, "key")
    positions_old = {key: index for index, key in enumerate(old, start=1)}
    positions_new = {key: index for index, key in enumerate(new, start=1)}
    # Steps kept in the same relative order are not "moved" when another step comes or goes:
    # only those outside the longest run of common steps in order are.
    common_old = [key for key in old if key in new]
    common_new = [key for key in new if key in old]
    matcher = difflib.SequenceMatcher(None, common_old, common_new, autojunk=False)
    in_place = {
        key
        for block in matcher.get_matching_blocks()
        for key in common_old[block.a : block.a + block.size]
    }
    changes = []
    for key, step in new.items():
        where = (f"step '{key}'",)
        if key not in old:
            changes.append(Change(STEPS, _path(where), ADDED, after=_json(step)))
            continue
        if key not in in_place:
            changes.append(
                Change(
                    STEPS,
                    _path(where),
                    MOVED,
                    before=f"position {positions_old[key]}",
                    after=f"position {positions_new[key]}",
                )
            )
        changes += _diff_value(STEPS, where, old[key], step)
    for key, step in old.items():
        if key not in new:
            changes.append(Change(STEPS, _path((f"step '{key}'",)), REMOVED, before=_json(step)))
    return changes


def _diff_set(section: str, old: list, new: list) -> list[Change]:
    before, after = _unique(old), _unique(new)
    changes = [
        Change(section, _path((section, str(item))), ADDED, after=_json(item))
        for item in after
        if item not in before
    ]
    changes += [
        Change(section, _path((section, str(item))), REMOVED, before=_json(item))
        for item in before
        if item not in after
    ]
    return sorted(changes, key=lambda change: change.path)


def _diff_keyed(section: str, noun: str, old: dict, new: dict) -> list[Change]:
    """Objects that have a name (tools by name, rules by category): matched by it."""
    changes = []
    for name in _ordered_keys(old, new, known=()):
        changes += _diff_value(
            section, (f"{noun} '{name}'",), old.get(name, _MISSING), new.get(name, _MISSING)
        )
    return changes


def _diff_value(
    section: str, where: tuple[str, ...], old: Any, new: Any, *, text: bool = False
) -> list[Change]:
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in _ordered_keys(old, new):
            changes += _diff_value(
                section,
                (*where, _label(key)),
                old.get(key, _MISSING),
                new.get(key, _MISSING),
                text=key in TEXT_FIELDS,
            )
        return changes
    kind = ADDED if old is _MISSING else REMOVED if new is _MISSING else CHANGED
    lines = _line_diff(old, new) if text and _is_text(old) and _is_text(new) else ()
    if lines:  # (a change in line endings only shows as before and after)
        return [Change(section, _path(where), kind, lines=lines)]
    return [
        Change(
            section,
            _path(where),
            kind,
            before=None if old is _MISSING else _json(old),
            after=None if new is _MISSING else _json(new),
        )
    ]


# --- helpers ------------------------------------------------------------------------------


def _get(bundle: dict, key: str) -> Any:
    value = bundle.get(key, _MISSING) if isinstance(bundle, dict) else _MISSING
    return _MISSING if value is None else value


def _dict(bundle: dict, key: str) -> dict:
    value = _get(bundle, key)
    return value if isinstance(value, dict) else {}


def _list(bundle: dict, key: str) -> list:
    value = _get(bundle, key)
    return value if isinstance(value, list) else []


def _keyed(items: list, field: str) -> dict[str, Any]:
    """{name: item}, in the list's order; an item without a name is named by its position,
    and a name used twice gets a counter (validation refuses it, old data may have it)."""
    keyed: dict[str, Any] = {}
    for index, item in enumerate(items, start=1):
        name = item.get(field) if isinstance(item, dict) else None
        name = str(name) if name not in (None, "") else f"#{index}"
        unique, count = name, 1
        while unique in keyed:
            count += 1
            unique = f"{name} ({count})"
        keyed[unique] = item
    return keyed


def _unique(items: list) -> list:
    seen: list = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _ordered_keys(old: dict, new: dict, known: tuple[str, ...] = FIELD_ORDER) -> list[str]:
    keys = set(old) | set(new)
    first = [key for key in known if key in keys]
    return first + sorted(keys - set(first))


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def _path(parts: tuple[str, ...]) -> str:
    return " · ".join(parts)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def _is_text(value: Any) -> bool:
    return value is _MISSING or isinstance(value, str)


def _line_diff(old: Any, new: Any) -> tuple[str, ...]:
    before = [] if old is _MISSING else old.splitlines()
    after = [] if new is _MISSING else new.splitlines()
    lines = list(difflib.unified_diff(before, after, lineterm="", n=2))
    return tuple(lines[2:])  # without the "--- / +++" file header
