"""Who may do what in a tenant: the one place these rules live.

Membership kinds map to guardian object permissions on the Tenant
(`tenants.services.sync_tenant_permissions`); these predicates ask guardian.
"""

from __future__ import annotations

from guardian.core import ObjectPermissionChecker

from tenants.models import Membership, Tenant
from tenants.scoping import is_platform_staff, request_cache

KIND_PERMISSIONS = {
    Membership.Kind.OPERATOR: ("view_tenant", "operate_tenant"),
    Membership.Kind.REVIEWER: ("view_tenant", "review_tenant"),
    Membership.Kind.AUDITOR: ("view_tenant", "audit_tenant"),
}
MANAGED_PERMISSIONS = ("view_tenant", "operate_tenant", "review_tenant", "audit_tenant")


def _has(user, codename: str, tenant: Tenant | None) -> bool:
    if not user or not user.is_authenticated or not user.is_active or tenant is None:
        return False
    if is_platform_staff(user):
        return True
    # Object permission only: a model-level grant must never widen tenant scope.
    cache = request_cache(user)
    checker = cache.get("checker")
    if checker is None:
        checker = cache["checker"] = ObjectPermissionChecker(user)
    return checker.has_perm(codename, tenant)


def can_view_tenant(user, tenant: Tenant | None) -> bool:
    return _has(user, "view_tenant", tenant)


def can_operate_tenant(user, tenant: Tenant | None) -> bool:
    return _has(user, "operate_tenant", tenant)


def can_review_tenant(user, tenant: Tenant | None) -> bool:
    return _has(user, "review_tenant", tenant)


def can_audit_tenant(user, tenant: Tenant | None) -> bool:
    return _has(user, "audit_tenant", tenant) or _has(user, "operate_tenant", tenant)
