"""The approvals side of desk.gates.Gate: policies decide, requests and escalations record."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from approvals.models import ApprovalPolicy, ApprovalRequest, Escalation
from approvals.services import notify_reviewers_after_commit
from audit.services import Actor, record
from desk import events
from desk.gates import GateRule
from tenants import locking
from tenants.locking import Level, lock


def policy_for(*, tenant_id: int, role_id: int, category: str) -> ApprovalPolicy | None:
    """The role's own policy for the category, else the tenant-wide one."""
    policies = ApprovalPolicy.objects.filter(
        Q(role_id=role_id) | Q(role__isnull=True), tenant_id=tenant_id, category=category
    )
    return min(policies, key=lambda p: p.role_id is None, default=None)


class ApprovalGate:
    def rule_for(self, *, run, step) -> GateRule | None:
        policy = policy_for(tenant_id=run.tenant_id, role_id=run.role_id, category=step.category)
        if policy is None or policy.mode == ApprovalPolicy.Mode.AUTO:
            return None
        return GateRule(
            required_approvals=policy.required_approvals,
            due_minutes=policy.due_minutes,
            on_timeout=policy.on_timeout,
        )

    def open_request(self, *, run, step, proposal: dict[str, Any], rule: GateRule) -> None:
        request = ApprovalRequest.objects.create(
            tenant_id=run.tenant_id,
            run=run,
            step=step,
            category=step.category,
            proposal=proposal,
            required_approvals=rule.required_approvals,
            due_at=timezone.now() + timedelta(minutes=rule.due_minutes),
            on_timeout=rule.on_timeout,
        )
        record(
            tenant=run.tenant_id,
            actor=Actor.system("engine"),
            action="approval.requested",
            obj=request,
            run_id=run.pk,
            step_id=step.pk,
            data={
                "key": step.key,
                "category": step.category,
                "required_approvals": rule.required_approvals,
                "due_at": request.due_at,
            },
        )
        events.publish(
            run=run,
            step=step,
            event_type="approval.requested",
            data={
                "approval_request_id": request.pk,
                "category": step.category,
                "required_approvals": rule.required_approvals,
                "due_at": request.due_at,
            },
        )
        notify_reviewers_after_commit(request)

    def open_escalation(self, *, run, step, reason: str, kind: str = "step_failed") -> None:
        escalation = Escalation.objects.create(
            tenant_id=run.tenant_id, run=run, step=step, reason=reason, kind=kind
        )
        record(
            tenant=run.tenant_id,
            actor=Actor.system("engine"),
            action="escalation.opened",
            obj=escalation,
            run_id=run.pk,
            step_id=step.pk if step else None,
            reason=reason,
            data={"kind": kind},
        )
        events.publish(
            run=run,
            step=step,
            event_type="escalation.opened",
            data={"escalation_id": escalation.pk, "kind": kind, "reason": reason},
        )

    def cancel_open(self, *, run, reason: str) -> None:
        locking.note(locking.Level.APPROVAL)  # the UPDATE locks the requests it closes
        ApprovalRequest.objects.filter(run=run, status=ApprovalRequest.Status.PENDING).update(
            status=ApprovalRequest.Status.CANCELLED, decided_at=timezone.now()
        )

    def resolve_escalations(self, *, run, step, kind: str, user, resolution: str) -> int:
        escalations = list(
            lock(
                Escalation.objects.filter(
                    run=run, step=step, kind=kind, status=Escalation.Status.OPEN
                ),
                Level.ROW,
                skip_locked=True,
            )
        )
        now = timezone.now()
        for escalation in escalations:
            escalation.status = Escalation.Status.RESOLVED
            escalation.resolved_at = now
            escalation.resolved_by = user
            escalation.resolution = resolution
            escalation.save(update_fields=["status", "resolved_at", "resolved_by", "resolution"])
            record(
                tenant=run.tenant_id,
                actor=Actor.for_user(user) if user else Actor.system("outbox"),
                action="escalation.resolved",
                obj=escalation,
                run_id=run.pk,
                reason=resolution,
            )
        return len(escalations)
