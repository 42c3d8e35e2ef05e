"""Escalations are human tasks: retry, take over, cancel, leave pending, or resolve."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from approvals.edits import InvalidEdit, checked_edit, proposal_diff
from approvals.models import ApprovalRequest, Escalation
from approvals.permissions import can_resolve_escalation
from approvals.services.errors import DecisionError
from audit.services import Actor, record
from desk import services as desk_services
from tenants import locking
from tenants.locking import Level, lock

OUTCOMES = {
    Escalation.Kind.STEP_FAILED: (
        Escalation.Outcome.RESOLVED,
        Escalation.Outcome.RETRIED,
        Escalation.Outcome.TAKEN_OVER,
    ),
    Escalation.Kind.APPROVAL_OVERDUE: (
        Escalation.Outcome.LEFT_PENDING,
        Escalation.Outcome.TAKEN_OVER,
        Escalation.Outcome.CANCELLED,
    ),
    Escalation.Kind.APPROVAL_ROUNDS: (
        Escalation.Outcome.LEFT_PENDING,
        Escalation.Outcome.TAKEN_OVER,
        Escalation.Outcome.CANCELLED,
    ),
    Escalation.Kind.BUDGET: (Escalation.Outcome.RESOLVED,),
    Escalation.Kind.SLA: (Escalation.Outcome.RESOLVED, Escalation.Outcome.CANCELLED),
    Escalation.Kind.DELIVERY: (Escalation.Outcome.RESOLVED,),
}
APPROVAL_KINDS = (Escalation.Kind.APPROVAL_OVERDUE, Escalation.Kind.APPROVAL_ROUNDS)


def outcomes_for(escalation: Escalation) -> tuple[str, ...]:
    return OUTCOMES.get(escalation.kind, (Escalation.Outcome.RESOLVED,))


def resolve_escalation(
    *,
    escalation: Escalation,
    user,
    resolution: str,
    outcome: str = "",
    output: dict[str, Any] | None = None,
) -> Escalation:
    """Act on an escalation and close it, saying what was done: retry the failed step, take
    it over with a provided output (checked against the step's schema; a draft still goes
    to the reviewers), cancel the run, leave an overdue request with its reviewers, or
    resolve (for a budget: lift the budget for the month).

    Raises DecisionError when not allowed, already resolved, the outcome does not apply to
    this kind, the output is invalid, or without a resolution.
    """
    resolution = (resolution or "").strip()
    if not resolution:
        raise DecisionError("Say what was done.", code="reason_required")
    with locking.atomic():
        escalation = lock(Escalation.objects.select_related("tenant"), Level.ROW).get(
            pk=escalation.pk
        )
        if not can_resolve_escalation(user, escalation):
            raise DecisionError("You may not resolve this escalation.", code="forbidden")
        if escalation.status != Escalation.Status.OPEN:
            raise DecisionError("This escalation is already resolved.", code="not_open")
        allowed = outcomes_for(escalation)
        outcome = outcome or allowed[0]
        if outcome not in allowed:
            labels = ", ".join(Escalation.Outcome(o).label.lower() for o in allowed)
            raise DecisionError(
                f"A {escalation.get_kind_display().lower()} escalation can be: {labels}.",
                code="invalid_outcome",
            )
        actor = Actor.for_user(user)
        resolution += _act(
            escalation, outcome=outcome, actor=actor, reason=resolution, output=output
        )
        escalation.status = Escalation.Status.RESOLVED
        escalation.outcome = outcome
        escalation.resolved_at = timezone.now()
        escalation.resolved_by = user
        escalation.resolution = resolution
        escalation.save(
            update_fields=["status", "outcome", "resolved_at", "resolved_by", "resolution"]
        )
        record(
            tenant=escalation.tenant_id,
            actor=actor,
            action="escalation.resolved",
            obj=escalation,
            run_id=escalation.run_id,
            reason=resolution,
            data={"outcome": outcome, "kind": escalation.kind},
        )
        if escalation.kind == Escalation.Kind.BUDGET:
            Escalation.objects.filter(
                tenant_id=escalation.tenant_id,
                kind=Escalation.Kind.BUDGET,
                status=Escalation.Status.OPEN,
            ).update(
                status=Escalation.Status.RESOLVED,
                outcome=Escalation.Outcome.RESOLVED,
                resolved_at=escalation.resolved_at,
                resolved_by=user,
                resolution=f"Settled with escalation #{escalation.pk}: {resolution}",
            )
    return escalation


def _act(escalation: Escalation, *, outcome: str, actor: Actor, reason: str, output) -> str:
    """Do what the outcome says; return what the resolution should add about it."""
    if escalation.kind == Escalation.Kind.BUDGET:
        # Every held run of the tenant goes on (their runs locked before anything is
        # audited: the lock order); their budget escalations are settled with this one.
        desk_services.lift_budget(tenant=escalation.tenant, actor=actor, reason=reason)
        return ""
    try:
        if outcome == Escalation.Outcome.RETRIED:
            desk_services.retry_failed_step(
                run_id=escalation.run_id, step_id=escalation.step_id, actor=actor, reason=reason
            )
            return " — the step runs again."
        if outcome == Escalation.Outcome.CANCELLED:
            run = desk_services.cancel_run(run=escalation.run, actor=actor, reason=reason)
            return f" — run #{run.pk} cancelled; its pending approvals closed."
        if outcome == Escalation.Outcome.TAKEN_OVER:
            if not isinstance(output, dict):
                raise DecisionError(
                    "Give the output the step should have produced.", code="invalid_output"
                )
            if escalation.kind in APPROVAL_KINDS:
                request = _take_over_request(escalation, actor=actor, output=output, reason=reason)
                return (
                    f" — approval #{request.pk} now proposes a person's draft (version "
                    f"{request.version}); its reviewers decide it."
                )
            run = desk_services.take_over_step(
                run_id=escalation.run_id,
                step_id=escalation.step_id,
                output=output,
                actor=actor,
                reason=reason,
            )
            if run.status == run.Status.WAITING_APPROVAL:
                return " — the provided output waits for a reviewer's approval."
            return " — the provided output stands; the run goes on."
    except desk_services.RunError as exc:
        raise DecisionError(exc.message, code=exc.code) from None
    if escalation.kind in APPROVAL_KINDS:
        request = _pending_request(escalation)
        if request is None:
            return " — its approval is no longer pending."
        whom = (
            f"assigned to {request.assignee}"
            if request.assignee_id
            else f"assigned to {request.assigned_group}"
            if request.assigned_group_id
            else "open to the tenant's reviewers"
        )
        return f" — approval #{request.pk} stays pending, {whom}."
    return ""


def _pending_request(escalation: Escalation) -> ApprovalRequest | None:
    desk_services.lock_run(escalation.run_id)
    return (
        lock(
            ApprovalRequest.objects.select_related("assignee", "assigned_group", "run", "step"),
            Level.APPROVAL,
            of=("self",),
        )
        .filter(step_id=escalation.step_id, status=ApprovalRequest.Status.PENDING)
        .first()
    )


def _take_over_request(escalation: Escalation, *, actor: Actor, output, reason: str):
    """A person writes the draft an overdue or over-revised request is stuck on: it becomes
    the next version of the proposal, earlier approvals are dismissed, and its author may
    not approve it."""
    request = _pending_request(escalation)
    if request is None or request.step.kind != "llm":
        raise DecisionError(
            "Only a pending draft can be taken over; decide or cancel instead.",
            code="not_revisable",
        )
    try:
        payload = checked_edit(request, {"draft": output})
    except InvalidEdit as exc:
        raise DecisionError(str(exc), code="invalid_output", errors=exc.errors) from None
    now = timezone.now()
    dismissed = list(request.decisions.current().approving().values_list("pk", flat=True))
    request.decisions.filter(pk__in=dismissed).update(dismissed_at=now)
    before = request.proposal
    request.proposal = payload
    request.version += 1
    request.proposal_author = actor.user
    request.save(update_fields=["proposal", "version", "proposal_author"])
    record(
        tenant=request.tenant_id,
        actor=actor,
        action="approval.taken_over",
        obj=request,
        run_id=request.run_id,
        step_id=request.step_id,
        reason=reason,
        data={
            "version": request.version,
            "diff": proposal_diff(before, payload),
            "dismissed": dismissed,
        },
    )
    return request
