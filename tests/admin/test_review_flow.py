"""The reviewer's story through the admin: start a run, review its draft, decide."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse
from django.utils.html import escape

from approvals.models import ApprovalRequest, Decision
from audit.models import AuditEvent
from desk.models import OutboxMessage, Run
from tests.admin.conftest import parked
from tests.conftest import INTAKE_INPUT
from tests.runtime import advance

QUEUE_URL = reverse("admin:approvals_approvalrequest_changelist")


def review_url(request: ApprovalRequest) -> str:
    return reverse("admin:approvals_approvalrequest_change", args=[request.pk])


@pytest.fixture
def parked_run(harbor, users) -> Run:
    return parked(harbor, users["ops"])


def test_ops_starts_a_run_and_reviewer_approves_its_draft(client, harbor, intake_role, users):
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:desk_run_add"),
        {"tenant": harbor.pk, "role": intake_role.pk, "input": json.dumps(INTAKE_INPUT)},
    )

    run = Run.objects.get()
    # Queued, or already admitted when the tenant has free capacity (desk.services.admit_runs).
    assert run.status in (Run.Status.QUEUED, Run.Status.RUNNING)
    assert run.via == Run.Via.ADMIN
    assert run.started_by == users["ops"]
    assert run.input == INTAKE_INPUT
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:desk_run_change", args=[run.pk])

    advance(run.pk)
    run.refresh_from_db()
    request = ApprovalRequest.objects.get(run=run)
    body = request.proposal["draft"]["body"]
    assert run.status == Run.Status.WAITING_APPROVAL
    client.force_login(users["reviewer.harbor"])

    queue = client.get(QUEUE_URL)
    page = client.get(review_url(request))

    assert queue.status_code == 200
    assert [r.pk for r in queue.context["cl"].result_list] == [request.pk]
    assert page.status_code == 200
    assert escape(body) in page.content.decode()
    assert escape(request.proposal["draft"]["subject"]) in page.content.decode()
    assert 'name="verdict" value="approve"' in page.content.decode()

    response = client.post(
        review_url(request),
        {"version": request.version, "verdict": "approve", "comment": "Good reply"},
    )

    assert response.status_code == 302
    assert response["Location"] == QUEUE_URL
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.APPROVED
    decision = Decision.objects.get(request=request)
    assert (decision.reviewer, decision.verdict, decision.comment) == (
        users["reviewer.harbor"],
        Decision.Verdict.APPROVE,
        "Good reply",
    )
    messages = [str(m) for m in client.get(QUEUE_URL).context["messages"]]
    assert messages == [f"Approved “draft” of {run}; the run goes on."]

    advance(run.pk)

    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    outbox = OutboxMessage.objects.get(run=run)
    assert outbox.payload["body"] == body


def test_rejecting_without_a_reason_changes_nothing_and_says_why(client, parked_run, users):
    request = ApprovalRequest.objects.get(run=parked_run)
    client.force_login(users["reviewer.harbor"])
    events_before = AuditEvent.objects.count()

    response = client.post(
        review_url(request), {"version": request.version, "verdict": "reject", "comment": "  "}
    )

    assert response.status_code == 200
    assert "Say why: a reason is required to reject or send back." in response.content.decode()
    request.refresh_from_db()
    parked_run.refresh_from_db()
    assert request.status == ApprovalRequest.Status.PENDING
    assert Decision.objects.count() == 0
    assert AuditEvent.objects.count() == events_before
    assert parked_run.status == Run.Status.WAITING_APPROVAL


def test_rejecting_with_a_reason_ends_the_run(client, parked_run, users):
    request = ApprovalRequest.objects.get(run=parked_run)
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        review_url(request),
        {"version": 1, "verdict": "reject", "comment": "We never answer by e-mail."},
    )

    assert response.status_code == 302
    assert response["Location"] == QUEUE_URL
    request.refresh_from_db()
    parked_run.refresh_from_db()
    assert request.status == ApprovalRequest.Status.REJECTED
    assert parked_run.status == Run.Status.REJECTED
    assert parked_run.error == "We never answer by e-mail."


def test_edit_and_approve_sends_the_edited_draft(client, parked_run, users):
    request = ApprovalRequest.objects.get(run=parked_run)
    edited = {"subject": "Re: Lease question", "body": "Dear Maya,\nYes.\nHarbor"}
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        review_url(request),
        {
            "version": 1,
            "verdict": "edit",
            "field__subject": edited["subject"],
            "field__body": edited["body"],
        },
    )
    advance(parked_run.pk)

    assert response.status_code == 302
    decision = Decision.objects.get(request=request)
    assert decision.verdict == Decision.Verdict.EDIT
    assert decision.edited_payload == {"draft": edited}
    assert OutboxMessage.objects.get(run=parked_run).payload["body"] == "Dear Maya,\nYes.\nHarbor"


def test_an_edit_without_its_subject_is_a_form_error_and_changes_nothing(client, parked_run, users):
    request = ApprovalRequest.objects.get(run=parked_run)
    client.force_login(users["reviewer.harbor"])
    events_before = AuditEvent.objects.count()

    response = client.post(
        review_url(request),
        {"version": 1, "verdict": "edit", "field__subject": "", "field__body": "Short."},
    )

    assert response.status_code == 200
    errors = response.context["review_form"].errors
    assert "field__subject" in errors
    assert "Short." in response.content.decode()  # what the reviewer typed is kept
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.PENDING
    assert request.version == 1
    assert Decision.objects.count() == 0
    assert AuditEvent.objects.count() == events_before


def test_typing_an_edit_and_pressing_approve_is_refused_not_dropped(client, parked_run, users):
    request = ApprovalRequest.objects.get(run=parked_run)
    original = request.proposal["draft"]["body"]
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        review_url(request),
        {
            "version": 1,
            "verdict": "approve",
            "field__subject": request.proposal["draft"]["subject"],
            "field__body": original + " And one more thing.",
        },
    )

    assert response.status_code == 200
    assert "You changed the proposal" in response.content.decode()
    assert "And one more thing." in response.content.decode()
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.PENDING
    assert Decision.objects.count() == 0


def test_a_decision_on_a_version_edited_meanwhile_is_refused(client, parked_run, users):
    request = ApprovalRequest.objects.get(run=parked_run)
    ApprovalRequest.objects.filter(pk=request.pk).update(version=2)
    client.force_login(users["reviewer.harbor"])

    response = client.post(review_url(request), {"version": 1, "verdict": "approve"})

    assert response.status_code == 200
    assert "edited since you opened it" in response.content.decode()
    assert Decision.objects.count() == 0


def test_send_back_for_revision_returns_the_step(client, parked_run, users):
    request = ApprovalRequest.objects.get(run=parked_run)
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        review_url(request), {"version": 1, "verdict": "revise", "comment": "Offer two dates."}
    )

    assert response.status_code == 302
    request.refresh_from_db()
    step = parked_run.steps.get(key="draft")
    assert request.status == ApprovalRequest.Status.RETURNED
    assert step.feedback == "Offer two dates."


@pytest.mark.parametrize("username", ["auditor", "reviewer.northwind"])
def test_only_the_tenants_reviewers_may_decide(client, parked_run, users, username):
    request = ApprovalRequest.objects.get(run=parked_run)
    client.force_login(users[username])

    page = client.get(review_url(request))
    response = client.post(review_url(request), {"version": request.version, "verdict": "approve"})

    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.PENDING
    assert Decision.objects.count() == 0
    if username == "auditor":
        assert page.status_code == 200
        assert 'name="verdict"' not in page.content.decode()
        assert response.status_code == 403
    else:
        assert page.status_code == 404
        assert response.status_code == 404


def test_the_queue_opens_on_pending_requests(client, parked_run, users):
    pending = ApprovalRequest.objects.get(run=parked_run)
    done = parked(parked_run.tenant, users["ops"])
    decided = ApprovalRequest.objects.get(run=done)
    client.force_login(users["reviewer.harbor"])
    client.post(review_url(decided), {"version": 1, "verdict": "reject", "comment": "No"})

    default = client.get(QUEUE_URL)
    everything = client.get(QUEUE_URL, {"inbox": "all", "status": "all"})

    assert [r.pk for r in default.context["cl"].result_list] == [pending.pk]
    assert {r.pk for r in everything.context["cl"].result_list} == {pending.pk, decided.pk}


def test_a_redraft_shows_its_round_the_earlier_feedback_and_what_changed(client, parked_run, users):
    first = ApprovalRequest.objects.get(run=parked_run)
    client.force_login(users["reviewer.harbor"])
    client.post(
        review_url(first), {"version": 1, "verdict": "revise", "comment": "Offer two dates."}
    )
    advance(parked_run.pk)
    redraft = ApprovalRequest.objects.get(run=parked_run, status=ApprovalRequest.Status.PENDING)

    page = client.get(review_url(redraft)).content.decode()

    assert redraft.round == 2 and redraft.previous == first
    assert "Round 2 of 3" in page
    assert "Offer two dates." in page
    assert "--- proposed" in page  # the diff from the previous draft
