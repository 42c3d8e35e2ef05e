"""Workflow definitions: every mistake an author can make gets a clear message."""

import pytest
from django.core.exceptions import ValidationError

from roles.workflow import RenderError, render_text, render_value, validate_definition

LLM_STEP = {
    "key": "draft",
    "kind": "llm",
    "category": "client_comms",
    "prompt": "Reply to {{ input.subject }}",
    "output_schema": {"type": "object", "properties": {"body": {"type": "string"}}},
}


def messages(definition, **kwargs):
    with pytest.raises(ValidationError) as caught:
        validate_definition(definition, **kwargs)
    return caught.value.messages


def test_a_good_definition_passes():
    validate_definition({"steps": [LLM_STEP]})


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ([], "The definition must be a JSON object"),
        ({"steps": []}, "'steps' must be a non-empty list."),
        ({"steps": [{**LLM_STEP, "key": "Bad Key"}]}, "needs a 'key' of lowercase letters"),
        ({"steps": [LLM_STEP, LLM_STEP]}, "the key 'draft' is used twice."),
        ({"steps": [{**LLM_STEP, "kind": "shell"}]}, "'kind' must be one of llm, tool, review."),
        ({"steps": [{**LLM_STEP, "category": "misc"}]}, "'category' must be one of"),
        ({"steps": [{k: v for k, v in LLM_STEP.items() if k != "prompt"}]}, "needs a 'prompt'"),
        ({"steps": [{**LLM_STEP, "prompt": "Hi {{ input.name "}]}, "prompt has a template error"),
        ({"steps": [{**LLM_STEP, "output_schema": {"type": "strang"}}]}, "not a valid JSON Schema"),
        (
            {"steps": [{"key": "t", "kind": "tool", "category": "internal", "tool": "shell.run"}]},
            "unknown tool 'shell.run'",
        ),
        (
            {"steps": [{"key": "t", "kind": "tool", "category": "internal", "tool": "email.send"}]},
            "'email.send' needs the args to, subject, body.",
        ),
        (
            {"steps": [{**LLM_STEP, "key": "a", "covered_by": "later"}]},
            "'covered_by' must name an earlier llm or review step.",
        ),
        ({"model": {"temperatur": 1}, "steps": [LLM_STEP]}, "'model' has unknown settings"),
    ],
)
def test_each_mistake_is_named(definition, expected):
    found = messages(definition)

    assert any(expected in message for message in found), found


def test_every_problem_is_listed_at_once():
    found = messages(
        {"steps": [{**LLM_STEP, "kind": "shell"}, {**LLM_STEP, "key": "b", "category": "x"}]}
    )

    assert len(found) == 2


def test_a_tool_the_role_may_not_use_is_refused():
    step = {
        "key": "t",
        "kind": "tool",
        "category": "data_access",
        "tool": "records.search",
        "args": {"email": "x"},
    }

    found = messages({"allowed_tools": ["email.send"], "steps": [step]})

    assert found == ["Step 't': 'records.search' is not in the bundle's allowed tools."]


def test_an_empty_allow_list_allows_no_tool_step():
    step = {"key": "t", "kind": "tool", "category": "data_access", "tool": "records.search"}

    assert messages({"steps": [step]}) == [
        "Step 't': 'records.search' is not in the bundle's allowed tools."
    ]


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        ({"surprise": 1}, "The bundle has unknown keys: surprise."),
        ({"input_schema": {"type": "strang"}}, "The input schema is not a valid JSON Schema"),
        ({"target_turnaround_minutes": 0}, "'target_turnaround_minutes' must be a whole number"),
        ({"target_turnaround_minutes": True}, "'target_turnaround_minutes' must be a whole number"),
        ({"allowed_tools": ["fax.send"]}, "'allowed_tools' names an unknown tool 'fax.send'."),
        ({"allowed_data_kinds": ["a b"]}, "'allowed_data_kinds' must be a list of data kinds"),
        ({"approval_rules": [{"category": "gossip"}]}, "'category' must be one of"),
        (
            {"approval_rules": [{"category": "financial"}, {"category": "financial"}]},
            "the category 'financial' has two rules",
        ),
        (
            {"approval_rules": [{"category": "financial", "required_approvals": 0}]},
            "'required_approvals' is too small",
        ),
        (
            {"approval_rules": [{"category": "financial", "approver_groups": ["A", "B"]}]},
            "require at least one approval per approver group",
        ),
        (
            {"approval_rules": [{"category": "financial", "final_action": "send"}]},
            "'final_action' must be hold or reject",
        ),
        ({"tools": {"email.send": {"category": "internal"}}}, "'tools' must map tool names"),
    ],
)
def test_every_bundle_key_is_checked(bundle, message):
    found = messages({"steps": [LLM_STEP], **bundle})

    assert any(message in m for m in found), found


class TestSandbox:
    def test_templates_cannot_reach_python_internals(self):
        with pytest.raises(RenderError):
            render_text("{{ input.__class__.__mro__[1].__subclasses__() }}", {"input": {}})

    def test_a_missing_name_is_an_error_not_an_empty_string(self):
        with pytest.raises(RenderError) as caught:
            render_text("Dear {{ input.name }}", {"input": {}})

        assert "name" in str(caught.value)

    def test_a_single_expression_keeps_its_type(self):
        context = {"input": {"ids": ["A", "B"]}}

        assert render_value("{{ input.ids }}", context) == ["A", "B"]
        assert render_value("ids: {{ input.ids | join(',') }}", context) == "ids: A,B"
        assert render_value({"x": ["{{ input.ids[0] }}"]}, context) == {"x": ["A"]}

    def test_authored_text_is_data(self):
        rendered = render_text("{{ input.body }}", {"input": {"body": "{{ 7 * 7 }}"}})

        assert rendered == "{{ 7 * 7 }}"
