"""Runs in the admin: start one, follow its timeline, cancel it."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from desk.models import Run
from roles.models import Role
from tests.admin.conftest import parked
from tests.conftest import INTAKE_INPUT

ADD_URL = reverse("admin:desk_run_add")
CHANGELIST_URL = reverse("admin:desk_run_changelist")


def test_input_that_does_not_match_the_schema_is_refused_with_details(
    client, users, harbor, intake_role
):
    client.force_login(users["ops"])

    response = client.post(
        ADD_URL,
        {
            "tenant": harbor.pk,
            "role": intake_role.pk,
            "input": json.dumps({"subject": "", "extra": 1}),
        },
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["input"] == [
        "The input does not match the role's input schema.",
        "(root): 'from_email' is a required property",
        "(root): 'body' is a required property",
        "(root): Additional properties are not allowed ('extra' was unexpected)",
        "subject: '' should be non-empty",
    ]
    assert Run.objects.count() == 0


def test_a_role_of_another_tenant_is_refused(client, users, harbor, northwind):
    northwind_role = Role.objects.get(tenant=northwind, slug="intake-coordinator")
    client.force_login(users["ops"])

    response = client.post(
        ADD_URL,
        {"tenant": harbor.pk, "role": northwind_role.pk, "input": json.dumps(INTAKE_INPUT)},
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["role"] == [
        "No role 'intake-coordinator' in tenant 'harbor-legal'."
    ]
    assert Run.objects.count() == 0


def test_reviewers_cannot_start_runs(client, users, harbor, intake_role):
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        ADD_URL, {"tenant": harbor.pk, "role": intake_role.pk, "input": json.dumps(INTAKE_INPUT)}
    )

    assert response.status_code == 403
    assert Run.objects.count() == 0


@pytest.fixture
def parked_run(harbor, users) -> Run:
    return parked(harbor, users["ops"])


def test_cancel_asks_for_a_reason_then_cancels(client, users, parked_run):
    client.force_login(users["ops"])
    selected = {"action": "cancel_runs", "_selected_action": [parked_run.pk]}

    confirmation = client.post(CHANGELIST_URL, {**selected, "index": "0"})
    without_reason = client.post(CHANGELIST_URL, {**selected, "confirm": "yes", "reason": " "})

    parked_run.refresh_from_db()
    assert confirmation.status_code == 200
    assert confirmation.templates[0].name == "admin/agentdesk/confirm_with_reason.html"
    assert without_reason.status_code == 200
    assert without_reason.context["form"].errors == {"reason": ["This field is required."]}
    assert parked_run.status == Run.Status.WAITING_APPROVAL

    done = client.post(
        CHANGELIST_URL, {**selected, "confirm": "yes", "reason": "Client called instead"}
    )

    parked_run.refresh_from_db()
    assert done.status_code == 302
    assert parked_run.status == Run.Status.CANCELLED
    assert parked_run.error == "Client called instead"
    assert ApprovalRequest.objects.get(run=parked_run).status == ApprovalRequest.Status.CANCELLED


def test_reviewers_have_no_cancel_action(client, users, parked_run):
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        CHANGELIST_URL,
        {
            "action": "cancel_runs",
            "_selected_action": [parked_run.pk],
            "confirm": "yes",
            "reason": "x",
        },
    )

    parked_run.refresh_from_db()
    assert response.status_code == 200  # the changelist again: no such action for them
    assert parked_run.status == Run.Status.WAITING_APPROVAL


def test_the_run_page_shows_its_timeline_approvals_and_trail(client, users, parked_run):
    request = ApprovalRequest.objects.get(run=parked_run)
    client.force_login(users["auditor"])

    response = client.get(reverse("admin:desk_run_change", args=[parked_run.pk]))

    content = response.content.decode()
    assert response.status_code == 200
    assert [step.key for step in response.context["steps"]] == [
        "classify",
        "lookup",
        "draft",
        "send",
    ]
    assert reverse("admin:approvals_approvalrequest_change", args=[request.pk]) in content
    assert [e.action for e in response.context["audit_events"]] == list(
        AuditEvent.objects.filter(run_id=parked_run.pk)
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert "Tool call: <code>records.search</code>" in content
    assert 'name="_save"' not in content


def test_reviewers_see_the_timeline_but_not_the_trail(client, users, parked_run):
    client.force_login(users["reviewer.harbor"])

    response = client.get(reverse("admin:desk_run_change", args=[parked_run.pk]))

    assert response.status_code == 200
    assert response.context["may_audit"] is False
    assert response.context["audit_events"] == []
    assert 'id="audit"' not in response.content.decode()
