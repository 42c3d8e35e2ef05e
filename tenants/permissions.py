"""Who may do what in a tenant: the one place these rules live.

Membership kinds map to guardian object permissions on the Tenant
(`tenants.services.sync_tenant_permissions`). These predicates read the user's object
permissions once per request (one query) and never treat a superuser or a model-level
permission as a way into a tenant. Break-glass grants add read-only access.
"""

from __future__ import annotations

from django.contrib.contenttypes.models import ContentType
from guardian.utils import get_user_obj_perms_model

from tenants.models import Membership, Tenant
from tenants.scoping import break_glass_grants, request_cache

KIND_PERMISSIONS = {
    Membership.Kind.OPERATOR: ("view_tenant", "operate_tenant"),
    Membership.Kind.REVIEWER: ("view_tenant", "review_tenant"),
    Membership.Kind.AUDITOR: ("view_tenant", "audit_tenant"),
}
MANAGED_PERMISSIONS = ("view_tenant", "operate_tenant", "review_tenant", "audit_tenant")
BREAK_GLASS_PERMISSIONS = frozenset({"view_tenant", "audit_tenant"})


def tenant_permissions(user) -> dict[int, set[str]]:
    """{tenant id: permission codenames} for this user, from guardian and break-glass."""
    if not user or not user.is_authenticated or not user.is_active:
        return {}
    cache = request_cache(user)
    if "tenant_perms" not in cache:
        perms: dict[int, set[str]] = {}
        rows = (
            get_user_obj_perms_model()
            .objects.filter(user=user, content_type=ContentType.objects.get_for_model(Tenant))
            .values_list("object_pk", "permission__codename")
        )
        for object_pk, codename in rows:
            perms.setdefault(int(object_pk), set()).add(codename)
        for tenant_id in break_glass_grants(user):
            perms.setdefault(tenant_id, set()).update(BREAK_GLASS_PERMISSIONS)
        cache["tenant_perms"] = perms
    return cache["tenant_perms"]


def _has(user, codename: str, tenant: Tenant | None) -> bool:
    if tenant is None:
        return False
    return codename in tenant_permissions(user).get(tenant.pk, ())


def can_view_tenant(user, tenant: Tenant | None) -> bool:
    return _has(user, "view_tenant", tenant)


def can_operate_tenant(user, tenant: Tenant | None) -> bool:
    return _has(user, "operate_tenant", tenant)


def can_review_tenant(user, tenant: Tenant | None) -> bool:
    return _has(user, "review_tenant", tenant)


def can_audit_tenant(user, tenant: Tenant | None) -> bool:
    return _has(user, "audit_tenant", tenant) or _has(user, "operate_tenant", tenant)
