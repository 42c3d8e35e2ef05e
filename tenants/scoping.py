"""Tenant-scoping helpers: every tenant-scoped query starts here.

A queryset is narrowed to the tenants a user belongs to (through Membership rows, never
through model-level permissions) or to one tenant that has already been checked.
"""

from __future__ import annotations

from django.db.models import QuerySet

from tenants.models import Membership, Tenant


def request_cache(user) -> dict:
    """A dict living as long as this user object (one request, one task): permission caches."""
    cache = getattr(user, "_desk_cache", None)
    if cache is None:
        cache = {}
        user._desk_cache = cache
    return cache


def is_platform_staff(user) -> bool:
    """Superusers run the platform itself and see every tenant."""
    return bool(user and user.is_active and user.is_superuser)


def member_tenant_ids(user, *, kinds: tuple[str, ...] | None = None) -> set[int]:
    """Ids of the tenants the user is a member of (optionally with one of `kinds`)."""
    if not user or not user.is_authenticated or not user.is_active:
        return set()
    cache_key = ("tenant_ids", kinds)
    cache = request_cache(user)
    if cache_key not in cache:
        memberships = Membership.objects.filter(user=user)
        if kinds:
            memberships = memberships.filter(kind__in=kinds)
        cache[cache_key] = set(memberships.values_list("tenant_id", flat=True))
    return cache[cache_key]


def tenants_for_user(user, *, kinds: tuple[str, ...] | None = None) -> QuerySet[Tenant]:
    """The tenants a user may see; platform staff see all."""
    if is_platform_staff(user):
        return Tenant.objects.all()
    return Tenant.objects.filter(id__in=member_tenant_ids(user, kinds=kinds))


def scope_to_user(
    queryset: QuerySet, user, *, tenant_field: str = "tenant", kinds: tuple[str, ...] | None = None
) -> QuerySet:
    """Narrow any tenant-scoped queryset to the user's tenants."""
    if is_platform_staff(user):
        return queryset
    return queryset.filter(**{f"{tenant_field}__in": member_tenant_ids(user, kinds=kinds)})


def scope_to_tenant(
    queryset: QuerySet, tenant: Tenant, *, tenant_field: str = "tenant"
) -> QuerySet:
    """Narrow a tenant-scoped queryset to one tenant the caller has already checked."""
    return queryset.filter(**{f"{tenant_field}": tenant})
