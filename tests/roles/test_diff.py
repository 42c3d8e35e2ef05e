"""Readable diffs of role bundles (roles.diff): pure functions, no database."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders

from desk.demo import INTAKE_DEFINITION
from roles.diff import (
    ADDED,
    ALLOWED_TOOLS,
    APPROVAL_RULES,
    CHANGED,
    INPUT_SCHEMA,
    MODEL,
    MOVED,
    REMOVED,
    STEPS,
    SYSTEM,
    TOOLS,
    Change,
    diff_bundles,
    render_diff_html,
)


@pytest.fixture
def old() -> dict:
    bundle = copy.deepcopy(INTAKE_DEFINITION)
    bundle["input_schema"] = {
        "type": "object",
        "properties": {"subject": {"type": "string"}, "body": {"type": "string"}},
        "required": ["subject"],
    }
    bundle["allowed_tools"] = ["records.search"]
    bundle["approval_rules"] = [
        {"category": "client_comms", "mode": "review", "required_approvals": 1},
        {"category": "internal", "mode": "auto"},
    ]
    bundle["tools"] = {"records.search": {"category": "data_access", "args_schema": {}}}
    return bundle


@pytest.fixture
def new(old) -> dict:
    return copy.deepcopy(old)


def steps_of(bundle: dict) -> dict:
    return {step["key"]: step for step in bundle["steps"]}


def test_identical_bundles_have_no_changes(old, new):
    assert diff_bundles(old, new) == []


def test_steps_are_matched_by_key_not_position(old, new):
    # A new first step shifts every other one down; none of them changed.
    new["steps"].insert(
        0, {"key": "greet", "kind": "review", "category": "internal", "instructions": "Hi"}
    )

    changes = diff_bundles(old, new)

    assert changes == [
        Change(
            STEPS,
            "step 'greet'",
            ADDED,
            after='{"category": "internal", "instructions": "Hi", "key": "greet", '
            '"kind": "review"}',
        )
    ]


def test_a_moved_step_is_reported_as_moved_not_removed_and_added(old, new):
    lookup = new["steps"].pop(1)
    new["steps"].insert(0, lookup)  # lookup before classify

    changes = diff_bundles(old, new)

    assert changes == [
        Change(STEPS, "step 'lookup'", MOVED, before="position 2", after="position 1")
    ]


def test_a_removed_step_comes_after_the_new_order(old, new):
    new["steps"] = [step for step in new["steps"] if step["key"] != "lookup"]

    changes = diff_bundles(old, new)

    assert [(c.path, c.kind) for c in changes] == [("step 'lookup'", REMOVED)]
    assert '"tool": "records.search"' in changes[0].before
    assert changes[0].after is None


def test_a_prompt_change_is_a_unified_line_diff(old, new):
    steps_of(new)["draft"]["prompt"] = steps_of(old)["draft"]["prompt"].replace(
        "Draft a reply to the enquiry below.", "Draft a short reply to the enquiry below."
    )

    (change,) = diff_bundles(old, new)

    assert (change.section, change.path, change.kind) == (STEPS, "step 'draft' · prompt", CHANGED)
    assert change.is_text and change.before is None and change.after is None
    assert change.lines[0].startswith("@@ ")
    assert "-Draft a reply to the enquiry below." in change.lines
    assert "+Draft a short reply to the enquiry below." in change.lines
    assert not any(line.startswith(("---", "+++")) for line in change.lines)


def test_a_text_changed_in_line_endings_only_shows_before_and_after(old, new):
    steps_of(new)["draft"]["prompt"] = steps_of(old)["draft"]["prompt"] + "\n"

    (change,) = diff_bundles(old, new)

    assert not change.is_text
    assert change.after.endswith('\\n"')


def test_the_system_prompt_is_text_too(old, new):
    new["system"] = "You are brief."

    (change,) = diff_bundles(old, new)

    assert (change.section, change.path) == (SYSTEM, "system prompt")
    assert f"-{old['system']}" in change.lines
    assert "+You are brief." in change.lines


def test_an_approval_rule_change_names_the_rule_and_the_field(old, new):
    new["approval_rules"][0]["required_approvals"] = 2
    new["approval_rules"].reverse()  # a rule's place in the list means nothing

    changes = diff_bundles(old, new)

    assert changes == [
        Change(
            APPROVAL_RULES,
            "approval rule 'client_comms' · required approvals",
            CHANGED,
            before="1",
            after="2",
        )
    ]


def test_an_allowed_tool_added(old, new):
    new["allowed_tools"] = ["email.send", "records.search"]

    changes = diff_bundles(old, new)

    assert changes == [
        Change(ALLOWED_TOOLS, "allowed tools · email.send", ADDED, after='"email.send"')
    ]


def test_an_input_schema_change_names_the_property(old, new):
    new["input_schema"]["properties"]["subject"]["maxLength"] = 200
    new["input_schema"]["required"] = ["subject", "body"]

    changes = diff_bundles(old, new)

    assert changes == [
        Change(
            INPUT_SCHEMA,
            "input schema · properties · subject · maxLength",
            ADDED,
            after="200",
        ),
        Change(
            INPUT_SCHEMA,
            "input schema · required",
            CHANGED,
            before='["subject"]',
            after='["subject", "body"]',
        ),
    ]


def test_sections_come_in_a_stable_order(old, new):
    new["tools"]["records.search"]["category"] = "internal"
    new["model"]["temperature"] = 0.3
    new["allowed_tools"] = []
    steps_of(new)["send"]["args"]["subject"] = "Re: {{ input.subject }}"
    new["target_turnaround_minutes"] = 30
    new["notes"] = "Free text"

    changes = diff_bundles(old, new)

    assert [(c.section, c.path) for c in changes] == [
        (MODEL, "model · temperature"),
        (STEPS, "step 'send' · args · subject"),
        (ALLOWED_TOOLS, "allowed tools · records.search"),
        ("service level", "target turnaround (minutes)"),
        (TOOLS, "tool 'records.search' · category"),
        ("other", "notes"),
    ]
    assert diff_bundles(old, new) == changes


def test_everything_is_added_when_there_is_nothing_before(new):
    changes = diff_bundles(None, new)

    assert {c.kind for c in changes} == {ADDED}
    assert [c.path for c in changes if c.section == STEPS] == [
        "step 'classify'",
        "step 'lookup'",
        "step 'draft'",
        "step 'send'",
    ]


def test_the_html_escapes_what_the_bundle_says(old, new):
    steps_of(new)["draft"]["prompt"] = "<script>alert('x')</script>"
    new["allowed_tools"].append("<b>bold</b>")

    html = render_diff_html(diff_bundles(old, new))

    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html
    assert '<span class="add">+&lt;script&gt;' in html
    assert 'class="desk-diff-kind added"' in html
    # The admin's colours (light and dark themes), from the stylesheet: the page's CSP
    # allows no inline <style>.
    assert "<style" not in html
    stylesheet = finders.find("desk/admin.css")
    assert ".desk-diff-lines .add" in Path(stylesheet).read_text()
    assert "var(--message-success-bg)" in Path(stylesheet).read_text()
