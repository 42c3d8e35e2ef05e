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
    due = timezone.now() - timedelta(minutes=1)
    ApprovalRequest.objects.filter(pk=request.pk).update(due_at=due, next_action_at=due)
    request.refresh_from_db()
    return request


def with_ladder(request, **rule):
    ApprovalRequest.objects.filter(pk=request.pk).update(rule={**request.rule, **rule})


def later(minutes: int):
    return timezone.now() + timedelta(minutes=minutes)


def test_the_ladder_reminds_n_times_then_escalates_then_holds(
    overdue, django_capture_on_commit_callbacks, monkeypatch
):
    sent = []
    monkeypatch.setattr(
        "django_q.tasks.async_task", lambda func, **kw: sent.append((func, kw["reminder"]))
    )
    with_ladder(overdue, remind_every_minutes=60, max_reminders=2, final_action="hold")

    with django_capture_on_commit_callbacks(execute=True):
        rungs = [
            sweep_approvals(),  # due: first reminder
            sweep_approvals(),  # nothing is due yet
            sweep_approvals(now=later(61)),  # second reminder
            sweep_approvals(now=later(122)),  # escalate
            sweep_approvals(now=later(183)),  # hold
            sweep_approvals(now=later(1000)),  # the ladder is done
        ]

    treated = [next((k for k, v in r.items() if v and k != "notified"), "") for r in rungs]
    assert treated == ["remind", "", "remind", "escalate", "hold", ""]
    assert sent == [("approvals.tasks.notify_reviewers", n) for n in (1, 2, 3)]
    overdue.refresh_from_db()
    assert overdue.status == ApprovalRequest.Status.PENDING  # held: still decidable
    assert overdue.held_at is not None and overdue.next_action_at is None
    assert Escalation.objects.get(run=overdue.run).kind == Escalation.Kind.APPROVAL_OVERDUE
    actions = list(
        AuditEvent.objects.filter(action__startswith="approval.overdue_")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == [
        "approval.overdue_remind",
        "approval.overdue_remind",
        "approval.overdue_escalate",
        "approval.overdue_hold",
    ]


def test_escalation_goes_to_the_named_group_and_records_who_had_it(overdue, northwind):
    from approvals.models import ReviewerGroup

    group = ReviewerGroup.objects.create(tenant=overdue.tenant, name="Partners")
    with_ladder(overdue, max_reminders=0, escalate_to_group=group.pk)

    sweep_approvals()

    overdue.refresh_from_db()
    assert overdue.assigned_group == group
    event = AuditEvent.objects.get(action="approval.overdue_escalate")
    assert event.data["to_group"] == group.pk and event.data["from_group"] is None


def test_an_escalated_request_stays_decidable(overdue, users):
    from approvals.services import decide

    with_ladder(overdue, max_reminders=0)
    sweep_approvals()

    decide(request=overdue, reviewer=users["reviewer.harbor"], verdict="approve")

    overdue.refresh_from_db()
    assert overdue.status == ApprovalRequest.Status.APPROVED


def test_the_final_action_reject_ends_the_run(overdue):
    with_ladder(overdue, max_reminders=0, final_action="reject")

    sweep_approvals()
    sweep_approvals(now=later(61))

    overdue.refresh_from_db()
    assert overdue.status == ApprovalRequest.Status.REJECTED
    assert Run.objects.get(pk=overdue.run_id).status == Run.Status.REJECTED


def test_a_reminder_task_delivered_twice_is_sent_once(overdue):
    with_ladder(overdue, max_reminders=1)
    sweep_approvals()

    first = notify_reviewers(request_id=overdue.pk, reminder=1)
    second = notify_reviewers(request_id=overdue.pk, reminder=1)

    assert first > 0 and second == 0
    reminders = [m.to for m in mail.outbox if "Reminder" in m.subject]
    assert len(reminders) == first  # once per person, not once more


def test_reviewers_of_the_tenant_get_the_notification(parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)

    count = notify_reviewers(request_id=request.pk)

    assert count == 2  # reviewer.harbor and ops review Harbor Legal
    # One message per person (a signed link is theirs alone), each with a way in.
    assert [m.to for m in mail.outbox] == [
        ["ops@agentdesk.example"],
        ["reviewer.harbor@agentdesk.example"],
    ]
    assert "Intake coordinator needs your approval" in mail.outbox[0].subject
    assert f"/admin/approvals/approvalrequest/{request.pk}/change/" in mail.outbox[0].body
    assert "/approvals/link/" in mail.outbox[0].body  # the demo's client comms policy has links


def test_a_notification_delivered_twice_is_sent_once(parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)

    first = notify_reviewers(request_id=request.pk)
    second = notify_reviewers(request_id=request.pk)

    assert (first, second) == (2, 0)
    assert len(mail.outbox) == 2  # one message to each of the two reviewers


def test_a_lost_notification_is_sent_by_the_sweep_once(parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)  # its doorbell was lost long ago
    )

    first, again = sweep_approvals(), sweep_approvals()

    assert (first["notified"], again["notified"]) == (1, 0)
    assert len(mail.outbox) == 2  # one message to each of the two reviewers
    request.refresh_from_db()
    assert request.notified_at is not None
