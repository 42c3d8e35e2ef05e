"""Approval policies change only through a second operator (PolicyChange)."""

from __future__ import annotations

import copy
from typing import Any

from django.utils import timezone

from approvals.models import ApprovalPolicy, PolicyChange, ReviewerGroup
from approvals.permissions import current_reviewers
from approvals.services.errors import DecisionError
from audit.services import Actor, record
from tenants import locking
from tenants.locking import Level, lock
from tenants.models import Membership
from tenants.permissions import can_operate_tenant

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
    values["escalate_to_group"] = policy.escalate_to_group_id
    values["escalate_to_user"] = policy.escalate_to_user_id
    values["approver_groups"] = (
        sorted(policy.approver_groups.values_list("pk", flat=True))
        if not policy._state.adding
        else []
    )
    return values


def _policy_from(values: dict[str, Any], *, tenant_id: int, policy=None) -> ApprovalPolicy:
    policy = policy or ApprovalPolicy(tenant_id=tenant_id)
    for name in POLICY_FIELDS:
        if name in ("escalate_to_group", "escalate_to_user"):
            setattr(policy, f"{name}_id", values.get(name))
        elif name in values:
            setattr(policy, name, values[name])
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

    Raises ValidationError when a value is invalid, the group or person is another
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
