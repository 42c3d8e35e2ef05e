"""Attacks on the admin's JSON and text fields: what the intake API refuses (NUL characters,
lone surrogates, deep nesting, numbers no database stores) is a form error here too, and
nothing is saved."""

from __future__ import annotations

import json

import pytest
from django import forms
from django.urls import reverse

from approvals.forms import _to_json
from approvals.models import ApprovalRequest, Decision
from audit.models import AuditEvent
from audit.services import Actor
from desk.models import Run, StepRun
from desk.services import start_run
from roles.services import create_role, create_role_version
from tenants.models import ClientRecord
from tenants.safe_json import UnsafeJSON, check
from tests.conftest import INTAKE_INPUT
from tests.publishing import publish
from tests.runtime import advance

SYSTEM = Actor.system("tests")

# JSON text as a person would paste it: the escapes are what json.loads turns into the
# characters PostgreSQL refuses or no database can encode.
UNSAFE_TEXTS = {
    "nul-in-a-value": '{"from_email": "maya@example.com", "subject": "a\\u0000b", "body": "x"}',
    "nul-in-a-key": '{"from_email": "maya@example.com", "subject": "s", "body": "x", "\\u0000": 1}',
    "surrogate-in-a-value": '{"from_email": "maya@example.com", "subject": "\\ud800", "body": "x"}',
    "surrogate-in-the-e-mail": '{"from_email": "\\udfff@example.com", "subject": "s", "body": "x"}',
    "surrogate-in-a-key": '{"from_email": "m@example.com", "subject": "s", "\\ud800": 1}',
    "nested-5000-deep": '{"deep": ' + "[" * 5000 + "]" * 5000 + "}",
    "nan": '{"from_email": "maya@example.com", "subject": "s", "body": "x", "n": NaN}',
    "1e999": '{"from_email": "maya@example.com", "subject": "s", "body": "x", "n": 1e999}',
}


def counts():
    return (
        Run.objects.count(),
        StepRun.objects.count(),
        ClientRecord.objects.count(),
        Decision.objects.count(),
        AuditEvent.objects.count(),
    )


@pytest.fixture
def free_form(harbor):
    """A published role whose input schema takes any object: only safe JSON stops a value."""
    role = create_role(tenant=harbor, slug="free-form", name="Free form", actor=SYSTEM)
    definition = {
        "input_schema": {"type": "object"},
        "steps": [{"key": "check", "kind": "review", "category": "internal"}],
    }
    publish(create_role_version(role=role, definition=definition, actor=SYSTEM))
    return role


@pytest.mark.parametrize("text", UNSAFE_TEXTS.values(), ids=UNSAFE_TEXTS.keys())
def test_unsafe_json_in_the_run_input_form_is_a_form_error_and_starts_nothing(
    client, users, harbor, free_form, text
):
    client.force_login(users["ops"])
    before = counts()

    response = client.post(
        reverse("admin:desk_run_add"),
        {"tenant": harbor.pk, "role": free_form.pk, "input": text},
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["input"]
    assert counts() == before


def test_a_nul_byte_in_the_run_input_form_names_where_it_is(client, users, harbor, intake_role):
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:desk_run_add"),
        {"tenant": harbor.pk, "role": intake_role.pk, "input": UNSAFE_TEXTS["nul-in-a-value"]},
    )

    assert response.context["adminform"].form.errors["input"] == [
        "subject: Contains a NUL character (\\u0000)."
    ]
    assert Run.objects.count() == 0


def record_form(tenant, data: str) -> dict:
    return {
        "tenant": tenant.pk,
        "reference": "C-7001",
        "kind": "contact",
        "name": "Ines Duarte",
        "email": "ines@example.com",
        "data": data,
    }


CLIENT_DATA = {
    "a-list": "[1, 2]",
    "a-string": '"text"',
    "nul": '{"company": "Duarte\\u0000Design"}',
    "surrogate": '{"company": "\\ud800"}',
    "surrogate-key": '{"\\udc00": "x"}',
    "nested-5000-deep": '{"deep": ' + "[" * 5000 + "]" * 5000 + "}",
    "infinity": '{"revenue": Infinity}',
}


@pytest.mark.parametrize("data", CLIENT_DATA.values(), ids=CLIENT_DATA.keys())
def test_a_client_records_data_must_be_a_safe_json_object(client, users, harbor, data):
    client.force_login(users["ops"])
    before = counts()

    response = client.post(reverse("admin:tenants_clientrecord_add"), record_form(harbor, data))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["data"]
    assert counts() == before
    assert not ClientRecord.objects.filter(reference="C-7001").exists()


def test_a_client_records_changed_data_is_checked_too(client, users, harbor):
    client.force_login(users["ops"])
    client.post(reverse("admin:tenants_clientrecord_add"), record_form(harbor, '{"a": 1}'))
    record = ClientRecord.objects.get(reference="C-7001")
    before = counts()

    response = client.post(
        reverse("admin:tenants_clientrecord_change", args=[record.pk]),
        record_form(harbor, '{"a": "\\u0000"}'),
    )

    assert response.status_code == 200
    record.refresh_from_db()
    assert record.data == {"a": 1}
    assert counts() == before


@pytest.fixture
def checkpoint(harbor) -> ApprovalRequest:
    """A run parked at a review checkpoint, whose correction is JSON per step."""
    role = create_role(tenant=harbor, slug="figures", name="Figures", actor=SYSTEM)
    definition = {
        "input_schema": {"type": "object"},
        "steps": [
            {
                "key": "estimate",
                "kind": "llm",
                "category": "internal",
                "prompt": "Estimate the fee.",
                "output_schema": {
                    "type": "object",
                    "properties": {"subject": {"type": "string"}, "body": {"type": "string"}},
                    "required": ["subject", "body"],
                },
            },
            {"key": "check", "kind": "review", "category": "internal", "instructions": "Check"},
        ],
    }
    publish(create_role_version(role=role, definition=definition, actor=SYSTEM))
    run = start_run(tenant=harbor, role=role, input={}, actor=SYSTEM, via="command")
    advance(run.pk)
    return ApprovalRequest.objects.get(run=run, status=ApprovalRequest.Status.PENDING)


REVIEW_EDITS = {
    "nul": '{"subject": "s", "body": "\\u0000"}',
    "surrogate": '{"subject": "\\ud83d", "body": "b"}',
    "surrogate-key": '{"subject": "s", "body": "b", "\\ud800": 1}',
    "nested-5000-deep": '{"subject": "s", "body": "b", "deep": ' + "[" * 5000 + "]" * 5000 + "}",
    "nan": '{"subject": "s", "body": "b", "n": NaN}',
}


@pytest.mark.parametrize("edit", REVIEW_EDITS.values(), ids=REVIEW_EDITS.keys())
def test_unsafe_json_in_the_reviewers_edit_is_a_form_error_and_decides_nothing(
    client, users, checkpoint, edit
):
    client.force_login(users["reviewer.harbor"])
    before = counts()

    response = client.post(
        reverse("admin:approvals_approvalrequest_change", args=[checkpoint.pk]),
        {"version": checkpoint.version, "verdict": "edit", "field__estimate": edit},
    )

    assert response.status_code == 200
    assert response.context["review_form"].errors["field__estimate"]
    assert counts() == before
    checkpoint.refresh_from_db()
    assert (checkpoint.status, checkpoint.version) == (ApprovalRequest.Status.PENDING, 1)


def test_a_safe_edit_of_the_checkpoint_still_goes_through(client, users, checkpoint):
    client.force_login(users["reviewer.harbor"])
    corrected = {"subject": "Fee", "body": "The fee is 1,200 EUR."}

    response = client.post(
        reverse("admin:approvals_approvalrequest_change", args=[checkpoint.pk]),
        {
            "version": checkpoint.version,
            "verdict": "edit",
            "field__estimate": json.dumps(corrected),
        },
    )

    assert response.status_code == 302
    assert Decision.objects.get(request=checkpoint).edited_payload["outputs"] == {
        "estimate": corrected
    }


@pytest.mark.parametrize("typed", ["1e999999999", "-1e999999999", str(2**63)])
def test_a_huge_number_typed_in_a_number_field_is_refused_without_building_it(typed):
    field = forms.DecimalField(required=False)

    value = _to_json(field, field.clean(typed))

    with pytest.raises(UnsafeJSON, match="Numbers"):
        check({"draft": {"amount": value}})


def test_a_lone_surrogate_posted_in_a_text_field_arrives_replaced_not_as_a_crash(
    client, users, harbor, intake_role
):
    # Form text reaches Django as UTF-8 bytes: the encoded surrogate (ED A0 80) is not
    # UTF-8, and Django decodes it as U+FFFD; JSON escapes are what the fields above check.
    client.force_login(users["ops"])
    body = (
        f"tenant={harbor.pk}&role={intake_role.pk}&input="
        + "%7B%22from_email%22%3A%22m%40example.com%22%2C%22subject%22%3A%22%ED%A0%80%22%2C"
        "%22body%22%3A%22x%22%7D"
    )

    response = client.post(
        reverse("admin:desk_run_add"), body, content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 302
    assert Run.objects.get().input["subject"] == "\ufffd\ufffd\ufffd"


def test_a_nul_in_a_text_field_is_refused_by_djangos_own_validator(client, users, harbor):
    client.force_login(users["ops"])
    before = counts()

    response = client.post(
        reverse("admin:tenants_clientrecord_add"),
        {**record_form(harbor, "{}"), "name": "Ines\x00Duarte"},
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["name"]
    assert counts() == before


def test_input_with_intake_fields_still_starts_a_run(client, users, harbor, intake_role):
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:desk_run_add"),
        {"tenant": harbor.pk, "role": intake_role.pk, "input": json.dumps(INTAKE_INPUT)},
    )

    assert response.status_code == 302
    assert Run.objects.count() == 1
