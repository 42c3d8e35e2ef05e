"""Reads the approvals app reuses: which approvals stand, and whether they make a quorum."""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.utils import timezone

from approvals.edits import proposal_diff
from approvals.models import ApprovalRequest, Decision, Delegation, GroupMember
from approvals.permissions import barred_people, current_reviewers
from tenants.models import Membership


def waiting_for(queryset: QuerySet, user, *, now=None) -> QuerySet:
    """The pending requests of `queryset` that wait for `user`: assigned to them, to one of
    their groups, to someone who delegated to them, or to nobody; in a tenant they review;
    not yet decided by them; and none four eyes bars them from."""
    now = now or timezone.now()
    delegators = Delegation.objects.filter(
        delegate=user, starts_at__lte=now, ends_at__gt=now, revoked_at__isnull=True
    ).values("delegator_id")
    groups = GroupMember.objects.filter(user=user).values("group_id")
    reviews = Membership.objects.filter(user=user, kind=Membership.Kind.REVIEWER).values(
        "tenant_id"
    )
    decided = Decision.objects.current().filter(reviewer=user).values("request_id")
    return (
        queryset.filter(status=ApprovalRequest.Status.PENDING, tenant_id__in=reviews)
        .filter(
            Q(assignee=user)
            | Q(assigned_group__in=groups)
            | Q(assignee__in=delegators)
            | Q(assignee__isnull=True, assigned_group__isnull=True)
        )
        .exclude(pk__in=decided)
        .exclude(run__started_by=user)
        .exclude(run__role_version__created_by=user)
        .exclude(run__role_version__published_by=user)
        .exclude(proposal_author=user)
        .exclude(run__api_key__created_by=user)
    )


def decided_by(queryset: QuerySet, user) -> QuerySet:
    """The pending requests `user` has decided and that wait for someone else."""
    decided = Decision.objects.current().filter(reviewer=user).values("request_id")
    return queryset.filter(status=ApprovalRequest.Status.PENDING, pk__in=decided)


def proposal_summary(request: ApprovalRequest) -> str:
    """One line on what a request is about: to whom, the subject or the figures."""
    proposal = request.proposal or {}
    if "tool" in proposal:
        args = proposal.get("args") or {}
        to = f" to {args['to']}" if args.get("to") else ""
        subject = f": “{args['subject']}”" if args.get("subject") else ""
        return f"{proposal['tool']}{to}{subject}"
    if isinstance(proposal.get("draft"), dict):
        draft = proposal["draft"]
        if draft.get("subject"):
            recipient = next(
                (v for k, v in (request.run.input or {}).items() if "email" in k and v), ""
            )
            return f"“{draft['subject']}”" + (f" for {recipient}" if recipient else "")
        figures = [
            f"{k.replace('_', ' ')} {v:,}"
            for k, v in draft.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if figures:
            return " · ".join(figures[:3])
        text = next((v for v in draft.values() if isinstance(v, str)), "")
        return text[:80]
    if "outputs" in proposal:
        return f"checkpoint on {', '.join(proposal['outputs']) or 'nothing yet'}"
    return ""


def standing_approvals(request: ApprovalRequest) -> list[Decision]:
    """The approvals that count now: of the current version, not dismissed, by people who
    are reviewers of the tenant at this moment and whom four eyes does not bar."""
    decisions = list(
        request.decisions.current()
        .approving()
        .filter(version=request.version)
        .order_by("created_at", "pk")
    )
    if not decisions:
        return []
    reviewers = current_reviewers(request.tenant_id, {d.reviewer_id for d in decisions})
    barred = barred_people(request)
    return [d for d in decisions if d.reviewer_id in reviewers and d.reviewer_id not in barred]


def _one_from_each(groups: dict[int, set[int]], people: set[int]) -> bool:
    """Whether each group can be matched to a different person of `people` (small sets:
    a policy names a few groups)."""
    order = sorted(groups, key=lambda g: len(groups[g] & people))

    def match(index: int, used: frozenset[int]) -> bool:
        if index == len(order):
            return True
        return any(
            match(index + 1, used | {person})
            for person in sorted(groups[order[index]] & people - used)
        )

    return match(0, frozenset())


def quorum_missing(request: ApprovalRequest, approvals: list[Decision] | None = None) -> str:
    """What the request still needs to be approved ("" when its quorum holds now)."""
    approvals = standing_approvals(request) if approvals is None else approvals
    people = {d.reviewer_id for d in approvals}
    if len(people) < request.required_approvals:
        return f"{len(people)} of {request.required_approvals} approvals"
    group_ids = request.rule.get("groups") or []
    if group_ids:
        groups: dict[int, set[int]] = {g: set() for g in group_ids}
        for group_id, user_id in GroupMember.objects.filter(
            group_id__in=group_ids, user_id__in=people
        ).values_list("group_id", "user_id"):
            groups[group_id].add(user_id)
        if not _one_from_each(groups, people):
            return "an approval from a different person of each required group"
    return ""


def quorum_holds(request: ApprovalRequest) -> bool:
    return quorum_missing(request) == ""


def earlier_rounds(request: ApprovalRequest) -> list[dict]:
    """The rounds before this redraft, newest first: each draft, the feedback it got, and
    what changed from it to the draft after it."""
    rounds = []
    later = request
    seen = 0
    current = request.previous
    while current is not None and seen < 20:
        feedback = [
            d.comment
            for d in current.decisions.filter(verdict=Decision.Verdict.REVISE).order_by(
                "created_at", "pk"
            )
        ]
        rounds.append(
            {
                "request": current,
                "round": current.round,
                "feedback": feedback,
                "draft": current.proposal,
                "diff": proposal_diff(current.proposal, later.proposal),
            }
        )
        later, current = current, current.previous
        seen += 1
    return rounds


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
