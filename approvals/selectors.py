"""Reads the approvals app reuses: which approvals stand, and whether they make a quorum."""

from __future__ import annotations

from approvals.models import ApprovalRequest, Decision, GroupMember
from approvals.permissions import barred_people, current_reviewers


def standing_approvals(request: ApprovalRequest) -> list[Decision]:
    """The approvals that count now: of the current version, not dismissed, by people who
    are reviewers of the tenant at this moment and whom four eyes does not bar."""
    decisions = list(
        request.decisions.current().approving().filter(version=request.version).order_by("pk")
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
    from approvals.services import _diff

    rounds = []
    later = request
    seen = 0
    current = request.previous
    while current is not None and seen < 20:
        feedback = [
            d.comment
            for d in current.decisions.filter(verdict=Decision.Verdict.REVISE).order_by("pk")
        ]
        rounds.append(
            {
                "request": current,
                "round": current.round,
                "feedback": feedback,
                "draft": current.proposal,
                "diff": _diff(current.proposal, later.proposal),
            }
        )
        later, current = current, current.previous
        seen += 1
    return rounds
