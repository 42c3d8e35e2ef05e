"""Runs in the admin: start one, follow its timeline, cancel it."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from audit.services import Actor
from desk.models import Run
from desk.services import cancel_run, sla_state
from roles.models import Role
from tenants.services import update_tenant_settings
from tests.admin.conftest import parked, start_intake
from tests.conftest import INTAKE_INPUT
from tests.publishing import publish
from tests.runtime import advance, backdate

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
    report = f"{reverse('audit_reports:run')}?tenant={parked_run.tenant_id}&amp;run={parked_run.pk}"
    assert report in content


def test_reviewers_see_the_timeline_but_not_the_trail(client, users, parked_run):
    client.force_login(users["reviewer.harbor"])

    response = client.get(reverse("admin:desk_run_change", args=[parked_run.pk]))

    assert response.status_code == 200
    assert response.context["may_audit"] is False
    assert response.context["audit_events"] == []
    assert 'id="audit"' not in response.content.decode()
    assert reverse("audit_reports:run") not in response.content.decode()


# --- service levels and cost ------------------------------------------------------------


def started_minutes_ago(tenant, user, minutes: float) -> Run:
    run = start_intake(tenant, user)
    return backdate(run, created_at=timezone.now() - timedelta(minutes=minutes))


@pytest.fixture
def runs_by_age(harbor, users, intake_role) -> dict[str, Run]:
    """Open intake runs (target turnaround: 60 min) of several ages, and a finished late one."""
    assert intake_role.active_version.target_turnaround_minutes == 60
    runs = {
        "on_track": started_minutes_ago(harbor, users["ops"], 10),
        "at_risk": started_minutes_ago(harbor, users["ops"], 50),
        "breached": started_minutes_ago(harbor, users["ops"], 61),
    }
    finished = started_minutes_ago(harbor, users["ops"], 300)
    cancel_run(run=finished, actor=Actor.for_user(users["ops"]), reason="Not needed")
    runs["done"] = finished
    return runs


@pytest.mark.parametrize("level", ["at_risk", "breached"])
def test_the_service_level_filter_finds_runs_at_risk_or_late(client, users, runs_by_age, level):
    client.force_login(users["ops"])

    response = client.get(CHANGELIST_URL, {"service_level": level})

    assert response.status_code == 200
    assert [run.pk for run in response.context["cl"].result_list] == [runs_by_age[level].pk]
    assert sla_state(runs_by_age[level], now=timezone.now()) == level


def test_the_run_list_shows_service_level_cost_and_status(client, users, runs_by_age):
    Run.objects.filter(pk=runs_by_age["at_risk"].pk).update(cost=Decimal("0.012345"))
    client.force_login(users["ops"])

    response = client.get(CHANGELIST_URL)

    content = response.content.decode()
    assert '<span class="desk-sla on_track">On track</span>' in content
    assert '<span class="desk-sla at_risk">At risk</span>' in content
    assert '<span class="desk-sla breached">Breached</span>' in content
    assert '<span class="desk-badge cancelled">Cancelled</span>' in content
    assert "0.0123" in content


def test_a_run_on_hold_stands_out(client, users, harbor):
    parked(harbor, users["ops"])  # its model calls use up the budget set next
    update_tenant_settings(
        tenant=harbor, actor=Actor.system("tests"), changes={"monthly_token_budget": 1}
    )
    run = start_intake(harbor, users["ops"])
    advance(run.pk)
    client.force_login(users["ops"])

    response = client.get(CHANGELIST_URL, {"status": "on_hold"})

    assert [r.pk for r in response.context["cl"].result_list] == [run.pk]
    assert '<span class="desk-badge on_hold">On hold (escalated)</span>' in (
        response.content.decode()
    )


# --- by role version ----------------------------------------------------------------------


@pytest.fixture
def runs_of_two_versions(harbor, users, intake_role, ops_harbor) -> dict[str, list[Run]]:
    """Two intake runs on v1, then one on v2 (published and active)."""
    from roles.services import create_role_version

    on_v1 = [start_intake(harbor, users["ops"]) for _ in range(2)]
    v2 = create_role_version(
        role=intake_role,
        definition=intake_role.active_version.definition,
        actor=Actor.for_user(users["ops"]),
    )
    publish(v2)
    on_v2 = [start_intake(harbor, users["ops"])]
    assert {run.role_version.number for run in on_v2} == {2}
    return {"v1": on_v1, "v2": on_v2}


def version_filter(response):
    (spec,) = [
        s
        for s in response.context["cl"].filter_specs
        if getattr(s, "field_path", "") == "role_version"
    ]
    return spec


def test_runs_are_filtered_by_role_version(client, users, runs_of_two_versions):
    v2 = runs_of_two_versions["v2"][0].role_version
    client.force_login(users["reviewer.harbor"])

    response = client.get(CHANGELIST_URL, {"role_version__id__exact": v2.pk})

    assert response.status_code == 200
    assert [r.pk for r in response.context["cl"].result_list] == [runs_of_two_versions["v2"][0].pk]


def test_the_version_filter_offers_only_the_users_tenants_versions(
    client, users, harbor, runs_of_two_versions
):
    from roles.models import RoleVersion

    client.force_login(users["reviewer.harbor"])

    response = client.get(CHANGELIST_URL)

    offered = dict(version_filter(response).lookup_choices)
    harbors = RoleVersion.objects.filter(tenant=harbor)
    assert set(offered) == set(harbors.values_list("pk", flat=True))
    assert offered[runs_of_two_versions["v2"][0].role_version_id] == "Intake coordinator · v2"


def test_the_version_filter_narrows_to_the_chosen_role(client, users, runs_of_two_versions):
    role = runs_of_two_versions["v1"][0].role
    client.force_login(users["reviewer.harbor"])

    response = client.get(CHANGELIST_URL, {"role__id__exact": role.pk})

    assert [label for _, label in version_filter(response).lookup_choices] == [
        "Intake coordinator · v2",
        "Intake coordinator · v1",
    ]


def test_another_tenants_version_shows_no_runs(client, users, northwind, runs_of_two_versions):
    theirs = Role.objects.get(tenant=northwind, slug="intake-coordinator").active_version
    start_intake(northwind, users["ops"])
    client.force_login(users["reviewer.harbor"])

    response = client.get(CHANGELIST_URL, {"role_version__id__exact": theirs.pk})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []
    assert theirs.pk not in dict(version_filter(response).lookup_choices)


def test_the_version_filter_names_its_choices_in_one_query(
    client, users, harbor, intake_role, runs_of_two_versions, django_assert_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from roles.models import RoleVersion
    from roles.services import create_role_version

    client.force_login(users["reviewer.harbor"])
    client.get(CHANGELIST_URL)
    with CaptureQueriesContext(connection) as before:
        client.get(CHANGELIST_URL)
    for _ in range(3):
        create_role_version(
            role=intake_role,
            definition=intake_role.active_version.definition,
            actor=Actor.for_user(users["ops"]),
        )

    with django_assert_num_queries(len(before.captured_queries)):
        response = client.get(CHANGELIST_URL)

    offered = version_filter(response).lookup_choices
    assert len(offered) == RoleVersion.objects.filter(tenant=harbor).count()
