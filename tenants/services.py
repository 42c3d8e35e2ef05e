"""Writes to tenants and memberships. Each service is one transaction with its audit event."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, models
from django.db.models import F
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from audit.auth_events import chains_context, user_chains
from audit.services import Actor, apply_changes, lock_chain, record
from tenants import encryption, locking, rls, safe_json
from tenants.locking import Level, lock
from tenants.models import (
    PROVIDER_KEY_PURPOSE,
    ApiKey,
    ApiRateWindow,
    BreakGlassGrant,
    ClientRecord,
    Membership,
    PlatformStaff,
    Tenant,
)
from tenants.permissions import KIND_PERMISSIONS, MANAGED_PERMISSIONS
from tenants.selectors import membership_tenant_ids


def sync_tenant_permissions(*, user, tenant: Tenant) -> None:
    """Make the user's guardian permissions on the tenant match their memberships."""
    kinds = set(Membership.objects.filter(user=user, tenant=tenant).values_list("kind", flat=True))
    wanted = {perm for kind in kinds for perm in KIND_PERMISSIONS[kind]}
    for perm in MANAGED_PERMISSIONS:
        if perm in wanted:
            assign_perm(perm, user, tenant)
        else:
            remove_perm(perm, user, tenant)


TENANT_SETTINGS = {
    "max_concurrent_runs",
    "reserved_steps_per_minute",
    "priority_weight",
    "monthly_token_budget",
    "monthly_cost_budget",
    "retention_days",
}


def create_tenant(*, slug: str, name: str, actor: Actor, first_operator=None, **settings) -> Tenant:
    """Create a tenant, optionally with its first operator (a platform action: it writes
    outside any tenant's context, where nobody is a member yet).

    Raises django.core.exceptions.ValidationError on invalid fields.
    """
    with rls.platform_context():
        tenant = Tenant(slug=slug, name=name, **settings)
        tenant.full_clean()
        tenant._history_user = actor.user
        tenant.save()
        record(tenant=tenant, actor=actor, action="tenant.created", obj=tenant)
        record(tenant=None, actor=actor, action="tenant.created", obj=tenant, data={"slug": slug})
        if first_operator is not None:
            grant_membership(
                user=first_operator, tenant=tenant, kind=Membership.Kind.OPERATOR, actor=actor
            )
    return tenant


def update_tenant_settings(*, tenant: Tenant, actor: Actor, changes: dict) -> Tenant:
    """Change a tenant's capacity, budget or retention.

    Raises ValidationError on invalid values.
    """
    with locking.atomic():
        lock_chain(tenant.pk)
        tenant = lock(Tenant.objects.all(), Level.TENANT).get(pk=tenant.pk)
        diff = apply_changes(tenant, changes, allowed=TENANT_SETTINGS)
        if not diff:
            return tenant
        tenant.full_clean()
        tenant._history_user = actor.user
        tenant.save(update_fields=list(diff))
        record(tenant=tenant, actor=actor, action="tenant.updated", obj=tenant, data=diff)
    return tenant


def grant_membership(*, user, tenant: Tenant, kind: str, actor: Actor) -> Membership:
    """Give a user a kind of membership in a tenant (idempotent)."""
    with locking.atomic():
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
    with locking.atomic():
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
    with locking.atomic():
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
    *,
    tenant: Tenant,
    reference: str,
    kind: str,
    name: str,
    actor: Actor,
    email: str = "",
    data=None,
) -> ClientRecord:
    """Create or update one client record of a tenant.

    Raises ValidationError (on the field) when data is not a JSON object, or a field is not
    safe JSON (a NUL character, a lone surrogate, ...).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValidationError({"data": "A client record's data is a JSON object."})
    fields = {"reference": reference, "kind": kind, "name": name, "email": email}
    try:
        safe_json.check({**fields, "data": data})
    except safe_json.UnsafeJSON as exc:
        field, _, inner = exc.path.partition(".")
        error = safe_json.UnsafeJSON(exc.message, inner)
        raise ValidationError({field: safe_json.validation_error(error)}) from None
    with locking.atomic():
        record_obj, created = ClientRecord.objects.update_or_create(
            tenant=tenant,
            reference=reference,
            defaults={"kind": kind, "name": name, "email": email, "data": data},
        )
        record(
            tenant=tenant,
            actor=actor,
            action="client_record.created" if created else "client_record.updated",
            obj=record_obj,
            data={"reference": reference, "kind": kind},
        )
    return record_obj


def delete_client_record(*, client_record: ClientRecord, actor: Actor) -> None:
    """Remove a client record; the audit trail keeps its reference."""
    with locking.atomic():
        record(
            tenant=client_record.tenant_id,
            actor=actor,
            action="client_record.deleted",
            obj=client_record,
            data={"reference": client_record.reference, "kind": client_record.kind},
        )
        client_record.delete()


KEY_PREFIX = "adk_"


def _hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is safe; no stretching needed.
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    *,
    tenant: Tenant,
    name: str,
    actor: Actor,
    role_slugs: list[str] | None = None,
    rate_limit_per_minute: int = 120,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never stored or shown again.

    Raises ValidationError for an empty name or a role the tenant does not have.
    """
    role_slugs = sorted(set(role_slugs or []))
    if not name.strip():
        raise ValidationError("Give the key a name.")
    unknown = set(role_slugs) - set(
        tenant.roles.filter(slug__in=role_slugs).values_list("slug", flat=True)
    )
    if unknown:
        raise ValidationError(f"No such role in {tenant.slug}: {', '.join(sorted(unknown))}.")
    prefix = secrets.token_hex(4)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with locking.atomic():
        api_key = ApiKey(
            tenant=tenant,
            name=name.strip(),
            prefix=prefix,
            key_hash=_hash_key(key),
            role_slugs=role_slugs,
            rate_limit_per_minute=rate_limit_per_minute,
            created_by=actor.user,
        )
        api_key._history_user = actor.user
        api_key.save()
        record(
            tenant=tenant,
            actor=actor,
            action="api_key.created",
            obj=api_key,
            data={"name": api_key.name, "prefix": prefix, "roles": role_slugs},
        )
    return api_key, key


def revoke_api_key(*, api_key: ApiKey, actor: Actor) -> ApiKey:
    """Stop a key from working (idempotent)."""
    with locking.atomic():
        api_key = lock(ApiKey.objects.all(), Level.ROW).get(pk=api_key.pk)
        if api_key.revoked_at is None:
            api_key.revoked_at = timezone.now()
            api_key._history_user = actor.user
            api_key.save(update_fields=["revoked_at"])
            record(
                tenant=api_key.tenant_id,
                actor=actor,
                action="api_key.revoked",
                obj=api_key,
                data={"prefix": api_key.prefix},
            )
    return api_key


def authenticate_api_key(key: str) -> ApiKey | None:
    """The active key matching `key`, or None. Marks it used."""
    if not key.startswith(KEY_PREFIX) or key.count("_") < 2:
        return None
    prefix = key[len(KEY_PREFIX) :].split("_", 1)[0]
    with rls.lookup_context(api_key_prefix=prefix):
        api_key = ApiKey.objects.filter(prefix=prefix).first()
    if api_key is None or not hmac.compare_digest(api_key.key_hash, _hash_key(key)):
        return None
    if not api_key.is_active:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > timedelta(seconds=60):
        with rls.tenant_context(api_key.tenant_id):
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key


def count_api_request(*, api_key: ApiKey) -> tuple[bool, int]:
    """Count one request in the key's current minute.

    Returns (allowed, seconds until the window resets).
    """
    now = timezone.now()
    window_start = now.replace(second=0, microsecond=0)
    retry_after = 60 - now.second
    with rls.tenant_context(api_key.tenant_id):
        updated = ApiRateWindow.objects.filter(api_key=api_key, window_start=window_start).update(
            count=F("count") + 1
        )
        if not updated:
            try:
                with locking.atomic():
                    ApiRateWindow.objects.create(
                        api_key=api_key, window_start=window_start, count=1
                    )
            except IntegrityError:
                ApiRateWindow.objects.filter(api_key=api_key, window_start=window_start).update(
                    count=F("count") + 1
                )
        count = ApiRateWindow.objects.get(api_key=api_key, window_start=window_start).count
        ApiRateWindow.objects.filter(api_key=api_key, window_start__lt=window_start).delete()
    return count <= api_key.rate_limit_per_minute, retry_after


def grant_platform_staff(*, user, actor: Actor, note: str = "") -> PlatformStaff:
    """Flag a user as platform staff (idempotent). It shows no tenant data by itself."""
    with rls.platform_context():
        staff, created = PlatformStaff.objects.get_or_create(user=user, defaults={"note": note})
        if created:
            record(
                tenant=None,
                actor=actor,
                action="platform_staff.granted",
                obj=staff,
                data={"user": user.get_username(), "note": note},
            )
    return staff


def open_break_glass(*, user, tenant: Tenant, reason: str, minutes: int = 60) -> BreakGlassGrant:
    """Give a platform-staff member read access to one tenant for a while, with a reason.

    Raises PermissionDenied for a user who is not platform staff, ValidationError for a
    missing reason or a duration outside 5 minutes to 8 hours.
    """
    reason = (reason or "").strip()
    if len(reason) < 10:
        raise ValidationError("Say why you need access (at least 10 characters).")
    if not 5 <= minutes <= 480:
        raise ValidationError("Access lasts from 5 minutes to 8 hours.")
    actor = Actor.for_user(user)
    with rls.platform_context():
        if not PlatformStaff.objects.filter(user=user).exists():
            raise PermissionDenied("Only platform staff may open break-glass access.")
        now = timezone.now()
        grant = BreakGlassGrant.objects.create(
            user=user,
            tenant=tenant,
            reason=reason,
            started_at=now,
            expires_at=now + timedelta(minutes=minutes),
        )
        data = {"user": user.get_username(), "tenant": tenant.slug, "minutes": minutes}
        record(
            tenant=tenant,
            actor=actor,
            action="break_glass.opened",
            obj=grant,
            reason=reason,
            data=data,
        )
        record(
            tenant=None,
            actor=actor,
            action="break_glass.opened",
            obj=grant,
            reason=reason,
            data=data,
        )
    return grant


def close_break_glass(*, grant: BreakGlassGrant, actor: Actor) -> BreakGlassGrant:
    """End break-glass access before it expires (idempotent)."""
    with rls.platform_context():
        grant = lock(BreakGlassGrant.objects.all(), Level.ROW).get(pk=grant.pk)
        now = timezone.now()
        if grant.ended_at is None and grant.expires_at > now:
            grant.ended_at = now
            grant.save(update_fields=["ended_at"])
            record(tenant=grant.tenant_id, actor=actor, action="break_glass.closed", obj=grant)
    return grant


def record_break_glass_view(*, user, grant_ids: list[int], method: str, path: str) -> None:
    """Audit one page a platform-staff member viewed under break-glass access."""
    for grant in BreakGlassGrant.objects.filter(pk__in=grant_ids):
        record(
            tenant=grant.tenant_id,
            actor=Actor.for_user(user),
            action="break_glass.viewed",
            obj=grant,
            reason=grant.reason,
            data={"method": method, "path": path[:500]},
        )


# --- people's accounts: passwords, and administrators' changes to users ---------------------
#
# A tenant's member's account is part of that tenant's record: whoever changes it, it is an
# event on each of their tenants' chains (the platform chain for anyone else's account).


class PasswordResetRefused(PermissionDenied):
    """Someone set a tenant member's password without a break-glass grant on each of the
    member's tenants (the refusal is recorded)."""


USER_FIELDS = {
    "username",
    "first_name",
    "last_name",
    "email",
    "is_active",
    "is_staff",
    "is_superuser",
    "last_login",
    "date_joined",
}
USER_RELATIONS = {"groups", "user_permissions"}


def change_own_password(*, user, password: str | None) -> None:
    """Set the user's own password (None: password sign-in off), recorded as such."""
    chains = user_chains(user)
    with locking.tracked(), chains_context(chains):
        _set_password(user, password)
        for chain in chains:
            record(
                tenant=chain,
                actor=Actor.for_user(user),
                action="auth.password_changed",
                obj=user,
                data={"user": user.get_username(), "usable": password is not None},
            )


def reset_password(
    *,
    user,
    password: str | None,
    actor: Actor,
    via: str,
    grant_ids: list[int] | None = None,
) -> dict[int, BreakGlassGrant]:
    """Set another person's password (None: password sign-in off) and return the grants
    that allowed it, by tenant id.

    A tenant member's password is theirs alone: anyone else (superusers included) needs an
    open break-glass grant on each tenant the member belongs to, held by the actor, or, from
    a command, named in `grant_ids`. Setting your own password is `change_own_password`.

    Raises PasswordResetRefused when a grant is missing, after recording the refusal on each
    of the member's tenants' chains; the password is not changed.
    """
    if actor.user is not None and actor.user.pk == user.pk:
        change_own_password(user=user, password=password)
        return {}
    chains = user_chains(user)
    tenant_ids = [chain for chain in chains if chain is not None]
    data = {"user": user.get_username(), "via": via}
    with locking.tracked(), chains_context(chains):
        grants = _open_grants(tenant_ids=tenant_ids, actor=actor, grant_ids=grant_ids)
        refused = any(tenant_id not in grants for tenant_id in tenant_ids)
        if not refused:
            _set_password(user, password)
        for chain in chains:
            grant = grants.get(chain)
            event_data = {**data, "grant": grant.pk if grant else None}
            if grant is not None:
                event_data["grant_holder"] = grant.user.get_username()
            if not refused:
                event_data["usable"] = password is not None
            record(
                tenant=chain,
                actor=actor,
                action="auth.password_reset_refused" if refused else "auth.password_reset",
                obj=user,
                reason=grant.reason if grant is not None and not refused else "",
                data=event_data,
            )
    if refused:
        raise PasswordResetRefused(
            f"{user.get_username()} is a member of a client tenant: only they may set their "
            "password, or platform staff holding an open break-glass grant on each of their "
            "tenants. Nothing was changed; the attempt is on the tenant's audit trail."
        )
    return grants


def _open_grants(
    *, tenant_ids: list[int], actor: Actor, grant_ids: list[int] | None
) -> dict[int, BreakGlassGrant]:
    """{tenant id: grant} of the open grants of platform staff on these tenants that the
    actor holds (or that `grant_ids` names), locked until the end of the transaction so
    none is closed while it is relied on."""
    if not tenant_ids or (grant_ids is None and actor.user is None):
        return {}
    now = timezone.now()
    grants = BreakGlassGrant.objects.filter(
        tenant_id__in=tenant_ids,
        ended_at__isnull=True,
        started_at__lte=now,
        expires_at__gt=now,
        user__is_active=True,
        user__platform_staff__isnull=False,
    )
    if grant_ids is None:
        grants = grants.filter(user_id=actor.user.pk)
    else:
        grants = grants.filter(pk__in=grant_ids)
    locked = lock(grants.select_related("user").order_by("pk"), Level.ROW, of=("self",))
    return {grant.tenant_id: grant for grant in locked}


def _set_password(user, password: str | None) -> None:
    if password is None:
        user.set_unusable_password()
    else:
        user.set_password(password)
    user.save(update_fields=["password"])


def add_user(*, user, actor: Actor) -> None:
    """Save an account an administrator made (it belongs to no tenant yet), on the record."""
    with locking.tracked(), rls.platform_context():
        user.save()
        record(
            tenant=None,
            actor=actor,
            action="auth.user_created",
            obj=user,
            data={
                "user": user.get_username(),
                "is_staff": user.is_staff,
                "is_superuser": user.is_superuser,
                "usable_password": user.has_usable_password(),
            },
        )


def update_user(*, user, actor: Actor, changes: dict[str, Any]) -> dict[str, list]:
    """Apply an administrator's changes to an account (its fields, groups and permissions;
    never its password) and record them on the chains of the user's tenants.

    Raises ValueError for anything else (a programming error, not user input).
    """
    User = get_user_model()
    changes = dict(changes)
    relations = {name: changes.pop(name) for name in USER_RELATIONS & set(changes)}
    chains = user_chains(user)
    with locking.tracked(), chains_context(chains):
        saved = lock(User.objects.all(), Level.ROW).get(pk=user.pk)
        diff = apply_changes(saved, changes, allowed=USER_FIELDS)
        for name, values in relations.items():
            before = sorted(_relation_names(getattr(saved, name).all()))
            after = sorted(_relation_names(values))
            if before != after:
                diff[name] = [before, after]
        if not diff:
            return diff
        fields = sorted(set(diff) - USER_RELATIONS)
        if fields:
            saved.save(update_fields=fields)
        for name, values in relations.items():
            if name in diff:
                getattr(saved, name).set(values)
        for chain in chains:
            record(
                tenant=chain,
                actor=actor,
                action="auth.user_changed",
                obj=saved,
                data={"user": saved.get_username(), "changes": diff},
            )
    return diff


def _relation_names(objects) -> list[str]:
    names = []
    for obj in objects:
        content_type = getattr(obj, "content_type", None)  # a permission: "app.codename"
        names.append(f"{content_type.app_label}.{obj.codename}" if content_type else str(obj))
    return names


def delete_user(*, user, actor: Actor) -> None:
    """Delete an account that belongs to no tenant, on the platform's record.

    Raises PermissionDenied for a tenant's member: their tenants' operators revoke their
    memberships first (or an administrator makes the account inactive).
    """
    if membership_tenant_ids(user):
        raise PermissionDenied(
            f"{user.get_username()} is a member of a client tenant: their tenants' operators "
            "remove their memberships first."
        )
    with locking.atomic():
        with rls.platform_context():
            record(
                tenant=None,
                actor=actor,
                action="auth.user_deleted",
                obj=user,
                data={"user": user.get_username()},
            )
        # In the caller's own context: rows of tenants it cannot see are not touched.
        user.delete()


# --- secrets at rest (tenants.encryption) ----------------------------------------------------

MAX_PROVIDER_KEY_LENGTH = 500


def _clean_provider_key(api_key: str) -> str:
    api_key = (api_key or "").strip()
    if not api_key:
        raise ValidationError({"provider_api_key": "Enter the API key, or clear it instead."})
    if len(api_key) > MAX_PROVIDER_KEY_LENGTH:
        raise ValidationError(
            {"provider_api_key": f"An API key is at most {MAX_PROVIDER_KEY_LENGTH} characters."}
        )
    if not api_key.isascii() or any(c.isspace() or not c.isprintable() for c in api_key):
        # It is sent in an Authorization header: printable ASCII without spaces only.
        raise ValidationError(
            {"provider_api_key": "An API key has no spaces, control or non-ASCII characters."}
        )
    return api_key


def _save_provider_key(*, tenant: Tenant, actor: Actor, encrypted: str, action: str) -> Tenant:
    with locking.atomic():
        lock_chain(tenant.pk)
        tenant = lock(Tenant.objects.all(), Level.TENANT).get(pk=tenant.pk)
        if not encrypted and not tenant.provider_api_key_encrypted:
            return tenant  # nothing to clear
        tenant.provider_api_key_encrypted = encrypted
        tenant.provider_api_key_changed_at = timezone.now()
        tenant._history_user = actor.user  # history keeps when, never the key
        tenant.save(update_fields=["provider_api_key_encrypted", "provider_api_key_changed_at"])
        record(tenant=tenant, actor=actor, action=action, obj=tenant)
    return tenant


def set_provider_api_key(*, tenant: Tenant, actor: Actor, api_key: str) -> Tenant:
    """Give the tenant its own model provider API key (stored encrypted, never shown again);
    the tenant's model calls are made with it from now on.

    Raises ValidationError for an empty or malformed key, or without a key to encrypt it
    with (nothing is saved then).
    """
    api_key = _clean_provider_key(api_key)
    try:
        encrypted = encryption.seal(api_key, tenant_id=tenant.pk, purpose=PROVIDER_KEY_PURPOSE)
    except encryption.SecretsError as exc:
        raise ValidationError({"provider_api_key": str(exc)}) from None
    return _save_provider_key(
        tenant=tenant, actor=actor, encrypted=encrypted, action="tenant.provider_key_set"
    )


def clear_provider_api_key(*, tenant: Tenant, actor: Actor) -> Tenant:
    """Remove the tenant's model provider API key (idempotent); its model calls then use the
    platform's key (settings.OPENAI_API_KEY)."""
    return _save_provider_key(
        tenant=tenant, actor=actor, encrypted="", action="tenant.provider_key_cleared"
    )


def sealed_fields() -> list[tuple[type[models.Model], str]]:
    """Every (model, field) that holds encrypted secrets (settings.DESK_SECRETS_FIELDS)."""
    found = []
    for dotted in settings.DESK_SECRETS_FIELDS:
        label, field = dotted.rsplit(".", 1)
        found.append((django_apps.get_model(label), field))
    return found


def _stored(model: type[models.Model], field: str):
    return model.objects.exclude(**{field: ""}).order_by("pk")


@dataclass
class SecretsCensus:
    """How the stored secrets stand against the keys: (model label, row id) of those the
    newest key does not open, split by whether an older key does."""

    total: int = 0
    need_old_key: list[tuple[str, int]] = field(default_factory=list)
    unreadable: list[tuple[str, int]] = field(default_factory=list)


def secrets_census() -> SecretsCensus:
    """Check every stored secret against the keys (a platform read; never decrypts one
    into anything kept).

    Raises tenants.encryption.SecretKeyMissing without a key.
    """
    encryption.keys()
    census = SecretsCensus()
    for model, name in sealed_fields():
        with rls.platform_context():
            for pk, value in _stored(model, name).values_list("pk", name).iterator():
                census.total += 1
                if encryption.opens_with_newest_key(value):
                    continue
                where = (model._meta.label, pk)
                if encryption.opens_with_any_key(value):
                    census.need_old_key.append(where)
                else:
                    census.unreadable.append(where)
    return census


def reencrypt_secrets(*, actor: Actor, batch_size: int | None = None) -> dict[str, int]:
    """Re-encrypt with the newest key every stored secret an older key still opens, in
    batches (a transaction each, its rows locked), and record it on the platform's chain.
    Returns how many were re-encrypted, and how many no key opens (left as they are).

    Raises tenants.encryption.SecretKeyMissing without a key (nothing is changed).
    """
    encryption.keys()
    batch_size = batch_size or settings.DESK_SECRETS_REENCRYPT_BATCH
    counts = {"reencrypted": 0, "unreadable": 0}
    for model, name in sealed_fields():
        level = Level.TENANT if model is Tenant else Level.ROW
        last_pk = 0
        while True:
            with locking.tracked(), rls.platform_context():
                rows = list(
                    lock(_stored(model, name).filter(pk__gt=last_pk), level).values_list(
                        "pk", name
                    )[:batch_size]
                )
                for pk, value in rows:
                    if encryption.opens_with_newest_key(value):
                        continue
                    try:
                        resealed = encryption.reseal(value)
                    except encryption.SecretUnreadable:
                        counts["unreadable"] += 1
                        continue
                    # update(): a new ciphertext of the same secret is no change to history.
                    model.objects.filter(pk=pk).update(**{name: resealed})
                    counts["reencrypted"] += 1
            if len(rows) < batch_size:
                break
            last_pk = rows[-1][0]
    with rls.platform_context():
        record(tenant=None, actor=actor, action="secrets.reencrypted", data=counts)
    return counts


def add_secrets_key(*, actor: Actor) -> int:
    """Put a new key first in the key file, on the platform's record; return how many keys
    it holds. Stored secrets still open with the older keys until re-encrypted.

    Raises tenants.encryption.SecretsError for keys from the environment or without a key file.
    """
    count = encryption.add_key()
    with rls.platform_context():
        record(tenant=None, actor=actor, action="secrets.key_added", data={"keys": count})
    return count


def retire_old_secrets_keys(*, actor: Actor) -> int:
    """Remove every key but the newest from the key file, on the platform's record; return
    how many were removed.

    Raises tenants.encryption.SecretsError (nothing removed) while a stored secret does not
    open with the newest key, for keys from the environment or without a key file.
    """
    encryption.writable_key_file("remove")
    census = secrets_census()
    if census.need_old_key or census.unreadable:
        raise encryption.SecretsError(
            f"{len(census.need_old_key)} stored secret(s) still need an old key and "
            f"{len(census.unreadable)} open with no key at all: "
            + ", ".join(f"{label} {pk}" for label, pk in census.need_old_key + census.unreadable)
            + ". Re-encrypt first (`manage.py secrets_key --reencrypt`); set a new secret "
            "where none opens. No key was removed."
        )
    removed = encryption.retire_old_keys()
    if removed:
        with rls.platform_context():
            record(
                tenant=None, actor=actor, action="secrets.keys_retired", data={"removed": removed}
            )
    return removed
