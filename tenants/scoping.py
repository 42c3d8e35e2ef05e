"""Tenant-scoping helpers: every tenant-scoped query starts here.

A queryset is narrowed to the tenants a user belongs to (Membership rows, never
model-level permissions, and never the superuser flag) or to one tenant already checked.
Platform staff reach a tenant only through an open break-glass grant, read-only.
"""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from tenants.models import BreakGlassGrant, Membership, PlatformStaff, Tenant

READ_ONLY_KINDS = (Membership.Kind.AUDITOR,)


def request_cache(user) -> dict:
    """A dict living as long as this user object (one request, one task): permission caches."""
    cache = getattr(user, "_desk_cache", None)
    if cache is None:
        cache = {}
        user._desk_cache = cache
    return cache


def _is_active_user(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active)


def is_platform_staff(user) -> bool:
    """Flagged platform staff: the task-queue admin and break-glass access, no tenant data."""
    if not _is_active_user(user):
        return False
    cache = request_cache(user)
    if "platform_staff" not in cache:
        cache["platform_staff"] = PlatformStaff.objects.filter(user=user).exists()
    return cache["platform_staff"]


def break_glass_grants(user) -> dict[int, int]:
    """{tenant id: grant id} of the user's open break-glass grants."""
    if not is_platform_staff(user):
        return {}
    cache = request_cache(user)
    if "break_glass" not in cache:
        now = timezone.now()
        grants = BreakGlassGrant.objects.filter(
            user=user, ended_at__isnull=True, started_at__lte=now, expires_at__gt=now
        ).values_list("tenant_id", "pk")
        cache["break_glass"] = dict(grants)
    return cache["break_glass"]


def member_tenant_ids(user, *, kinds: tuple[str, ...] | None = None) -> set[int]:
    """Ids of the tenants the user may see (optionally: as one of `kinds`)."""
    if not _is_active_user(user):
        return set()
    cache = request_cache(user)
    key = ("tenant_ids", kinds)
    if key not in cache:
        ids = {tenant_id for tenant_id, kind in _memberships(user) if not kinds or kind in kinds}
        if kinds is None or set(kinds) & set(READ_ONLY_KINDS):
            ids |= set(break_glass_grants(user))
        cache[key] = ids
    return cache[key]


def _memberships(user) -> list[tuple[int, str]]:
    """(tenant id, kind) of each of the user's memberships: one query a request, whichever
    kinds its pages ask about."""
    cache = request_cache(user)
    if "memberships" not in cache:
        rows = Membership.objects.filter(user=user).values_list("tenant_id", "kind")
        cache["memberships"] = list(rows)
    return cache["memberships"]


def tenants_for_user(user, *, kinds: tuple[str, ...] | None = None) -> QuerySet[Tenant]:
    """The tenants a user may see."""
    return Tenant.objects.filter(id__in=member_tenant_ids(user, kinds=kinds))


def visible_tenants(user, *, kinds: tuple[str, ...] | None = None) -> list[Tenant]:
    """The tenants a user may see (optionally: as one of `kinds`), by name; read once a
    request (a page's tenant filter and its other lists of tenants share it)."""
    cache = request_cache(user)
    key = ("tenants", kinds)
    if key not in cache:
        cache[key] = list(tenants_for_user(user, kinds=kinds).order_by("name", "pk"))
    return cache[key]


def scope_to_user(
    queryset: QuerySet, user, *, tenant_field: str = "tenant", kinds: tuple[str, ...] | None = None
) -> QuerySet:
    """Narrow any tenant-scoped queryset to the user's tenants."""
    return queryset.filter(**{f"{tenant_field}__in": member_tenant_ids(user, kinds=kinds)})


def scope_to_tenant(
    queryset: QuerySet, tenant: Tenant, *, tenant_field: str = "tenant"
) -> QuerySet:
    """Narrow a tenant-scoped queryset to one tenant the caller has already checked."""
    return queryset.filter(**{f"{tenant_field}": tenant})
