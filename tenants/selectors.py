"""Reused reads of tenants and of platform staff's break-glass grants."""

from __future__ import annotations

from tenants import rls
from tenants.models import BreakGlassGrant, Membership, Tenant
from tenants.scoping import break_glass_grants, is_platform_staff


def tenant_id_for_slug(slug: str) -> int | None:
    """The id of the tenant with this slug: the one cross-tenant read a command makes before
    it works inside that tenant's context (like rls.tenant_of)."""
    with rls.platform_context():
        return Tenant.objects.filter(slug=slug).values_list("pk", flat=True).first()


def membership_tenant_ids(user) -> list[int]:
    """Ids of the tenants a user is a member of (any kind, active account or not), in order.

    Read in a context that shows that user's memberships and nothing else, so it answers
    the same whoever asks: a sign-in not yet made, an administrator, a command.
    """
    with rls.lookup_context(user_id=user.pk):
        tenant_ids = Membership.objects.filter(user_id=user.pk).values_list("tenant_id", flat=True)
        return sorted(set(tenant_ids))


def active_tenants() -> list[Tenant]:
    """Every active tenant, by name: those platform staff may open break-glass access to.

    Read under the platform role: a request's own context shows only its user's tenants.
    """
    with rls.platform_context():
        return list(Tenant.objects.active().order_by("name"))


def break_glass_tenants(user) -> dict[int, Tenant]:
    """{tenant id: tenant} of every tenant the user has held a break-glass grant for.

    Read under the platform role, so that grants that have ended still name their tenant;
    empty for anyone who is not platform staff.
    """
    if not is_platform_staff(user):
        return {}
    with rls.platform_context():
        granted = BreakGlassGrant.objects.filter(user=user).values("tenant_id")
        return {tenant.pk: tenant for tenant in Tenant.objects.filter(pk__in=granted)}


def open_break_glass_grants(user) -> list[BreakGlassGrant]:
    """The user's break-glass grants open now, soonest to expire first, with their tenants."""
    grant_ids = list(break_glass_grants(user).values())
    if not grant_ids:
        return []
    return list(
        BreakGlassGrant.objects.filter(pk__in=grant_ids)
        .select_related("tenant")
        .order_by("expires_at")
    )


class NoSuchAccount(LookupError):
    """No one account answers to what was typed."""


def account_named(identifier: str):
    """The active staff account whose username is exactly `identifier`, or else the one whose
    e-mail address it is (case aside).

    Only an exact match finds anyone: an operator adding a member learns that an account
    exists under a name or address they already knew, and nothing else about it (not its
    tenants, not its other details); nobody is listed or suggested.
    Raises NoSuchAccount when no account, or more than one, answers.
    """
    from django.contrib.auth import get_user_model

    identifier = identifier.strip()
    accounts = get_user_model().objects.filter(is_active=True, is_staff=True)
    if not identifier:
        raise NoSuchAccount("Type the person's username or e-mail address.")
    found = accounts.filter(username=identifier).first()
    if found is not None:
        return found
    by_email = list(accounts.filter(email__iexact=identifier)[:2])
    if len(by_email) == 1:
        return by_email[0]
    if by_email:
        raise NoSuchAccount(
            "More than one account has this e-mail address: type the person's username."
        )
    raise NoSuchAccount(
        "No account has this username or e-mail address. Platform staff make accounts: ask "
        "them to make one for this person, then add them here."
    )
