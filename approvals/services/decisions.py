"""Reviewers' decisions. A decision commits first; the run is resumed after commit."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from approvals.edits import InvalidEdit, checked_edit, proposal_diff
from approvals.models import ApprovalRequest, Decision, Delegation, Escalation
from approvals.permissions import decision_refusal
from approvals.selectors import quorum_holds
from approvals.services.errors import DecisionError
from audit.services import Actor, record
from desk import events
from desk import services as desk_services
from tenants import locking, safe_json
from tenants.locking import Level, lock


def active_delegators(*, tenant_id: int, delegate, now=None) -> set[int]:
    """Who has handed their requests to `delegate` right now."""
    now = now or timezone.now()
    return set(
        Delegation.objects.filter(
            tenant_id=tenant_id,
            delegate=delegate,
            starts_at__lte=now,
            ends_at__gt=now,
            revoked_at__isnull=True,
        ).values_list("delegator_id", flat=True)
    )


def decide(
    *,
    request: ApprovalRequest,
    reviewer,
    verdict: str,
    comment: str = "",
    edited_payload: dict[str, Any] | None = None,
    version: int | None = None,
    via: str = "admin",
) -> Decision:
    """Record a reviewer's verdict on the version they saw, and apply it once the request's
    approvals make a quorum.

    Four eyes is enforced here, whatever the interface: see approvals.permissions. An edit
    is checked against the step's schema, becomes the next version of the proposal and
    dismisses earlier approvals. A quorum counts only approvals of the current version by
    people who are reviewers now.

    Raises DecisionError: not allowed, not pending, already decided by this reviewer, the
    proposal changed since `version`, reject/revise without a reason, an invalid edit.
    """
    comment = (comment or "").strip()
    if verdict not in Decision.Verdict.values:
        raise DecisionError(f"Unknown verdict '{verdict}'.")
    if verdict in (Decision.Verdict.REJECT, Decision.Verdict.REVISE) and not comment:
        raise DecisionError(
            "Say why: a reason is required to reject or send back.", code="reason_required"
        )
    if verdict == Decision.Verdict.EDIT and not isinstance(edited_payload, dict):
        raise DecisionError("Edit and approve needs the edited proposal.", code="invalid_edit")
    if verdict == Decision.Verdict.EDIT:
        try:
            safe_json.check(edited_payload)
        except safe_json.UnsafeJSON as exc:
            raise DecisionError(str(exc), code="invalid_edit", errors=[exc.as_detail()]) from None
    with locking.atomic():
        # The run and its steps before the request: the lock order (tenants.locking).
        run_id = ApprovalRequest.objects.filter(pk=request.pk).values_list("run_id", flat=True)
        desk_services.lock_run(run_id.get())
        request = lock(
            ApprovalRequest.objects.select_related(
                "tenant", "run__role_version", "run__api_key", "step"
            ),
            Level.APPROVAL,
            of=("self",),
        ).get(pk=request.pk)
        refusal = decision_refusal(reviewer, request)
        if refusal:
            raise DecisionError(refusal, code="forbidden")
        if not request.is_pending:
            raise DecisionError(
                f"This request is already {request.get_status_display().lower()}.",
                code="not_pending",
            )
        if version is not None and version != request.version:
            raise DecisionError(
                f"The proposal was edited since you opened it (it is now version "
                f"{request.version}): read it again before deciding.",
                code="stale_version",
            )
        if request.decisions.current().filter(reviewer=reviewer).exists():
            raise DecisionError("You have already decided this request.", code="already_decided")
        payload = None
        if verdict == Decision.Verdict.EDIT:
            try:
                payload = checked_edit(request, edited_payload)
            except InvalidEdit as exc:
                raise DecisionError(str(exc), code="invalid_edit", errors=exc.errors) from None
            if payload == request.proposal:
                raise DecisionError(
                    "The edit changes nothing: approve the proposal as it is instead.",
                    code="invalid_edit",
                )
        actor = Actor.for_user(reviewer)
        now = timezone.now()
        on_behalf_of = None
        if (
            request.assignee_id
            and request.assignee_id != reviewer.pk
            and request.assignee_id
            in active_delegators(tenant_id=request.tenant_id, delegate=reviewer, now=now)
        ):
            on_behalf_of = request.assignee_id
        dismissed: list[int] = []
        if payload is not None:
            # The edit is a new version: approvals of the old one no longer count.
            stale = request.decisions.current().approving()
            dismissed = list(stale.values_list("pk", flat=True))
            stale.update(dismissed_at=now)
            diff = proposal_diff(request.proposal, payload)
            request.proposal = payload
            request.version += 1
            request.save(update_fields=["proposal", "version"])
        decision = Decision.objects.create(
            request=request,
            tenant_id=request.tenant_id,
            reviewer=reviewer,
            on_behalf_of_id=on_behalf_of,
            verdict=verdict,
            version=request.version,
            comment=comment,
            edited_payload=payload,
            diff=diff if payload is not None else "",
            via=via,
        )
        record(
            tenant=request.tenant_id,
            actor=actor,
            action="approval.decided",
            obj=request,
            run_id=request.run_id,
            step_id=request.step_id,
            reason=comment,
            data={
                "verdict": verdict,
                "decision": decision.pk,
                "version": request.version,
                "diff": decision.diff,
                "dismissed": dismissed,
                "on_behalf_of": on_behalf_of,
                "via": via,
            },
        )
        events.publish(
            run=request.run,
            step=request.step,
            event_type="approval.decided",
            data={"request": request.pk, "verdict": verdict, "version": request.version},
        )
        if verdict in (Decision.Verdict.APPROVE, Decision.Verdict.EDIT):
            if quorum_holds(request):
                close_request(request, ApprovalRequest.Status.APPROVED)
                desk_services.resume_approved_step(
                    step=request.step, payload=request.proposal, actor=actor
                )
        elif verdict == Decision.Verdict.REJECT:
            close_request(request, ApprovalRequest.Status.REJECTED)
            desk_services.reject_parked_step(step=request.step, actor=actor, reason=comment)
        elif request.round >= request.rule.get("max_rounds", 3):
            # Send back is bounded: past the last round a person takes it from here.
            escalate_request(
                request,
                kind=Escalation.Kind.APPROVAL_ROUNDS,
                reason=(
                    f"Approval #{request.pk} was sent back {request.round} times; "
                    f"{reviewer} asks for another round: {comment}"
                ),
            )
        else:
            try:
                desk_services.return_step_for_revision(
                    step=request.step, actor=actor, feedback=comment
                )
            except desk_services.RunError as exc:
                raise DecisionError(exc.message, code=exc.code) from None
            close_request(request, ApprovalRequest.Status.RETURNED)
    return decision


def escalate_request(request: ApprovalRequest, *, kind: str, reason: str) -> Escalation:
    """Open an escalation about a request (inside the caller's transaction)."""
    escalation = Escalation.objects.create(
        tenant_id=request.tenant_id,
        run_id=request.run_id,
        step_id=request.step_id,
        kind=kind,
        reason=reason,
    )
    record(
        tenant=request.tenant_id,
        actor=Actor.system("approvals"),
        action="escalation.opened",
        obj=escalation,
        run_id=request.run_id,
        step_id=request.step_id,
        reason=reason,
        data={"kind": kind, "request": request.pk},
    )
    events.publish(
        run=request.run,
        step=request.step,
        event_type="escalation.opened",
        data={"escalation": escalation.pk, "kind": kind, "reason": reason},
    )
    return escalation


def close_request(request: ApprovalRequest, status: str) -> None:
    """Close a request as approved, rejected or returned (inside the caller's transaction)."""
    request.status = status
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_at"])


# What a person may do about each kind of escalation (the first is what plain "resolve" is).
