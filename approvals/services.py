"""Reviewers' decisions. A decision commits first; the run is resumed after commit."""

from __future__ import annotations

import difflib
import json
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals.models import ApprovalPolicy, ApprovalRequest, Decision, Escalation
from approvals.permissions import can_decide, can_resolve_escalation
from audit.services import Actor, record
from desk import services as desk_services
from tenants import locking, rls
from tenants.locking import Level, lock
from tenants.models import Membership


class DecisionError(Exception):
    """The decision cannot be taken; nothing was written."""

    def __init__(self, message: str, *, code: str = "invalid_decision"):
        super().__init__(message)
        self.code = code


def _diff(before: Any, after: Any) -> str:
    def lines(value):
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    return "\n".join(
        difflib.unified_diff(lines(before), lines(after), "proposed", "approved", lineterm="")
    )


def decide(
    *,
    request: ApprovalRequest,
    reviewer,
    verdict: str,
    comment: str = "",
    edited_payload: dict[str, Any] | None = None,
) -> Decision:
    """Record a reviewer's verdict and apply it once the request has enough approvals.

    Raises DecisionError: not allowed, not pending, already decided by this reviewer,
    reject/revise without a reason, edit without a payload.
    """
    comment = (comment or "").strip()
    if verdict not in Decision.Verdict.values:
        raise DecisionError(f"Unknown verdict '{verdict}'.")
    if verdict in (Decision.Verdict.REJECT, Decision.Verdict.REVISE) and not comment:
        raise DecisionError(
            "Say why: a reason is required to reject or send back.", code="reason_required"
        )
    if verdict == Decision.Verdict.EDIT and not isinstance(edited_payload, dict):
        raise DecisionError("Edit and approve needs the edited proposal as a JSON object.")
    with locking.atomic():
        # The run and its steps before the request: the lock order (tenants.locking).
        run_id = ApprovalRequest.objects.filter(pk=request.pk).values_list("run_id", flat=True)
        desk_services.lock_run(run_id.get())
        request = lock(
            ApprovalRequest.objects.select_related("run", "step"), Level.APPROVAL, of=("self",)
        ).get(pk=request.pk)
        if not can_decide(reviewer, request):
            raise DecisionError("You may not decide this request.", code="forbidden")
        if not request.is_pending:
            raise DecisionError(
                f"This request is already {request.get_status_display().lower()}.",
                code="not_pending",
            )
        if request.decisions.filter(reviewer=reviewer).exists():
            raise DecisionError("You have already decided this request.", code="already_decided")
        actor = Actor.for_user(reviewer)
        payload = edited_payload if verdict == Decision.Verdict.EDIT else None
        decision = Decision.objects.create(
            request=request,
            tenant_id=request.tenant_id,
            reviewer=reviewer,
            verdict=verdict,
            comment=comment,
            edited_payload=payload,
            diff=_diff(request.proposal, payload) if payload is not None else "",
        )
        record(
            tenant=request.tenant_id,
            actor=actor,
            action="approval.decided",
            obj=request,
            run_id=request.run_id,
            step_id=request.step_id,
            reason=comment,
            data={"verdict": verdict, "decision": decision.pk, "diff": decision.diff},
        )
        if verdict in (Decision.Verdict.APPROVE, Decision.Verdict.EDIT):
            if payload is not None:
                # Later approvals see the edited version.
                request.proposal = payload
                request.save(update_fields=["proposal"])
            if request.approvals_count() >= request.required_approvals:
                _close(request, ApprovalRequest.Status.APPROVED)
                desk_services.resume_approved_step(
                    step=request.step, payload=request.proposal, actor=actor
                )
        elif verdict == Decision.Verdict.REJECT:
            _close(request, ApprovalRequest.Status.REJECTED)
            desk_services.reject_parked_step(step=request.step, actor=actor, reason=comment)
        else:
            try:
                desk_services.return_step_for_revision(
                    step=request.step, actor=actor, feedback=comment
                )
            except desk_services.RunError as exc:
                raise DecisionError(exc.message, code=exc.code) from None
            _close(request, ApprovalRequest.Status.RETURNED)
    return decision


def _close(request: ApprovalRequest, status: str) -> None:
    request.status = status
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_at"])


def resolve_escalation(*, escalation: Escalation, user, resolution: str) -> Escalation:
    """Close an escalation with what was done about it (for a budget: lift the budget).

    Raises DecisionError when not allowed, already resolved or without a resolution.
    """
    resolution = (resolution or "").strip()
    if not resolution:
        raise DecisionError("Say what was done.", code="reason_required")
    with locking.atomic():
        escalation = lock(Escalation.objects.all(), Level.ROW).get(pk=escalation.pk)
        if not can_resolve_escalation(user, escalation):
            raise DecisionError("You may not resolve this escalation.", code="forbidden")
        if escalation.status != Escalation.Status.OPEN:
            raise DecisionError("This escalation is already resolved.", code="not_open")
        if escalation.kind == Escalation.Kind.BUDGET:
            # Resolving a budget escalation lifts the budget for the month: every held run
            # of the tenant goes on (their runs locked before anything is audited: the lock
            # order), and their budget escalations are settled with this one.
            desk_services.lift_budget(
                tenant=escalation.tenant, actor=Actor.for_user(user), reason=resolution
            )
        escalation.status = Escalation.Status.RESOLVED
        escalation.resolved_at = timezone.now()
        escalation.resolved_by = user
        escalation.resolution = resolution
        escalation.save(update_fields=["status", "resolved_at", "resolved_by", "resolution"])
        record(
            tenant=escalation.tenant_id,
            actor=Actor.for_user(user),
            action="escalation.resolved",
            obj=escalation,
            run_id=escalation.run_id,
            reason=resolution,
        )
        if escalation.kind == Escalation.Kind.BUDGET:
            Escalation.objects.filter(
                tenant_id=escalation.tenant_id,
                kind=Escalation.Kind.BUDGET,
                status=Escalation.Status.OPEN,
            ).update(
                status=Escalation.Status.RESOLVED,
                resolved_at=escalation.resolved_at,
                resolved_by=user,
                resolution=f"Settled with escalation #{escalation.pk}: {resolution}",
            )
    return escalation


POLICY_FIELDS = {"category", "mode", "required_approvals", "due_minutes", "on_timeout"}


def save_policy(*, policy: ApprovalPolicy, actor: Actor) -> ApprovalPolicy:
    """Create or change an approval policy.

    Raises ValidationError when the policy's role belongs to another tenant or a value
    is invalid.
    """
    from django.core.exceptions import ValidationError

    if policy.role_id and policy.role.tenant_id != policy.tenant_id:
        raise ValidationError({"role": "This role belongs to another tenant."})
    with locking.atomic():
        before = (
            ApprovalPolicy.objects.filter(pk=policy.pk).values(*POLICY_FIELDS).first()
            if policy.pk
            else None
        )
        policy.full_clean()
        policy._history_user = actor.user
        policy.save()
        after = {name: getattr(policy, name) for name in POLICY_FIELDS}
        diff = {
            name: [before.get(name) if before else None, value]
            for name, value in after.items()
            if before is None or before[name] != value
        }
        record(
            tenant=policy.tenant_id,
            actor=actor,
            action="policy.created" if before is None else "policy.updated",
            obj=policy,
            data={"role": policy.role.slug if policy.role_id else None, **diff},
        )
    return policy


def sweep_approvals(*, now=None) -> dict[str, int]:
    """Apply each overdue request's timeout rule once (remind, escalate or reject), and
    notify the reviewers of requests whose notification was lost.

    Returns how many requests got each treatment.
    """
    now = now or timezone.now()
    done = {"remind": 0, "escalate": 0, "reject": 0, "notified": 0}
    pending = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING)
    with rls.platform_context():
        # Which requests need attention is all this reads across tenants.
        overdue = list(
            pending.filter(due_at__lt=now, reminded_at__isnull=True)
            .order_by("due_at")
            .values_list("pk", "tenant_id", "run_id")[:500]
        )
        unnotified = _unnotified(pending, now=now).count()
    for request_id, tenant_id, run_id in overdue:
        rule = _apply_timeout(request_id=request_id, tenant_id=tenant_id, run_id=run_id, now=now)
        if rule:
            done[rule] += 1
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


def _apply_timeout(*, request_id: int, tenant_id: int, run_id: int, now) -> str:
    """Apply one overdue request's timeout rule; return the rule, or "" when it was decided
    (or is being decided) meanwhile."""
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
            .filter(
                pk=request_id,
                status=ApprovalRequest.Status.PENDING,
                due_at__lt=now,
                reminded_at__isnull=True,
            )
            .first()
        )
        if request is None:
            return ""
        request.reminded_at = now  # marks the timeout as handled, whatever the rule
        request.save(update_fields=["reminded_at"])
        rule = request.on_timeout
        record(
            tenant=request.tenant_id,
            actor=actor,
            action=f"approval.overdue_{rule}",
            obj=request,
            run_id=request.run_id,
            step_id=request.step_id,
            data={"due_at": request.due_at, "rule": rule},
        )
        if rule == ApprovalPolicy.OnTimeout.REMIND:
            notify_reviewers_after_commit(request, reminder=True)
        elif rule == ApprovalPolicy.OnTimeout.ESCALATE:
            Escalation.objects.create(
                tenant_id=request.tenant_id,
                run=request.run,
                step=request.step,
                kind=Escalation.Kind.APPROVAL_OVERDUE,
                reason=(
                    f"Approval #{request.pk} was not decided by its due time ({request.due_at})."
                ),
            )
        else:
            _close(request, ApprovalRequest.Status.REJECTED)
            desk_services.reject_parked_step(
                step=request.step, actor=actor, reason="Not decided by its due time."
            )
    return rule


def notify_reviewers_after_commit(request: ApprovalRequest, *, reminder: bool = False) -> None:
    """E-mail the tenant's reviewers about a request once the transaction commits."""
    transaction.on_commit(
        lambda: _enqueue_notification(request.pk, reminder),
        robust=True,  # a broker outage must not fail what already committed (the sweep re-rings)
    )


def _enqueue_notification(request_id: int, reminder: bool) -> None:
    from django_q.tasks import async_task

    async_task(
        "approvals.tasks.notify_reviewers",
        request_id=request_id,
        reminder=reminder,
        q_options={"group": "notifications", "save": False},
    )


def notify_reviewers(*, request_id: int, reminder: bool = False) -> int:
    """Send the notification e-mail; returns how many reviewers it went to."""
    from django.core.mail import send_mail

    tenant_id = rls.tenant_of("approvals_approvalrequest", request_id)
    if tenant_id is None:
        return 0
    with locking.tracked(), rls.tenant_context(tenant_id):
        request = (
            lock(
                ApprovalRequest.objects.select_related("tenant", "run__role", "step"),
                Level.APPROVAL,
                of=("self",),
            )
            .filter(pk=request_id, status=ApprovalRequest.Status.PENDING)
            .first()
        )
        sent_field = "reminder_sent_at" if reminder else "notified_at"
        if request is None or getattr(request, sent_field) is not None:
            return 0  # decided meanwhile, or this task was delivered twice
        emails = sorted(
            {
                m.user.email
                for m in Membership.objects.filter(tenant_id=tenant_id, kind="reviewer")
                .select_related("user")
                .filter(user__is_active=True)
                if m.user.email
            }
        )
        setattr(request, sent_field, timezone.now())
        request.save(update_fields=[sent_field])
        if not emails:
            return 0  # nobody to tell: handled (the queue shows it)
        subject = (
            f"{'Reminder: ' if reminder else ''}{request.tenant.name}: "
            f"{request.run.role.name} needs your approval"
        )
        body = (
            f"Step '{request.step.key}' ({request.category}) of run #{request.run_id} is waiting"
            f" for {request.required_approvals} approval(s), due {request.due_at:%Y-%m-%d %H:%M}"
            " UTC.\nOpen the approval queue in AgentDesk to decide."
        )
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, emails)
    return len(emails)


def delete_policy(*, policy: ApprovalPolicy, actor: Actor) -> None:
    """Remove an approval policy; its category falls back to the tenant-wide one or to auto."""
    with locking.atomic():
        record(
            tenant=policy.tenant_id,
            actor=actor,
            action="policy.deleted",
            obj=policy,
            data={
                "role": policy.role.slug if policy.role_id else None,
                "category": policy.category,
                "mode": policy.mode,
            },
        )
        policy._history_user = actor.user
        policy.delete()
