from tenants.permissions import can_operate_tenant, can_review_tenant


def can_decide(user, request) -> bool:
    """Reviewers of the request's tenant decide it."""
    return can_review_tenant(user, request.tenant)


def can_resolve_escalation(user, escalation) -> bool:
    return can_operate_tenant(user, escalation.tenant)
