"""Publishing a version in tests the only way there is: one operator asks, another who
did not write the draft approves (with a written override when the draft has no passing
golden-case suite, as most test drafts have not), then it is activated."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from audit.services import Actor
from roles.golden import regression_gate
from roles.models import RoleVersion
from roles.services import (
    activate_role_version,
    approve_publication,
    draft_authors,
    request_publication,
)
from tenants.models import Membership
from tenants.services import grant_membership


def two_operators(version: RoleVersion) -> tuple:
    """(requester, approver): operators of the version's tenant, the approver no author."""
    authors = draft_authors(version)
    operators = list(
        get_user_model()
        .objects.filter(
            memberships__tenant_id=version.tenant_id,
            memberships__kind=Membership.Kind.OPERATOR,
            is_active=True,
        )
        .distinct()
        .order_by("pk")
    )
    approver = next((u for u in operators if u.pk not in authors), None)
    requester = next((u for u in operators if approver is None or u.pk != approver.pk), None)
    for name in ("publisher.one", "publisher.two"):
        if approver is not None and requester is not None:
            break
        user, _ = get_user_model().objects.get_or_create(username=name, is_staff=True)
        grant_membership(
            user=user, tenant=version.tenant, kind="operator", actor=Actor.system("tests")
        )
        if approver is None:
            approver = user
        else:
            requester = user
    return requester, approver


def publish(version: RoleVersion, *, activate: bool = True) -> RoleVersion:
    requester, approver = two_operators(version)
    override = "" if regression_gate(version).ok else "Test fixture without golden cases."
    publication = request_publication(
        version=version, actor=Actor.for_user(requester), override_reason=override
    )
    version = approve_publication(publication=publication, actor=Actor.for_user(approver))
    if activate:
        activate_role_version(version=version, actor=Actor.for_user(approver))
    version.refresh_from_db()
    return version
