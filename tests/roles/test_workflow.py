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

    found = messages(
        {"allowed_tools": ["email.send"], "allowed_data_kinds": ["contact"], "steps": [step]}
    )

    assert found == ["Step 't': 'records.search' is not in the bundle's allowed tools."]


def test_an_empty_allow_list_allows_no_tool_step_and_no_data_kind():
    step = {"key": "t", "kind": "tool", "category": "data_access", "tool": "records.search"}

    assert messages({"steps": [step]}) == [
        "Step 't': 'records.search' is not in the bundle's allowed tools.",
        "Step 't': 'records.search' reads records, but 'allowed_data_kinds' is empty "
        "(an empty list allows nothing).",
    ]


def test_a_fixed_kind_outside_the_allowed_data_kinds_is_refused():
    step = {
        "key": "t",
        "kind": "tool",
        "category": "data_access",
        "tool": "records.search",
        "args": {"query": "a", "kind": "ledger"},
    }

    found = messages(
        {"allowed_tools": ["records.search"], "allowed_data_kinds": ["contact"], "steps": [step]}
    )

    assert found == ["Step 't': the kind 'ledger' is not in 'allowed_data_kinds'."]


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


# --- least privilege: where a tool's targets may come from ---------------------------------

DRAFT_WITH_RECIPIENT = {
    "key": "draft",
    "kind": "llm",
    "category": "internal",
    "prompt": "Write to the client: {{ input.body }}",
    "output_schema": {
        "type": "object",
        "properties": {
            "to": {"type": "string"},
            "subject": {"type": "string"},
            "body": {"type": "string"},
            "references": {"type": "array", "items": {"type": "string"}},
        },
    },
}
LOOKUP = {
    "key": "lookup",
    "kind": "tool",
    "category": "data_access",
    "tool": "records.search",
    "args": {"email": "{{ input.email }}"},
}


def mailer(to, *, covered_by=None, rules=(), extra_steps=()):
    send = {
        "key": "send",
        "kind": "tool",
        "category": "client_comms",
        "tool": "email.send",
        "args": {
            "to": to,
            "subject": "{{ steps.draft.subject }}",
            "body": "{{ steps.draft.body }}",
        },
    }
    if covered_by:
        send["covered_by"] = covered_by
    return {
        "allowed_tools": ["email.send", "records.search", "records.get"],
        "allowed_data_kinds": ["contact"],
        "approval_rules": list(rules),
        "steps": [DRAFT_WITH_RECIPIENT, LOOKUP, *extra_steps, send],
    }


CLIENT_COMMS_RULE = {"category": "client_comms", "required_approvals": 1}


class TestTargetProvenance:
    def test_each_registered_tool_marks_its_targets(self):
        from desk.tools import get_tool
        from roles.workflow import target_args

        marked = {
            name: target_args(get_tool(name).args_schema)
            for name in ("email.send", "records.search", "records.get")
        }

        assert marked == {
            "email.send": {"to"},
            "records.search": {"email", "query"},
            "records.get": {"references"},
        }

    def test_a_recipient_taken_from_model_output_is_refused_naming_step_and_argument(self):
        found = messages(mailer("{{ steps.draft.to }}"))

        assert found == [
            "Step 'send': the target 'to' reads steps.draft, which is model output (only "
            "input, records a records tool read and fixed text are trusted); a reviewer must "
            "approve the rendered value at this step, so the step must have an approval rule "
            "for 'client_comms' in 'approval_rules'."
        ]

    def test_a_recipient_from_model_output_covered_by_an_earlier_approval_is_refused(self):
        definition = mailer("{{ steps.draft.to }}", covered_by="draft", rules=[CLIENT_COMMS_RULE])

        found = messages(definition)

        assert len(found) == 1
        assert "the step must not be covered by 'draft'." in found[0]

    def test_a_recipient_from_model_output_approved_at_its_own_step_passes(self):
        validate_definition(mailer("{{ steps.draft.to }}", rules=[CLIENT_COMMS_RULE]))

    @pytest.mark.parametrize(
        "to",
        [
            "{{ input.email }}",
            "{{ steps.lookup.records[0].email }}",
            "{{ steps['lookup'].records[0].email }}",
            "partners@harbor.example",
            "{{ input.local_part }}@harbor.example",
            "{{ tenant.slug }}-ops@agentdesk.example",
        ],
        ids=["input", "records", "records by item", "fixed text", "input in text", "tenant"],
    )
    def test_targets_from_input_records_and_fixed_text_pass(self, to):
        validate_definition(mailer(to))

    @pytest.mark.parametrize(
        ("to", "reads"),
        [
            ("{% set x = steps.draft %}{{ x.to }}", "steps.draft"),
            ("{% set input = steps.draft %}{{ input.to }}", "steps.draft"),
            ("{{ steps['draft'].to }}", "steps.draft"),
            ("{{ steps[input.which].to }}", "steps.*"),
            ("{{ (steps | list)[0] }}", "steps.*"),
            ("{% for t in steps.draft.references %}{{ t }}{% endfor %}", "steps.draft"),
            ("{{ input.email if steps.draft.to else 'x@example.com' }}", "steps.draft"),
            ("{{ steps.lookup.records[0].email ~ steps.draft.to }}", "steps.draft"),
            ("{{ steps.check.to }}", "steps.check"),
            ("{{ steps.later.to }}", "steps.later"),
        ],
        ids=[
            "set",
            "shadowed input",
            "item",
            "computed key",
            "whole steps",
            "loop",
            "condition",
            "concatenation",
            "checkpoint",
            "not an earlier step",
        ],
    )
    def test_model_output_laundered_through_the_template_is_still_model_output(self, to, reads):
        check = {"key": "check", "kind": "review", "category": "internal", "instructions": "Ok?"}

        found = messages(mailer(to, extra_steps=[check]))

        assert len(found) == 1
        assert f"the target 'to' reads {reads}" in found[0]

    @pytest.mark.parametrize(
        ("tool", "args"),
        [
            ("records.search", {"query": "{{ steps.draft.subject }}"}),
            ("records.search", {"email": "{{ steps.draft.to }}"}),
            ("records.get", {"references": "{{ steps.draft.references }}"}),
            ("records.get", {"references": ["{{ steps.draft.references[0] }}"]}),
        ],
        ids=["search by name", "search by e-mail", "get", "get one of a list"],
    )
    def test_records_chosen_by_model_output_are_refused(self, tool, args):
        peek = {"key": "peek", "kind": "tool", "category": "data_access", "tool": tool}

        found = messages(mailer("{{ input.email }}", extra_steps=[{**peek, "args": args}]))

        assert len(found) == 1
        assert found[0].startswith("Step 'peek': the target ")
        assert "approval rule for 'data_access'" in found[0]

    def test_the_demo_roles_still_validate(self):
        from desk.demo import ROLES

        for role in ROLES:
            validate_definition(role["definition"])

    def test_a_pin_saved_before_targets_were_marked_still_matches_and_keeps_its_targets(self):
        from roles.workflow import pin_tools, tool_drift, tool_targets

        bundle = pin_tools(mailer("{{ input.email }}"))
        pinned = bundle["tools"]["email.send"]["args_schema"]
        pinned["properties"]["to"].pop("x-desk-target")

        assert tool_drift(bundle, "email.send") == ""
        assert tool_targets(bundle, "email.send") == {"to"}


class TestTargetValues:
    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            ("maya.chen@example.com\x00attacker@evil.example", "contains a control character"),
            ("maya.chen@example.com\r\nBcc: attacker@evil.example", "contains a control character"),
            ("a" * 400 + "@example.com", "is longer than 320 characters"),
            (["C-1001", "C-1002\x00"], "contains a control character"),
            ("maya.chen@example.com", ""),
        ],
        ids=["nul", "header injection", "overlong", "one of a list", "plain"],
    )
    def test_a_target_value_is_short_plain_text(self, value, problem):
        from roles.workflow import target_value_problem

        assert target_value_problem(value) == problem
