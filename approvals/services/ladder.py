"""The timeout ladder of pending requests, and notifications that were lost, swept."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from approvals.models import ApprovalPolicy, ApprovalRequest, Escalation
from approvals.services.decisions import close_request, escalate_request
from approvals.services.notifications import notify_reviewers, notify_reviewers_after_commit
from audit.services import Actor, record
from desk import services as desk_services
from tenants import locking, rls
from tenants.locking import Level, lock


def sweep_approvals(*, now=None) -> dict[str, int]:
    """Take each request whose ladder is due one rung further (remind, escalate, then the
    policy's final action), and notify the reviewers of requests whose notification was
    lost.

    Returns how many requests got each treatment.
    """
    now = now or timezone.now()
    done = {"remind": 0, "escalate": 0, "reject": 0, "hold": 0, "notified": 0}
    pending = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING)
    with rls.platform_context():
        # Which requests need attention is all this reads across tenants.
        due = list(
            pending.filter(next_action_at__lte=now)
            .order_by("next_action_at")
            .values_list("pk", "tenant_id", "run_id")[:500]
        )
        unnotified = _unnotified(pending, now=now).count()
    for request_id, tenant_id, run_id in due:
        rung = _climb_ladder(request_id=request_id, tenant_id=tenant_id, run_id=run_id, now=now)
        if rung:
            done[rung] += 1
    if unnotified:
        # Sent here, not by a task that would wait in the queue behind other work.
        done["notified"] = notify_lost()
    return done


def _unnotified(pending, *, now):
    """Pending requests whose reviewers' notification should have gone out by now."""
    stall = timedelta(seconds=settings.DESK_STALL_SECONDS)
    return pending.filter(notified_at__isnull=True, created_at__lt=now - stall)


def notify_lost(*, seconds: float = 10) -> int:
    """Send the notifications that should have gone out by now, for at most `seconds` (the
    rest in a later round); return how many requests were handled."""
    deadline = time.monotonic() + seconds
    pending = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING)
    with rls.platform_context():
        request_ids = list(
            _unnotified(pending, now=timezone.now())
            .order_by("created_at")
            .values_list("pk", flat=True)[:500]
        )
    handled = 0
    for request_id in request_ids:
        if time.monotonic() > deadline:
            break
        notify_reviewers(request_id=request_id)
        handled += 1
    return handled


def _climb_ladder(*, request_id: int, tenant_id: int, run_id: int, now) -> str:
    """Take one request one rung up its timeout ladder; return the rung, or "" when it was
    decided (or is being decided) meanwhile."""
    actor = Actor.system("approvals")
    with locking.tracked(), rls.tenant_context(tenant_id):
        desk_services.lock_run(run_id)
        request = (
            lock(
                ApprovalRequest.objects.select_related("run", "step"),
                Level.APPROVAL,
                skip_locked=True,
                of=("self",),
            )
            .filter(pk=request_id, status=ApprovalRequest.Status.PENDING, next_action_at__lte=now)
            .first()
        )
        if request is None:
            return ""
        rule = request.rule
        every = timedelta(minutes=rule.get("remind_every_minutes", 60))
        data = {"due_at": request.due_at, "assignee": request.assignee_id}
        if request.reminders_sent < rule.get("max_reminders", 0):
            rung = "remind"
            request.reminders_sent += 1
            request.next_action_at = now + every
            data["reminder"] = request.reminders_sent
            notify_reviewers_after_commit(request, reminder=request.reminders_sent)
        elif request.escalated_at is None:
            rung = "escalate"
            request.escalated_at = now
            request.next_action_at = now + every
            to_user, to_group = rule.get("escalate_to_user"), rule.get("escalate_to_group")
            data.update(
                {
                    "from_assignee": request.assignee_id,
                    "from_group": request.assigned_group_id,
                    "to_user": to_user,
                    "to_group": to_group,
                }
            )
            if to_user or to_group:
                request.assignee_id, request.assigned_group_id = to_user, to_group
            escalate_request(
                request,
                kind=Escalation.Kind.APPROVAL_OVERDUE,
                reason=(
                    f"Approval #{request.pk} was not decided by its due time "
                    f"({request.due_at:%Y-%m-%d %H:%M} UTC) after "
                    f"{request.reminders_sent} reminder(s); it stays open for a decision."
                ),
            )
            notify_reviewers_after_commit(request, reminder=request.reminders_sent + 1)
        elif rule.get("final_action") == ApprovalPolicy.FinalAction.REJECT:
            rung = "reject"
            request.next_action_at = None
        else:
            rung = "hold"
            request.next_action_at = None
            request.held_at = now
        request.save(
            update_fields=[
                "reminders_sent",
                "next_action_at",
                "escalated_at",
                "held_at",
                "assignee",
                "assigned_group",
            ]
        )
        record(
            tenant=request.tenant_id,
            actor=actor,
            action=f"approval.overdue_{rung}",
            obj=request,
            run_id=request.run_id,
            step_id=request.step_id,
            data=data,
        )
        if rung == "reject":
            close_request(request, ApprovalRequest.Status.REJECTED)
            desk_services.reject_parked_step(
                step=request.step, actor=actor, reason="Not decided by its due time."
            )
    return rung
