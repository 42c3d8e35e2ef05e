"""Reviewers' decisions. A decision commits first; the run is resumed after commit."""

from __future__ import annotations

import difflib
import json
from typing import Any

from django.db import transaction
from django.utils import timezone

from approvals.models import ApprovalRequest, Decision, Escalation
from approvals.permissions import can_decide, can_resolve_escalation
from audit.services import Actor, record
from desk import services as desk_services


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
    with transaction.atomic():
        request = (
            ApprovalRequest.objects.select_for_update()
            .select_related("run", "step")
            .get(pk=request.pk)
        )
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
    with transaction.atomic():
        escalation = Escalation.objects.select_for_update().get(pk=escalation.pk)
        if not can_resolve_escalation(user, escalation):
            raise DecisionError("You may not resolve this escalation.", code="forbidden")
        if escalation.status != Escalation.Status.OPEN:
            raise DecisionError("This escalation is already resolved.", code="not_open")
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
            # Resolving a budget escalation lifts the budget for the month: every held run
            # of the tenant goes on, and their budget escalations are settled with this one.
            desk_services.lift_budget(
                tenant=escalation.tenant, actor=Actor.for_user(user), reason=resolution
            )
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
