"""Golden cases and suite runs in the admin: forms refuse bad expectations and write nothing,
one-click cases need an operator and a POST, a retired case is read-only, and a suite is
started from a version after a confirmation."""

from __future__ import annotations

import json

from django.urls import reverse

from approvals.models import ApprovalRequest
from approvals.services import decide
from audit.models import AuditEvent
from audit.services import Actor
from desk.models import Run
from roles import golden
from roles.models import GoldenCase, SuiteRun
from tests.conftest import INTAKE_INPUT
from tests.runtime import advance

ADD_URL = reverse("admin:roles_goldencase_add")
CHANGELIST_URL = reverse("admin:roles_goldencase_changelist")
GOOD = {"fields": [{"path": "draft.subject", "op": "equals", "value": "Re: Lease question"}]}


def make_case(role, users, name="Lease question") -> GoldenCase:
    return golden.create_case(
        role=role,
        name=name,
        input=INTAKE_INPUT,
        expectations=GOOD,
        actor=Actor.for_user(users["ops"]),
    )


def completed(run, users) -> Run:
    decide(
        request=ApprovalRequest.objects.get(run=run),
        reviewer=users["reviewer.harbor"],
        verdict="approve",
    )
    advance(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    return run


def test_bad_expectations_are_a_form_error_and_write_nothing(client, users, intake_role):
    client.force_login(users["ops"])
    before = (GoldenCase.objects.count(), AuditEvent.objects.count())

    response = client.post(
        ADD_URL,
        {
            "role": intake_role.pk,
            "name": "Lease question",
            "input": json.dumps(INTAKE_INPUT),
            "expectations": json.dumps({"fields": [{"path": "draft.subject", "op": "is"}]}),
        },
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["expectations"]
    assert errors == ["Field 1 must be an object with exactly 'path', 'op' and 'value'."]
    assert (GoldenCase.objects.count(), AuditEvent.objects.count()) == before


def test_an_operator_adds_a_case_and_it_is_audited(client, users, intake_role, harbor):
    client.force_login(users["ops"])

    response = client.post(
        ADD_URL,
        {
            "role": intake_role.pk,
            "name": "Lease question",
            "input": json.dumps(INTAKE_INPUT),
            "expectations": json.dumps(GOOD),
        },
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    case = GoldenCase.objects.get(role=intake_role, name="Lease question")
    assert case.tenant == harbor and case.created_by == users["ops"]
    assert AuditEvent.objects.filter(action="golden_case.created", object_id=str(case.pk)).exists()


def test_a_reviewer_cannot_add_a_case(client, users, intake_role):
    client.force_login(users["reviewer.harbor"])
    before = GoldenCase.objects.count()

    response = client.post(
        ADD_URL,
        {"role": intake_role.pk, "name": "Mine", "input": "{}", "expectations": "{}"},
    )

    assert response.status_code == 403
    assert GoldenCase.objects.count() == before


def test_a_retired_case_cannot_be_edited_or_deleted(client, users, intake_role):
    case = make_case(intake_role, users)
    golden.retire_case(case=case, actor=Actor.for_user(users["ops"]))
    client.force_login(users["ops"])
    page = reverse("admin:roles_goldencase_change", args=[case.pk])

    client.post(page, {"name": "Renamed", "input": "{}", "expectations": "{}"})
    deleted = client.post(reverse("admin:roles_goldencase_delete", args=[case.pk]), {"post": "yes"})

    case.refresh_from_db()
    assert deleted.status_code == 403
    assert case.name == "Lease question" and case.input == INTAKE_INPUT


def test_retiring_asks_why_and_keeps_the_case(client, users, intake_role):
    case = make_case(intake_role, users)
    client.force_login(users["ops"])
    base = {"action": "retire_cases", "_selected_action": [case.pk]}

    asked = client.post(CHANGELIST_URL, base)
    client.post(CHANGELIST_URL, {**base, "confirm": "yes", "reason": "Superseded"})

    assert asked.status_code == 200 and b"Why" in asked.content
    case.refresh_from_db()
    assert not case.is_active and case.retired_by == users["ops"]
    event = AuditEvent.objects.get(action="golden_case.retired", object_id=str(case.pk))
    assert event.reason == "Superseded"


def test_running_the_cases_of_a_version_asks_first(client, users, intake_role):
    make_case(intake_role, users)
    client.force_login(users["ops"])
    page = reverse("admin:roles_suiterun_start", args=[intake_role.active_version_id])
    version_page = reverse("admin:roles_roleversion_change", args=[intake_role.active_version_id])

    linked = client.get(version_page)
    asked = client.get(page)
    before = SuiteRun.objects.count()
    started = client.post(page)

    assert page in linked.content.decode()
    assert asked.status_code == 200 and b"Run the golden cases" in asked.content
    assert before == 0 and SuiteRun.objects.count() == 1
    suite = SuiteRun.objects.get()
    assert started.status_code == 302
    assert started.url == reverse("admin:roles_suiterun_change", args=[suite.pk])
    golden.run_suite(suite.pk)
    detail = client.get(started.url)
    assert detail.status_code == 200
    assert b"Lease question" in detail.content and b"Regression gate" in detail.content


def test_a_reviewer_cannot_start_a_suite(client, users, intake_role):
    make_case(intake_role, users)
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        reverse("admin:roles_suiterun_start", args=[intake_role.active_version_id])
    )

    assert response.status_code == 403
    assert not SuiteRun.objects.exists()


def test_a_golden_case_from_a_completed_run_in_one_click(client, users, parked_intake):
    run = completed(parked_intake, users)
    client.force_login(users["ops"])
    page = reverse("admin:roles_goldencase_from_run", args=[run.pk])

    run_page = client.get(reverse("admin:desk_run_change", args=[run.pk]))
    fetched = client.get(page)
    made = client.post(page)

    assert page in run_page.content.decode()
    assert fetched.status_code == 405  # a link followed (or prefetched) makes nothing
    case = GoldenCase.objects.get(source_run=run)
    assert made.url == reverse("admin:roles_goldencase_change", args=[case.pk])


def test_a_reviewer_cannot_make_a_case_from_a_run(client, users, parked_intake):
    run = completed(parked_intake, users)
    client.force_login(users["reviewer.harbor"])

    response = client.post(reverse("admin:roles_goldencase_from_run", args=[run.pk]))

    assert response.status_code == 403
    assert not GoldenCase.objects.exists()


def test_a_golden_case_from_a_reviewers_edit_in_one_click(client, users, parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)
    draft = request.proposal["draft"]
    decision = decide(
        request=request,
        reviewer=users["reviewer.harbor"],
        verdict="edit",
        edited_payload={"draft": {**draft, "subject": "Re: Your lease"}},
    )
    advance(parked_intake.pk)
    client.force_login(users["ops"])
    page = reverse("admin:roles_goldencase_from_decision", args=[decision.pk])

    review_page = client.get(reverse("admin:approvals_approvalrequest_change", args=[request.pk]))
    made = client.post(page)
    again = client.post(page)

    assert page in review_page.content.decode()
    case = GoldenCase.objects.get(source_decision=decision)
    assert made.url == reverse("admin:roles_goldencase_change", args=[case.pk])
    assert again.status_code == 302 and GoldenCase.objects.count() == 1  # refused, said why
