"""Approval policies and escalations in the admin."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from approvals.gate import ApprovalGate
from approvals.models import ApprovalPolicy, Escalation, PolicyChange
from approvals.services import DecisionError
from audit.models import AuditEvent
from audit.services import Actor
from desk.models import Run
from tenants.services import update_tenant_settings
from tests.admin.conftest import parked, start_intake
from tests.runtime import advance

POLICY_ADD = reverse("admin:approvals_approvalpolicy_add")


def policy_data(tenant, **overrides) -> dict:
    return {
        "tenant": tenant.pk,
        "category": "scheduling",
        "mode": "review",
        "required_approvals": 2,
        "due_minutes": 60,
        "remind_every_minutes": 30,
        "max_reminders": 1,
        "final_action": "hold",
        "max_rounds": 3,
        **overrides,
    }


def apply_change(client, user, change):
    client.force_login(user)
    return client.post(
        reverse("admin:approvals_policychange_changelist"),
        {
            "action": "apply_changes",
            "_selected_action": [change.pk],
            "confirm": "yes",
            "reason": "Checked with the partners.",
        },
    )


def test_an_operator_proposes_a_policy_and_a_second_operator_applies_it(
    client, users, harbor, intake_role
):
    ApprovalPolicy.objects.filter(tenant=harbor, category="scheduling").delete()  # a gap
    client.force_login(users["ops"])

    response = client.post(POLICY_ADD, policy_data(harbor))

    change = PolicyChange.objects.get()
    assert response.status_code == 302
    assert not ApprovalPolicy.objects.filter(tenant=harbor, category="scheduling").exists()
    assert change.status == PolicyChange.Status.PENDING
    assert change.after["required_approvals"] == 2

    mine = apply_change(client, users["ops"], change)  # the proposer may not apply it
    change.refresh_from_db()
    assert mine.status_code == 302
    assert change.status == PolicyChange.Status.PENDING
    assert not ApprovalPolicy.objects.filter(tenant=harbor, category="scheduling").exists()

    apply_change(client, users["ops.second"], change)

    change.refresh_from_db()
    policy = ApprovalPolicy.objects.get(tenant=harbor, category="scheduling")
    assert change.status == PolicyChange.Status.APPLIED
    assert (policy.required_approvals, policy.max_reminders) == (2, 1)
    assert policy.history.get().history_user == users["ops.second"]
    actions = list(
        AuditEvent.objects.filter(action__startswith="policy.change_")
        .order_by("seq")
        .values_list("action", "actor_user__username")
    )
    assert actions == [
        ("policy.change_proposed", "ops"),
        ("policy.change_applied", "ops.second"),
    ]


def test_a_duplicate_tenant_wide_policy_is_a_form_error(client, users, harbor):
    count = ApprovalPolicy.objects.count()
    client.force_login(users["ops"])

    response = client.post(POLICY_ADD, policy_data(harbor, category="client_comms"))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert ApprovalPolicy.objects.count() == count


def test_reviewers_only_read_policies(client, users, harbor):
    policy = ApprovalPolicy.objects.filter(tenant=harbor).first()
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        reverse("admin:approvals_approvalpolicy_change", args=[policy.pk]),
        policy_data(harbor, category=policy.category, required_approvals=9),
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


def test_switching_a_category_to_auto_waits_for_a_second_operator(client, users, harbor):
    policy = ApprovalPolicy.objects.get(tenant=harbor, category="client_comms")
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:approvals_approvalpolicy_change", args=[policy.pk]),
        policy_data(harbor, category="client_comms", mode="auto", required_approvals=1),
    )

    policy.refresh_from_db()
    change = PolicyChange.objects.get()
    assert response.status_code == 302
    assert policy.mode == ApprovalPolicy.Mode.REVIEW  # nothing applies yet
    assert (change.before["mode"], change.after["mode"]) == ("review", "auto")
    page = client.get(reverse("admin:approvals_policychange_change", args=[change.pk]))
    assert "desk-changed" in page.content.decode()  # the before/after table marks the change


def test_deleting_a_policy_waits_for_a_second_operator(client, users, harbor):
    policy = ApprovalPolicy.objects.get(tenant=harbor, category="client_comms")
    client.force_login(users["ops"])

    client.post(reverse("admin:approvals_approvalpolicy_delete", args=[policy.pk]), {"post": "yes"})

    assert ApprovalPolicy.objects.filter(pk=policy.pk).exists()
    change = PolicyChange.objects.get()
    assert change.action == PolicyChange.Action.DELETE

    apply_change(client, users["ops.second"], change)

    assert not ApprovalPolicy.objects.filter(pk=policy.pk).exists()


def test_a_change_proposed_on_a_policy_changed_since_is_refused(client, users, harbor):
    from approvals.services import approve_policy_change, propose_policy_change

    policy = ApprovalPolicy.objects.get(tenant=harbor, category="client_comms")
    values = {**change_values(policy), "mode": "auto"}
    first = propose_policy_change(
        tenant=harbor, actor=Actor.for_user(users["ops"]), values=values, policy=policy
    )
    second = propose_policy_change(
        tenant=harbor,
        actor=Actor.for_user(users["ops"]),
        values={**change_values(policy), "required_approvals": 3},
        policy=policy,
    )
    approve_policy_change(change=second, actor=Actor.for_user(users["ops.second"]))

    with pytest.raises(DecisionError) as caught:
        approve_policy_change(change=first, actor=Actor.for_user(users["ops.second"]))

    policy.refresh_from_db()
    assert caught.value.code == "stale"
    assert (policy.mode, policy.required_approvals) == ("review", 3)


def change_values(policy):
    from approvals.services import policy_values

    return policy_values(policy)


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
