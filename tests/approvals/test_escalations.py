"""Escalations are human tasks with real outcomes: retry the step, take it over with a
provided output (checked, audited, still reviewed where its category is gated), cancel the
run, or leave an overdue request with its reviewers — and say what happened."""

from __future__ import annotations

import pytest

from approvals.models import ApprovalRequest, Decision, Escalation
from approvals.services import DecisionError, decide, resolve_escalation
from audit.models import AuditEvent
from desk import worker
from desk.models import OutboxMessage, Run, StepRun
from tests.desk.test_engine import FlakyProvider
from tests.runtime import advance


@pytest.fixture
def failed(start_intake, monkeypatch):
    """An intake run whose classification failed every attempt, and its escalation."""
    monkeypatch.setattr(worker, "get_provider", lambda **_: FlakyProvider(failures=99))
    run = start_intake()
    advance(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    monkeypatch.undo()
    return run, Escalation.objects.get(run=run)


def test_retry_runs_the_failed_step_again_and_the_run_goes_on(failed, users):
    run, escalation = failed

    resolve_escalation(
        escalation=escalation, user=users["ops"], resolution="Provider back", outcome="retried"
    )
    advance(run.pk)

    run.refresh_from_db()
    escalation.refresh_from_db()
    assert run.status == Run.Status.WAITING_APPROVAL  # classified, looked up, drafted
    assert run.steps.get(key="classify").status == StepRun.Status.COMPLETED
    assert escalation.outcome == Escalation.Outcome.RETRIED
    assert "the step runs again" in escalation.resolution
    assert AuditEvent.objects.filter(run_id=run.pk, action="step.retried").count() == 1


def test_taking_over_with_an_output_that_breaks_the_schema_changes_nothing(failed, users):
    run, escalation = failed
    events = AuditEvent.objects.count()

    with pytest.raises(DecisionError) as caught:
        resolve_escalation(
            escalation=escalation,
            user=users["ops"],
            resolution="Did it myself",
            outcome="taken_over",
            output={"category": "invented", "is_urgent": "yes"},
        )

    escalation.refresh_from_db()
    run.refresh_from_db()
    assert caught.value.code == "invalid_output"
    assert escalation.status == Escalation.Status.OPEN
    assert run.status == Run.Status.FAILED
    assert AuditEvent.objects.count() == events


def test_taking_over_an_internal_step_lets_the_run_go_on_audited_as_human(failed, users):
    run, escalation = failed
    output = {"category": "existing_matter", "is_urgent": False, "summary": "Lease call"}

    resolve_escalation(
        escalation=escalation,
        user=users["ops"],
        resolution="Classified by hand",
        outcome="taken_over",
        output=output,
    )
    advance(run.pk)

    classify = run.steps.get(key="classify")
    assert classify.output == output
    event = AuditEvent.objects.get(run_id=run.pk, action="step.taken_over")
    assert event.actor_user == users["ops"] and event.data["provided_by"] == "person"
    run.refresh_from_db()
    assert run.status == Run.Status.WAITING_APPROVAL  # the draft still waits for a reviewer


def test_a_taken_over_draft_is_reviewed_and_its_author_may_not_approve_it(
    start_intake, users, monkeypatch
):
    from desk.providers.offline import OfflineProvider

    offline = OfflineProvider()

    class DraftFails(FlakyProvider):
        async def acomplete(self, request):
            if "Draft a reply" in request.prompt:
                return await super().acomplete(request)
            return await offline.acomplete(request)

    monkeypatch.setattr(worker, "get_provider", lambda **_: DraftFails(failures=99))
    run = start_intake()
    advance(run.pk)
    monkeypatch.undo()
    escalation = Escalation.objects.get(run=run)
    draft = {"subject": "Re: Lease question", "body": "Dear Maya, happy to meet on Tuesday."}

    resolve_escalation(
        escalation=escalation,
        user=users["ops"],
        resolution="Wrote the reply myself",
        outcome="taken_over",
        output=draft,
    )

    run.refresh_from_db()
    request = ApprovalRequest.objects.get(run=run, status=ApprovalRequest.Status.PENDING)
    assert run.status == Run.Status.WAITING_APPROVAL
    assert request.proposal == {"draft": draft} and request.proposal_author == users["ops"]
    with pytest.raises(DecisionError) as caught:
        decide(request=request, reviewer=users["ops"], verdict="approve")
    assert "You wrote this proposal" in str(caught.value)
    assert not OutboxMessage.objects.filter(run=run).exists()

    decide(request=request, reviewer=users["reviewer.harbor"], verdict="approve")
    advance(run.pk)
    assert OutboxMessage.objects.get(run=run).payload["body"] == draft["body"]


def test_an_outcome_that_does_not_fit_the_kind_is_refused(failed, users):
    _run, escalation = failed

    with pytest.raises(DecisionError) as caught:
        resolve_escalation(
            escalation=escalation, user=users["ops"], resolution="x", outcome="left_pending"
        )

    assert caught.value.code == "invalid_outcome"
    escalation.refresh_from_db()
    assert escalation.status == Escalation.Status.OPEN


@pytest.fixture
def overdue_escalation(parked_intake):
    from datetime import timedelta

    from django.utils import timezone

    from approvals.services import sweep_approvals

    request = ApprovalRequest.objects.get(run=parked_intake)
    due = timezone.now() - timedelta(minutes=1)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        due_at=due, next_action_at=due, rule={**request.rule, "max_reminders": 0}
    )
    sweep_approvals()
    return Escalation.objects.get(run=parked_intake, kind="approval_overdue")


def test_leaving_an_overdue_request_says_it_stays_pending_and_decidable(overdue_escalation, users):
    resolve_escalation(
        escalation=overdue_escalation,
        user=users["ops"],
        resolution="Reminded Hana by phone",
        outcome="left_pending",
    )

    overdue_escalation.refresh_from_db()
    request = ApprovalRequest.objects.get(run=overdue_escalation.run)
    assert request.status == ApprovalRequest.Status.PENDING
    assert f"approval #{request.pk} stays pending" in overdue_escalation.resolution
    decide(request=request, reviewer=users["reviewer.harbor"], verdict="approve")


def test_cancelling_from_an_overdue_escalation_ends_the_run_and_its_request(
    overdue_escalation, users
):
    resolve_escalation(
        escalation=overdue_escalation,
        user=users["ops"],
        resolution="Client withdrew",
        outcome="cancelled",
    )

    run = Run.objects.get(pk=overdue_escalation.run_id)
    assert run.status == Run.Status.CANCELLED
    assert ApprovalRequest.objects.get(run=run).status == ApprovalRequest.Status.CANCELLED


def test_taking_over_a_stuck_draft_dismisses_earlier_approvals(overdue_escalation, users):
    request = ApprovalRequest.objects.get(run=overdue_escalation.run)
    draft = {"subject": "Re: Lease question", "body": "Written by the office."}

    resolve_escalation(
        escalation=overdue_escalation,
        user=users["ops"],
        resolution="Rewrote it",
        outcome="taken_over",
        output=draft,
    )

    request.refresh_from_db()
    assert (request.version, request.proposal, request.proposal_author) == (
        2,
        {"draft": draft},
        users["ops"],
    )
    assert not Decision.objects.filter(request=request).exists()


def test_an_escalation_page_acts_through_the_form(client, failed, users):
    from django.urls import reverse

    _run, escalation = failed
    url = reverse("admin:approvals_escalation_change", args=[escalation.pk])
    client.force_login(users["ops"])

    page = client.get(url)
    bad = client.post(url, {"outcome": "taken_over", "output": "", "resolution": "by hand"})
    good = client.post(url, {"outcome": "retried", "resolution": "Provider is back"})

    assert 'value="retried"' in page.content.decode()
    assert bad.status_code == 200 and "Give the output as a JSON object" in bad.content.decode()
    assert good.status_code == 302
    escalation.refresh_from_db()
    assert escalation.outcome == Escalation.Outcome.RETRIED


def test_an_auditor_cannot_act_on_an_escalation(client, failed, users):
    from django.urls import reverse

    _run, escalation = failed
    client.force_login(users["auditor"])

    response = client.post(
        reverse("admin:approvals_escalation_change", args=[escalation.pk]),
        {"outcome": "retried", "resolution": "sneaky"},
    )

    escalation.refresh_from_db()
    assert response.status_code == 403
    assert escalation.status == Escalation.Status.OPEN


@pytest.mark.parametrize(
    "summary", ["Lease\x00call", "Lease\ud800call"], ids=["nul", "lone-surrogate"]
)
def test_taking_over_with_an_output_no_database_stores_changes_nothing(failed, users, summary):
    run, escalation = failed
    events = AuditEvent.objects.count()
    output = {"category": "existing_matter", "is_urgent": False, "summary": summary}

    with pytest.raises(DecisionError) as caught:
        resolve_escalation(
            escalation=escalation,
            user=users["ops"],
            resolution="Classified by hand",
            outcome="taken_over",
            output=output,
        )

    escalation.refresh_from_db()
    run.refresh_from_db()
    assert caught.value.code == "invalid_output"
    assert escalation.status == Escalation.Status.OPEN
    assert run.status == Run.Status.FAILED
    assert AuditEvent.objects.count() == events


@pytest.mark.parametrize(
    "typed",
    [
        '{"category": "other", "is_urgent": false, "summary": "\\u0000"}',
        '{"category": "other", "is_urgent": false, "summary": "\\udfff"}',
        '{"category": "other", "summary": ' + "[" * 5000 + "]" * 5000 + "}",
    ],
    ids=["nul", "lone-surrogate", "nested-5000-deep"],
)
def test_the_escalation_forms_output_refuses_unsafe_json_with_a_form_error(
    client, failed, users, typed
):
    from django.urls import reverse

    _run, escalation = failed
    client.force_login(users["ops"])
    events = AuditEvent.objects.count()

    response = client.post(
        reverse("admin:approvals_escalation_change", args=[escalation.pk]),
        {"outcome": "taken_over", "output": typed, "resolution": "by hand"},
    )

    assert response.status_code == 200
    assert response.context["escalation_form"].errors["output"]
    escalation.refresh_from_db()
    assert escalation.status == Escalation.Status.OPEN
    assert AuditEvent.objects.count() == events
