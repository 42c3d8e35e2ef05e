"""Reviewers' decisions. A decision commits first; the run is resumed after commit."""

from __future__ import annotations

import copy
import difflib
import json
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from approvals.edits import InvalidEdit, checked_edit
from approvals.models import (
    ApprovalPolicy,
    ApprovalRequest,
    Decision,
    Delegation,
    Escalation,
    GroupMember,
    PolicyChange,
    ReviewerGroup,
)
from approvals.permissions import (
    barred_people,
    can_resolve_escalation,
    current_reviewers,
    decision_refusal,
)
from approvals.selectors import quorum_holds
from audit.services import Actor, record
from desk import events
from desk import services as desk_services
from tenants import locking, rls
from tenants.locking import Level, lock
from tenants.models import Membership
from tenants.permissions import can_operate_tenant


class DecisionError(Exception):
    """The decision cannot be taken; nothing was written."""

    def __init__(self, message: str, *, code: str = "invalid_decision", errors=None):
        super().__init__(message)
        self.code = code
        self.errors: list[dict[str, str]] = errors or []


def _diff(before: Any, after: Any) -> str:
    def lines(value):
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).splitlines()

    return "\n".join(
        difflib.unified_diff(lines(before), lines(after), "proposed", "approved", lineterm="")
    )


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
            diff = _diff(request.proposal, payload)
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
                _close(request, ApprovalRequest.Status.APPROVED)
                desk_services.resume_approved_step(
                    step=request.step, payload=request.proposal, actor=actor
                )
        elif verdict == Decision.Verdict.REJECT:
            _close(request, ApprovalRequest.Status.REJECTED)
            desk_services.reject_parked_step(step=request.step, actor=actor, reason=comment)
        elif request.round >= request.rule.get("max_rounds", 3):
            # Send back is bounded: past the last round a person takes it from here.
            _open_escalation(
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
            _close(request, ApprovalRequest.Status.RETURNED)
    return decision


def _open_escalation(request: ApprovalRequest, *, kind: str, reason: str) -> Escalation:
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


def _close(request: ApprovalRequest, status: str) -> None:
    request.status = status
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_at"])


# What a person may do about each kind of escalation (the first is what plain "resolve" is).
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
        data={"version": request.version, "diff": _diff(before, payload), "dismissed": dismissed},
    )
    return request


POLICY_FIELDS = (
    "category",
    "mode",
    "required_approvals",
    "due_minutes",
    "remind_every_minutes",
    "max_reminders",
    "escalate_to_group",
    "escalate_to_user",
    "final_action",
    "max_rounds",
    "allow_bulk",
    "email_links",
)


def policy_values(policy: ApprovalPolicy) -> dict[str, Any]:
    """A policy as JSON: what a change shows as its before and after."""
    values = {name: getattr(policy, name) for name in POLICY_FIELDS if "escalate_to" not in name}
    values["role"] = policy.role_id
    values["escalate_to_group"] = policy.escalate_to_group_id
    values["escalate_to_user"] = policy.escalate_to_user_id
    values["approver_groups"] = (
        sorted(policy.approver_groups.values_list("pk", flat=True)) if policy.pk else []
    )
    return values


def _policy_from(values: dict[str, Any], *, tenant_id: int, policy=None) -> ApprovalPolicy:
    policy = policy or ApprovalPolicy(tenant_id=tenant_id)
    for name in POLICY_FIELDS:
        if name in ("escalate_to_group", "escalate_to_user"):
            setattr(policy, f"{name}_id", values.get(name))
        elif name in values:
            setattr(policy, name, values[name])
    policy.role_id = values.get("role")
    return policy


def propose_policy_change(
    *,
    tenant,
    actor: Actor,
    values: dict[str, Any] | None,
    policy: ApprovalPolicy | None = None,
    approver_groups=(),
    reason: str = "",
) -> PolicyChange:
    """Propose creating (no `policy`), changing or deleting (`values` None) an approval
    policy; it applies only when a second operator approves it (approve_policy_change).

    Raises ValidationError when a value is invalid, the role, group or person is another
    tenant's, or the proposer is not an operator of the tenant.
    """
    from django.core.exceptions import ValidationError

    if actor.user is None or not can_operate_tenant(actor.user, tenant):
        raise ValidationError("Only the tenant's operators propose policy changes.")
    if policy is not None and policy.tenant_id != tenant.pk:
        raise ValidationError("This policy belongs to another tenant.")
    after = None
    if values is not None:
        values = {**values, "approver_groups": sorted(g.pk for g in approver_groups)}
        candidate = _policy_from(values, tenant_id=tenant.pk, policy=copy.copy(policy))
        _check_policy(candidate, groups=list(approver_groups))
        after = {**policy_values(candidate), "approver_groups": values["approver_groups"]}
    action = (
        PolicyChange.Action.DELETE
        if values is None
        else PolicyChange.Action.CREATE
        if policy is None
        else PolicyChange.Action.UPDATE
    )
    before = policy_values(policy) if policy is not None else None
    if before is not None and before == after:
        raise ValidationError("This changes nothing.")
    with locking.atomic():
        change = PolicyChange.objects.create(
            tenant=tenant,
            policy=policy,
            action=action,
            before=before,
            after=after,
            proposed_by=actor.user,
            reason=reason,
        )
        record(
            tenant=tenant.pk,
            actor=actor,
            action="policy.change_proposed",
            obj=change,
            reason=reason,
            data={"change": change.pk, "action": action, "before": before, "after": after},
        )
    return change


def _check_policy(policy: ApprovalPolicy, *, groups: list) -> None:
    from django.core.exceptions import ValidationError

    tenant_id = policy.tenant_id
    if policy.role_id and policy.role.tenant_id != tenant_id:
        raise ValidationError({"role": "This role belongs to another tenant."})
    if any(g.tenant_id != tenant_id for g in groups):
        raise ValidationError({"approver_groups": "A group belongs to another tenant."})
    if policy.escalate_to_group_id and policy.escalate_to_group.tenant_id != tenant_id:
        raise ValidationError({"escalate_to_group": "This group belongs to another tenant."})
    if (
        policy.escalate_to_user_id
        and not current_reviewers(tenant_id, [policy.escalate_to_user_id])
        and not Membership.objects.filter(
            tenant_id=tenant_id, user_id=policy.escalate_to_user_id, kind=Membership.Kind.OPERATOR
        ).exists()
    ):
        raise ValidationError({"escalate_to_user": "Not a reviewer or operator of the tenant."})
    if len(groups) > policy.required_approvals:
        raise ValidationError(
            {"required_approvals": "Require at least one approval per approver group."}
        )
    policy.full_clean(validate_unique=False)


def approve_policy_change(*, change: PolicyChange, actor: Actor, note: str = "") -> PolicyChange:
    """Apply a proposed policy change as its second operator.

    Raises DecisionError when the approver proposed it, is not an operator of the tenant,
    the change is no longer pending, or the policy changed since it was proposed.
    """
    from django.core.exceptions import ValidationError

    user = actor.user
    with locking.atomic():
        change = lock(PolicyChange.objects.select_related("tenant"), Level.ROW).get(pk=change.pk)
        _check_second_operator(change, user)
        policy = None
        if change.policy_id is not None:
            policy = (
                lock(ApprovalPolicy.objects.all(), Level.ROW).filter(pk=change.policy_id).first()
            )
        if change.action != PolicyChange.Action.CREATE and (
            policy is None or policy_values(policy) != change.before
        ):
            raise DecisionError(
                "The policy changed since this was proposed: propose it again.", code="stale"
            )
        if change.action == PolicyChange.Action.DELETE:
            policy._history_user = user
            policy.delete()
            policy = None
        else:
            values = change.after
            policy = _policy_from(values, tenant_id=change.tenant_id, policy=policy)
            policy._history_user = user
            try:
                policy.full_clean()
            except ValidationError as exc:
                raise DecisionError(
                    "The change no longer fits: " + "; ".join(exc.messages), code="invalid"
                ) from None
            policy.save()
            policy.approver_groups.set(
                ReviewerGroup.objects.filter(
                    tenant_id=change.tenant_id, pk__in=values["approver_groups"]
                )
            )
        change.status = PolicyChange.Status.APPLIED
        change.policy = policy
        change.decided_by = user
        change.decided_at = timezone.now()
        change.decision_note = note
        change.save(update_fields=["status", "policy", "decided_by", "decided_at", "decision_note"])
        record(
            tenant=change.tenant_id,
            actor=actor,
            action="policy.change_applied",
            obj=change,
            reason=note,
            data={
                "change": change.pk,
                "action": change.action,
                "proposed_by": change.proposed_by_id,
                "before": change.before,
                "after": change.after,
            },
        )
    return change


def reject_policy_change(*, change: PolicyChange, actor: Actor, note: str) -> PolicyChange:
    """Turn a proposed policy change down (its proposer withdraws it the same way).

    Raises DecisionError without a note, when not allowed or no longer pending.
    """
    note = (note or "").strip()
    if not note:
        raise DecisionError("Say why.", code="reason_required")
    with locking.atomic():
        change = lock(PolicyChange.objects.select_related("tenant"), Level.ROW).get(pk=change.pk)
        withdrawn = change.proposed_by_id == getattr(actor.user, "pk", None)
        if not withdrawn:
            _check_second_operator(change, actor.user)
        elif change.status != PolicyChange.Status.PENDING:
            raise DecisionError("This change is no longer pending.", code="not_pending")
        change.status = PolicyChange.Status.WITHDRAWN if withdrawn else PolicyChange.Status.REJECTED
        change.decided_by = actor.user
        change.decided_at = timezone.now()
        change.decision_note = note
        change.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
        record(
            tenant=change.tenant_id,
            actor=actor,
            action="policy.change_withdrawn" if withdrawn else "policy.change_rejected",
            obj=change,
            reason=note,
            data={"change": change.pk},
        )
    return change


def _check_second_operator(change: PolicyChange, user) -> None:
    if (
        user is None
        or not Membership.objects.filter(
            tenant_id=change.tenant_id,
            user=user,
            kind=Membership.Kind.OPERATOR,
            user__is_active=True,
        ).exists()
    ):
        raise DecisionError("Only the tenant's operators decide policy changes.", code="forbidden")
    if change.proposed_by_id == user.pk:
        raise DecisionError(
            "A second operator must approve the change you proposed.", code="four_eyes"
        )
    if change.status != PolicyChange.Status.PENDING:
        raise DecisionError("This change is no longer pending.", code="not_pending")


# --- assignment, delegation and reviewer groups ---------------------------------------------


def assign_request(
    *, request: ApprovalRequest, actor: Actor, assignee=None, group=None, reason: str = ""
) -> ApprovalRequest:
    """Route a pending request to a person or a group (neither: back to every reviewer).

    The tenant's operators assign anything; a reviewer claims a request (assigns it to
    themselves) or passes on one assigned to them or their group. Assignment is routing:
    who may decide is still four eyes' call, and nobody is assigned what they may not decide.

    Raises DecisionError when not allowed, not pending, or the assignee or group is not one
    of the tenant's reviewers.
    """
    user = actor.user
    with locking.atomic():
        run_id = ApprovalRequest.objects.filter(pk=request.pk).values_list("run_id", flat=True)
        desk_services.lock_run(run_id.get())
        request = lock(
            ApprovalRequest.objects.select_related("tenant", "run__role_version", "run__api_key"),
            Level.APPROVAL,
            of=("self",),
        ).get(pk=request.pk)
        if not request.is_pending:
            raise DecisionError("This request is no longer pending.", code="not_pending")
        is_operator = user is not None and can_operate_tenant(user, request.tenant)
        mine = user is not None and (
            request.assignee_id == user.pk
            or (
                request.assigned_group_id
                and GroupMember.objects.filter(
                    group_id=request.assigned_group_id, user=user
                ).exists()
            )
        )
        claiming = user is not None and assignee is not None and assignee.pk == user.pk
        # A claim takes what nobody holds yet (or what one's group holds), never a colleague's.
        claimable = claiming and request.assignee_id is None
        if not (is_operator or mine or (claimable and decision_refusal(user, request) is None)):
            raise DecisionError(
                "Only the tenant's operators, or whoever holds the request, reassign it.",
                code="forbidden",
            )
        if assignee is not None:
            refusal = decision_refusal(assignee, request)
            if refusal:
                raise DecisionError(
                    f"{assignee} may not decide this request: {refusal}", code="not_eligible"
                )
        if group is not None and group.tenant_id != request.tenant_id:
            raise DecisionError("This group belongs to another tenant.", code="not_eligible")
        data = {
            "from_user": request.assignee_id,
            "from_group": request.assigned_group_id,
            "to_user": assignee.pk if assignee else None,
            "to_group": group.pk if group else None,
        }
        request.assignee = assignee
        request.assigned_group = group
        request.save(update_fields=["assignee", "assigned_group"])
        record(
            tenant=request.tenant_id,
            actor=actor,
            action="approval.claimed" if claiming else "approval.assigned",
            obj=request,
            run_id=request.run_id,
            step_id=request.step_id,
            reason=reason,
            data=data,
        )
    return request


def create_delegation(
    *, tenant, delegator, delegate, starts_at, ends_at, actor: Actor, reason: str = ""
) -> Delegation:
    """Hand a reviewer's requests to another reviewer for a while (out of office).

    Raises DecisionError when the actor is neither the delegator nor an operator, either
    person is not a reviewer of the tenant, the period is empty or over, or it is oneself.
    """
    user = actor.user
    if user is None or not (user.pk == delegator.pk or can_operate_tenant(user, tenant)):
        raise DecisionError(
            "Reviewers delegate their own requests; operators anyone's.", code="forbidden"
        )
    if delegator.pk == delegate.pk:
        raise DecisionError("Delegate to someone else.", code="invalid")
    if current_reviewers(tenant.pk, [delegator.pk, delegate.pk]) != {delegator.pk, delegate.pk}:
        raise DecisionError(f"Both people must be reviewers of {tenant}.", code="not_eligible")
    if not (starts_at < ends_at and ends_at > timezone.now()):
        raise DecisionError(
            "The delegation must end after it starts, in the future.", code="invalid"
        )
    with locking.atomic():
        delegation = Delegation.objects.create(
            tenant=tenant,
            delegator=delegator,
            delegate=delegate,
            starts_at=starts_at,
            ends_at=ends_at,
            reason=reason,
        )
        record(
            tenant=tenant.pk,
            actor=actor,
            action="delegation.created",
            obj=delegation,
            reason=reason,
            data={
                "delegator": delegator.pk,
                "delegate": delegate.pk,
                "starts_at": starts_at,
                "ends_at": ends_at,
            },
        )
    return delegation


def revoke_delegation(*, delegation: Delegation, actor: Actor, reason: str = "") -> Delegation:
    """End a delegation now.

    Raises DecisionError when the actor is neither its delegator nor an operator.
    """
    user = actor.user
    with locking.atomic():
        delegation = lock(Delegation.objects.select_related("tenant"), Level.ROW).get(
            pk=delegation.pk
        )
        if user is None or not (
            user.pk == delegation.delegator_id or can_operate_tenant(user, delegation.tenant)
        ):
            raise DecisionError("You may not end this delegation.", code="forbidden")
        if delegation.revoked_at is not None:
            return delegation
        delegation.revoked_at = timezone.now()
        delegation.save(update_fields=["revoked_at"])
        record(
            tenant=delegation.tenant_id,
            actor=actor,
            action="delegation.revoked",
            obj=delegation,
            reason=reason,
        )
    return delegation


def save_reviewer_group(
    *, tenant, name: str, members, actor: Actor, group: ReviewerGroup | None = None
) -> ReviewerGroup:
    """Create or change a reviewer group and its members (reviewers of the tenant only).

    Raises ValidationError when a member is not a reviewer of the tenant or the name is
    taken.
    """
    from django.core.exceptions import ValidationError

    if actor.user is None or not can_operate_tenant(actor.user, tenant):
        raise ValidationError("Only the tenant's operators manage reviewer groups.")
    member_ids = {m.pk for m in members}
    if current_reviewers(tenant.pk, member_ids) != member_ids:
        raise ValidationError({"members": f"Members must be reviewers of {tenant}."})
    with locking.atomic():
        group = group or ReviewerGroup(tenant=tenant)
        before = set(group.memberships.values_list("user_id", flat=True)) if group.pk else set()
        group.name = name
        try:
            group.full_clean(exclude=["members"])
        except ValidationError:
            raise
        group.save()
        GroupMember.objects.filter(group=group).exclude(user_id__in=member_ids).delete()
        GroupMember.objects.bulk_create(
            [GroupMember(tenant=tenant, group=group, user_id=u) for u in member_ids - before]
        )
        record(
            tenant=tenant.pk,
            actor=actor,
            action="reviewer_group.saved",
            obj=group,
            data={
                "name": name,
                "added": sorted(member_ids - before),
                "removed": sorted(before - member_ids),
            },
        )
    return group


# --- the timeout ladder and notifications ---------------------------------------------------


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
            _open_escalation(
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
            _close(request, ApprovalRequest.Status.REJECTED)
            desk_services.reject_parked_step(
                step=request.step, actor=actor, reason="Not decided by its due time."
            )
    return rung


def notify_reviewers_after_commit(request: ApprovalRequest, *, reminder: int = 0) -> None:
    """E-mail the people a request waits for once the transaction commits (`reminder`:
    which reminder this is; 0 for the first notification)."""
    transaction.on_commit(
        lambda: _enqueue_notification(request.pk, reminder),
        robust=True,  # a broker outage must not fail what already committed (the sweep re-rings)
    )


def _enqueue_notification(request_id: int, reminder: int) -> None:
    from django_q.tasks import async_task

    async_task(
        "approvals.tasks.notify_reviewers",
        request_id=request_id,
        reminder=reminder,
        q_options={"group": "notifications", "save": False},
    )


def recipients(request: ApprovalRequest) -> list[tuple[int, str]]:
    """Who a request waits for: its assignee (and their delegates), else its group, else
    every reviewer of the tenant; never someone four eyes bars from deciding it."""
    people = Membership.objects.filter(
        tenant_id=request.tenant_id, kind=Membership.Kind.REVIEWER, user__is_active=True
    )
    if request.assignee_id:
        now = timezone.now()
        delegates = Delegation.objects.filter(
            tenant_id=request.tenant_id,
            delegator_id=request.assignee_id,
            starts_at__lte=now,
            ends_at__gt=now,
            revoked_at__isnull=True,
        ).values("delegate_id")
        people = people.filter(Q(user_id=request.assignee_id) | Q(user_id__in=delegates))
    elif request.assigned_group_id:
        people = people.filter(user__reviewer_groups=request.assigned_group_id)
    barred = barred_people(request)
    return sorted(
        {
            (user_id, email)
            for user_id, email in people.values_list("user_id", "user__email")
            if email and user_id not in barred
        },
        key=lambda person: person[1],
    )


def notify_reviewers(*, request_id: int, reminder: int = 0) -> int:
    """Send the notification (or reminder number `reminder`) once; return how many people
    it went to."""
    from django.core.mail import EmailMessage, get_connection

    from approvals import links
    from approvals.selectors import proposal_summary

    tenant_id = rls.tenant_of("approvals_approvalrequest", request_id)
    if tenant_id is None:
        return 0
    with locking.tracked(), rls.tenant_context(tenant_id):
        request = (
            lock(
                ApprovalRequest.objects.select_related(
                    "tenant", "run__role", "run__role_version", "run__api_key", "step"
                ),
                Level.APPROVAL,
                of=("self",),
            )
            .filter(pk=request_id, status=ApprovalRequest.Status.PENDING)
            .first()
        )
        if request is None:
            return 0  # decided meanwhile
        if reminder:
            if request.reminders_notified >= reminder:
                return 0  # this task was delivered twice
            request.reminders_notified = reminder
            request.save(update_fields=["reminders_notified"])
        else:
            if request.notified_at is not None:
                return 0  # this task was delivered twice
            request.notified_at = timezone.now()
            request.save(update_fields=["notified_at"])
        people = recipients(request)
        if not people:
            return 0  # nobody to tell: handled (the queue shows it)
        subject = (
            f"{'Reminder: ' if reminder else ''}{request.tenant.name}: "
            f"{request.run.role.name} needs your approval"
        )
        body = (
            f"Step '{request.step.key}' ({request.category}) of run #{request.run_id} is waiting"
            f" for {request.required_approvals} approval(s), due {request.due_at:%Y-%m-%d %H:%M}"
            f" UTC.\n\n{proposal_summary(request)}\n\nReview it: {links.review_url(request)}\n"
        )
        messages = []
        for user_id, email in people:
            text = body
            if request.rule.get("email_links"):
                urls = links.issue_links(request=request, reviewer_id=user_id)
                text += (
                    f"\nOr decide from here (each link asks you to confirm; it works once, for"
                    f" this version of the proposal):\n  Approve: {urls['approve']}\n"
                    f"  Reject:  {urls['reject']}\n"
                )
            messages.append(EmailMessage(subject, text, settings.DEFAULT_FROM_EMAIL, [email]))
        # One message per person: a link is theirs alone. Sent inside the transaction: if
        # the mail server fails, the marker and the links roll back and the sweep retries.
        get_connection().send_messages(messages)
    return len(people)
