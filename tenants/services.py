"""Writes to tenants and memberships. Each service is one transaction with its audit event."""

from __future__ import annotations

from django.db import transaction
from guardian.shortcuts import assign_perm, remove_perm

from audit.services import Actor, record
from tenants.models import ClientRecord, Membership, Tenant
from tenants.permissions import KIND_PERMISSIONS, MANAGED_PERMISSIONS


def sync_tenant_permissions(*, user, tenant: Tenant) -> None:
    """Make the user's guardian permissions on the tenant match their memberships."""
    kinds = set(Membership.objects.filter(user=user, tenant=tenant).values_list("kind", flat=True))
    wanted = {perm for kind in kinds for perm in KIND_PERMISSIONS[kind]}
    for perm in MANAGED_PERMISSIONS:
        if perm in wanted:
            assign_perm(perm, user, tenant)
        else:
            remove_perm(perm, user, tenant)


def create_tenant(*, slug: str, name: str, actor: Actor, **settings) -> Tenant:
    """Create a tenant.

    Raises django.core.exceptions.ValidationError on invalid fields.
    """
    with transaction.atomic():
        tenant = Tenant(slug=slug, name=name, **settings)
        tenant.full_clean()
        tenant._history_user = actor.user
        tenant.save()
        record(tenant=tenant, actor=actor, action="tenant.created", obj=tenant)
    return tenant


def grant_membership(*, user, tenant: Tenant, kind: str, actor: Actor) -> Membership:
    """Give a user a kind of membership in a tenant (idempotent)."""
    with transaction.atomic():
        membership = Membership.objects.filter(user=user, tenant=tenant, kind=kind).first()
        created = membership is None
        if created:
            membership = Membership(user=user, tenant=tenant, kind=kind)
            membership.full_clean()
            membership._history_user = actor.user
            membership.save()
        sync_tenant_permissions(user=user, tenant=tenant)
        if created:
            record(
                tenant=tenant,
                actor=actor,
                action="membership.granted",
                obj=membership,
                data={"user": user.get_username(), "kind": kind},
            )
    return membership


def revoke_membership(*, membership: Membership, actor: Actor) -> None:
    """Remove a membership and the permissions that came with it."""
    with transaction.atomic():
        user, tenant, kind = membership.user, membership.tenant, membership.kind
        record(
            tenant=tenant,
            actor=actor,
            action="membership.revoked",
            obj=membership,
            data={"user": user.get_username(), "kind": kind},
        )
        membership._history_user = actor.user
        membership.delete()
        sync_tenant_permissions(user=user, tenant=tenant)


def change_membership_kind(*, membership: Membership, kind: str, actor: Actor) -> Membership:
    """Change what a member may do in the tenant."""
    with transaction.atomic():
        old_kind = membership.kind
        membership.kind = kind
        membership.full_clean()
        membership._history_user = actor.user
        membership.save(update_fields=["kind"])
        sync_tenant_permissions(user=membership.user, tenant=membership.tenant)
        record(
            tenant=membership.tenant,
            actor=actor,
            action="membership.changed",
            obj=membership,
            data={"user": membership.user.get_username(), "from": old_kind, "to": kind},
        )
    return membership


def upsert_client_record(
    *, tenant: Tenant, reference: str, kind: str, name: str, email: str = "", data=None
) -> ClientRecord:
    """Create or update one client record of a tenant."""
    with transaction.atomic():
        record_obj, _ = ClientRecord.objects.update_or_create(
            tenant=tenant,
            reference=reference,
            defaults={"kind": kind, "name": name, "email": email, "data": data or {}},
        )
    return record_obj
