"""Approval policies and escalations in the admin."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from approvals.gate import ApprovalGate
from approvals.models import ApprovalPolicy, Escalation
from audit.models import AuditEvent
from audit.services import Actor
from desk.models import Run
from roles.models import Role
from tenants.services import update_tenant_settings
from tests.admin.conftest import parked, start_intake
from tests.runtime import advance

POLICY_ADD = reverse("admin:approvals_approvalpolicy_add")


def policy_data(tenant, role, **overrides) -> dict:
    return {
        "tenant": tenant.pk,
        "role": role.pk if role else "",
        "category": "scheduling",
        "mode": "review",
        "required_approvals": 2,
        "due_minutes": 60,
        "on_timeout": "escalate",
        **overrides,
    }


def test_a_policy_for_a_role_of_another_tenant_is_refused(client, users, harbor, northwind):
    northwind_role = Role.objects.get(tenant=northwind, slug="month-end-reporter")
    count = ApprovalPolicy.objects.count()
    client.force_login(users["ops"])

    response = client.post(POLICY_ADD, policy_data(harbor, northwind_role))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["role"] == [
        "Month-end reporter is a role of Northwind Accounting, not of Harbor Legal LLP."
    ]
    assert ApprovalPolicy.objects.count() == count


def test_an_operator_adds_a_policy_with_history(client, users, harbor, intake_role):
    client.force_login(users["ops"])

    response = client.post(POLICY_ADD, policy_data(harbor, intake_role))

    policy = ApprovalPolicy.objects.get(tenant=harbor, role=intake_role, category="scheduling")
    assert response.status_code == 302
    assert (policy.required_approvals, policy.on_timeout) == (2, "escalate")
    assert policy.history.get().history_user == users["ops"]


def test_a_duplicate_tenant_wide_policy_is_a_form_error(client, users, harbor):
    count = ApprovalPolicy.objects.count()
    client.force_login(users["ops"])

    response = client.post(POLICY_ADD, policy_data(harbor, None, category="client_comms"))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert ApprovalPolicy.objects.count() == count


def test_reviewers_only_read_policies(client, users, harbor):
    policy = ApprovalPolicy.objects.filter(tenant=harbor).first()
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        reverse("admin:approvals_approvalpolicy_change", args=[policy.pk]),
        policy_data(harbor, None, category=policy.category, required_approvals=9),
    )

    policy.refresh_from_db()
    assert response.status_code == 403
    assert policy.required_approvals != 9


@pytest.fixture
def escalation(harbor, users) -> Escalation:
    run = parked(harbor, users["ops"])
    with transaction.atomic():
        ApprovalGate().open_escalation(run=run, step=None, reason="Sender unknown")
    return Escalation.objects.get(run=run)


def test_an_operator_resolves_an_escalation_with_what_was_done(client, users, escalation):
    client.force_login(users["ops"])
    url = reverse("admin:approvals_escalation_changelist")
    selected = {"action": "resolve_escalations", "_selected_action": [escalation.pk]}

    confirmation = client.post(url, {**selected, "index": "0"})
    done = client.post(url, {**selected, "confirm": "yes", "reason": "Called the client."})

    escalation.refresh_from_db()
    assert confirmation.status_code == 200
    assert str(escalation) in confirmation.content.decode()
    assert done.status_code == 302
    assert escalation.status == Escalation.Status.RESOLVED
    assert escalation.resolution == "Called the client."
    assert escalation.resolved_by == users["ops"]


def test_auditors_see_escalations_but_cannot_resolve(client, users, escalation):
    client.force_login(users["auditor"])
    url = reverse("admin:approvals_escalation_changelist")

    listing = client.get(url)
    client.post(
        url,
        {
            "action": "resolve_escalations",
            "_selected_action": [escalation.pk],
            "confirm": "yes",
            "reason": "Not mine to do.",
        },
    )

    escalation.refresh_from_db()
    assert [e.pk for e in listing.context["cl"].result_list] == [escalation.pk]
    assert escalation.status == Escalation.Status.OPEN
    assert Run.objects.get(pk=escalation.run_id).status == Run.Status.WAITING_APPROVAL


def test_policies_are_saved_through_the_service(client, users, harbor, intake_role):
    client.force_login(users["ops"])

    client.post(POLICY_ADD, policy_data(harbor, intake_role))
    policy = ApprovalPolicy.objects.get(tenant=harbor, role=intake_role, category="scheduling")
    changed = client.post(
        reverse("admin:approvals_approvalpolicy_change", args=[policy.pk]),
        policy_data(harbor, intake_role, required_approvals=3),
    )

    policy.refresh_from_db()
    events = AuditEvent.objects.filter(
        tenant=harbor, object_type="approvals.ApprovalPolicy", object_id=str(policy.pk)
    ).order_by("seq")
    assert changed.status_code == 302
    assert policy.required_approvals == 3
    assert [(e.action, e.actor_user) for e in events] == [
        ("policy.created", users["ops"]),
        ("policy.updated", users["ops"]),
    ]
    assert events.last().data == {"role": "intake-coordinator", "required_approvals": [2, 3]}


@pytest.fixture
def budget_escalation(harbor, users) -> Escalation:
    """A run held by harbor's token budget, and the escalation that says so."""
    parked(harbor, users["ops"])  # its model calls use up the budget set next
    update_tenant_settings(
        tenant=harbor, actor=Actor.system("tests"), changes={"monthly_token_budget": 1}
    )
    run = start_intake(harbor, users["ops"])
    advance(run.pk)
    assert Run.objects.get(pk=run.pk).status == Run.Status.ON_HOLD
    return Escalation.objects.get(run=run)


def test_escalations_show_their_kind(client, users, escalation, budget_escalation):
    client.force_login(users["ops"])
    url = reverse("admin:approvals_escalation_changelist")

    listing = client.get(url)
    budgets = client.get(url, {"kind__exact": "budget"})

    assert "Monthly budget reached" in listing.content.decode()
    assert [e.pk for e in budgets.context["cl"].result_list] == [budget_escalation.pk]


def test_resolving_a_budget_escalation_says_it_lifts_the_budget(
    client, users, harbor, budget_escalation
):
    client.force_login(users["ops"])
    url = reverse("admin:approvals_escalation_changelist")
    selected = {"action": "resolve_escalations", "_selected_action": [budget_escalation.pk]}
    note = (
        "Resolving a budget escalation lifts Harbor Legal LLP&#x27;s monthly budget until the "
        "end of the month and resumes every run on hold for it."
    )

    page = client.get(reverse("admin:approvals_escalation_change", args=[budget_escalation.pk]))
    confirmation = client.post(url, {**selected, "index": "0"})
    done = client.post(
        url, {**selected, "confirm": "yes", "reason": "Client approved more spend."}, follow=True
    )

    harbor.refresh_from_db()
    budget_escalation.refresh_from_db()
    assert note in page.content.decode()
    assert note in confirmation.content.decode()
    assert [str(m) for m in done.context["messages"]] == [
        f"Resolved {budget_escalation}: Harbor Legal LLP's budget is lifted until the end of "
        "the month and its runs on hold resume."
    ]
    assert budget_escalation.status == Escalation.Status.RESOLVED
    assert harbor.budget_lifted_until > timezone.now()
    assert Run.objects.get(pk=budget_escalation.run_id).status == Run.Status.RUNNING
