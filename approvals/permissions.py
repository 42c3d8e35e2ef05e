"""Who may decide what. Four eyes lives here and is applied inside `decide`, whatever the
interface: the run's starter (or the creator of the API key that started it), the author
and the publisher of the role version the run is pinned to, and whoever wrote the current
proposal by hand never decide; only current reviewers of the tenant do. Superuser status
and model permissions grant nothing."""

from __future__ import annotations

from tenants.models import Membership
from tenants.permissions import can_operate_tenant


def barred_people(request) -> dict[int, str]:
    """{user id: why} for the people four eyes keeps from deciding `request`."""
    run = request.run
    version = run.role_version
    barred: dict[int, str] = {}
    for user_id, why in (
        (version.published_by_id, "You published the role version this run follows."),
        (version.created_by_id, "You wrote the role version this run follows."),
        (run.api_key.created_by_id if run.api_key_id else None, "Your API key started this run."),
        (run.started_by_id, "You started this run."),
        (request.proposal_author_id, "You wrote this proposal."),
    ):
        if user_id is not None:
            barred[user_id] = why
    return barred


def barred_reason(user, request) -> str | None:
    return barred_people(request).get(user.pk)


def current_reviewers(tenant_id: int, user_ids) -> set[int]:
    """Those of `user_ids` who are active reviewers of the tenant now (read fresh)."""
    return set(
        Membership.objects.filter(
            tenant_id=tenant_id,
            kind=Membership.Kind.REVIEWER,
            user_id__in=list(user_ids),
            user__is_active=True,
        ).values_list("user_id", flat=True)
    )


def decision_refusal(user, request) -> str | None:
    """Why `user` may not decide `request` now, or None when they may."""
    if user is None or not user.is_authenticated or not user.is_active:
        return "Sign in as a reviewer to decide."
    if not current_reviewers(request.tenant_id, [user.pk]):
        return f"Only reviewers of {request.tenant} decide its requests."
    return barred_reason(user, request)


def can_resolve_escalation(user, escalation) -> bool:
    return can_operate_tenant(user, escalation.tenant)
