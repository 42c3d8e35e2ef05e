"""Overdue approvals get their policy's treatment once; reviewers are told by e-mail."""

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from approvals.models import ApprovalRequest, Escalation
from approvals.services import notify_reviewers, sweep_approvals
from audit.models import AuditEvent
from desk.models import Run


@pytest.fixture
def overdue(parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        due_at=timezone.now() - timedelta(minutes=1)
    )
    return request


def with_rule(request, rule):
    ApprovalRequest.objects.filter(pk=request.pk).update(on_timeout=rule)


def test_remind_e_mails_the_reviewers_once(
    overdue, django_capture_on_commit_callbacks, monkeypatch
):
    sent = []
    monkeypatch.setattr(
        "django_q.tasks.async_task", lambda func, **kw: sent.append((func, kw["reminder"]))
    )

    with django_capture_on_commit_callbacks(execute=True):
        first = sweep_approvals()
    second = sweep_approvals()

    assert first == {"remind": 1, "escalate": 0, "reject": 0, "notified": 0}
    assert second == {"remind": 0, "escalate": 0, "reject": 0, "notified": 0}
    assert sent == [("approvals.tasks.notify_reviewers", True)]
    assert AuditEvent.objects.filter(action="approval.overdue_remind").count() == 1


def test_escalate_opens_an_escalation(overdue):
    with_rule(overdue, "escalate")

    sweep_approvals()

    escalation = Escalation.objects.get(run=overdue.run)
    assert escalation.kind == Escalation.Kind.APPROVAL_OVERDUE
    overdue.refresh_from_db()
    assert overdue.status == ApprovalRequest.Status.PENDING


def test_reject_ends_the_run(overdue):
    with_rule(overdue, "reject")

    sweep_approvals()

    overdue.refresh_from_db()
    assert overdue.status == ApprovalRequest.Status.REJECTED
    assert Run.objects.get(pk=overdue.run_id).status == Run.Status.REJECTED


def test_reviewers_of_the_tenant_get_the_notification(parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)

    count = notify_reviewers(request_id=request.pk)

    assert count == 2  # reviewer.harbor and ops review Harbor Legal
    assert mail.outbox[0].to == ["ops@agentdesk.example", "reviewer.harbor@agentdesk.example"]
    assert "Intake coordinator needs your approval" in mail.outbox[0].subject


def test_a_notification_delivered_twice_is_sent_once(parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)

    first = notify_reviewers(request_id=request.pk)
    second = notify_reviewers(request_id=request.pk)

    assert (first, second) == (2, 0)
    assert len(mail.outbox) == 1


def test_a_lost_notification_is_sent_by_the_sweep_once(parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)  # its doorbell was lost long ago
    )

    first, again = sweep_approvals(), sweep_approvals()

    assert (first["notified"], again["notified"]) == (1, 0)
    assert len(mail.outbox) == 1
    request.refresh_from_db()
    assert request.notified_at is not None
