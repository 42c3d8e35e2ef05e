"""Who a request waits for: assignment, claiming, delegation, reviewer groups."""

from __future__ import annotations

from django.utils import timezone

from approvals.models import ApprovalRequest, Delegation, GroupMember, ReviewerGroup
from approvals.permissions import current_reviewers, decision_refusal
from approvals.services.errors import DecisionError
from audit.services import Actor, record
from desk import services as desk_services
from tenants import locking
from tenants.locking import Level, lock
from tenants.permissions import can_operate_tenant


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
        before = (
            set(group.memberships.values_list("user_id", flat=True))
            if not group._state.adding
            else set()
        )
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
