"""Writes to roles and their versions: create, draft, publish, activate (roll back)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Max
from django.utils import timezone

from audit.services import Actor, apply_changes, record
from roles.models import Role, RoleVersion
from roles.workflow import validate_definition, validate_json_schema
from tenants import locking
from tenants.locking import Level, lock
from tenants.models import Tenant


def create_role(
    *,
    tenant: Tenant,
    slug: str,
    name: str,
    actor: Actor,
    input_schema: dict | None = None,
    **fields,
) -> Role:
    """Create a role (an AI employee's job description) in a tenant.

    Raises ValidationError on invalid fields or input schema.
    """
    with locking.atomic():
        role = Role(tenant=tenant, slug=slug, name=name, input_schema=input_schema or {}, **fields)
        validate_json_schema(role.input_schema, label="The input schema")
        role.full_clean()
        role._history_user = actor.user
        role.save()
        record(tenant=tenant, actor=actor, action="role.created", obj=role)
    return role


ROLE_FIELDS = {
    "name",
    "purpose",
    "input_schema",
    "outputs",
    "target_turnaround_minutes",
    "escalation_conditions",
    "allowed_tools",
    "allowed_data_kinds",
}


def update_role(*, role: Role, actor: Actor, changes: dict[str, Any]) -> Role:
    """Change a role's job description (not its versions: see create_role_version).

    Raises ValidationError on invalid values or input schema.
    """
    with locking.atomic():
        role = lock(Role.objects.all(), Level.ROW).get(pk=role.pk)
        diff = apply_changes(role, changes, allowed=ROLE_FIELDS)
        if not diff:
            return role
        validate_json_schema(role.input_schema, label="The input schema")
        role.full_clean()
        role._history_user = actor.user
        role.save(update_fields=list(diff))
        record(tenant=role.tenant_id, actor=actor, action="role.updated", obj=role, data=diff)
    return role


def set_canary(*, role: Role, version: RoleVersion | None, percent: int, actor: Actor) -> Role:
    """Send a share of new runs to another published version (None or 0 % stops it).

    Raises ValidationError for a draft, another role's version, the active version, or a
    share outside 0-100.
    """
    with locking.atomic():
        role = lock(Role.objects.all(), Level.ROW).get(pk=role.pk)
        if version is None or percent == 0:
            version, percent = None, 0
        else:
            version = RoleVersion.objects.get(pk=version.pk)
            if version.role_id != role.pk or not version.is_published:
                raise ValidationError("The canary must be a published version of this role.")
            if version.pk == role.active_version_id:
                raise ValidationError("The canary must differ from the active version.")
            if not 0 < percent <= 100:
                raise ValidationError("The canary share is a percentage from 1 to 100.")
        role.canary_version = version
        role.canary_percent = percent
        role._history_user = actor.user
        role.save(update_fields=["canary_version", "canary_percent"])
        record(
            tenant=role.tenant_id,
            actor=actor,
            action="role.canary_set",
            obj=role,
            data={"version": version.number if version else None, "percent": percent},
        )
    return role


def create_role_version(
    *, role: Role, definition: dict[str, Any], actor: Actor, change_note: str = ""
) -> RoleVersion:
    """Save a new draft version of a role's workflow, numbered after the last one.

    Raises ValidationError when the definition is invalid.
    """
    validate_definition(definition, allowed_tools=list(role.allowed_tools or []))
    with locking.atomic():
        lock(Role.objects.filter(pk=role.pk), Level.ROW).first()
        last = role.versions.aggregate(last=Max("number"))["last"] or 0
        version = RoleVersion(
            role=role,
            tenant_id=role.tenant_id,
            number=last + 1,
            definition=definition,
            change_note=change_note,
            created_by=actor.user,
        )
        version._history_user = actor.user
        version.save()
        record(
            tenant=role.tenant_id,
            actor=actor,
            action="role_version.created",
            obj=version,
            data={"role": role.slug, "number": version.number, "change_note": change_note},
        )
    return version


def publish_role_version(
    *, version: RoleVersion, actor: Actor, activate: bool = True
) -> RoleVersion:
    """Freeze a draft version and (by default) make it the one new runs use.

    Raises ValidationError when the version is already published, invalid, or the actor
    wrote it (four eyes).
    """
    with locking.atomic():
        version = lock(RoleVersion.objects.all(), Level.ROW).get(pk=version.pk)
        if version.is_published:
            raise ValidationError("This version is already published.")
        if actor.user is not None and version.created_by_id == actor.user.pk:
            # Four eyes: whoever wrote a version does not put it in front of clients alone.
            raise ValidationError("Another operator must publish the version you wrote.")
        validate_definition(
            version.definition, allowed_tools=list(version.role.allowed_tools or [])
        )
        version.status = RoleVersion.Status.PUBLISHED
        version.published_by = actor.user
        version.published_at = timezone.now()
        version._history_user = actor.user
        version.save(update_fields=["status", "published_by", "published_at"])
        record(
            tenant=version.tenant_id,
            actor=actor,
            action="role_version.published",
            obj=version,
            data={"role": version.role.slug, "number": version.number},
        )
        if activate:
            activate_role_version(version=version, actor=actor)
    return version


def activate_role_version(*, version: RoleVersion, actor: Actor) -> Role:
    """Make a published version the active one (also how a rollback is done).

    Raises ValidationError for a draft version.
    """
    with locking.atomic():
        role = lock(Role.objects.all(), Level.ROW).get(pk=version.role_id)
        if not version.is_published:
            raise ValidationError("Only a published version can be activated.")
        previous = role.active_version
        role.active_version = version
        if role.canary_version_id == version.pk:
            role.canary_version = None
            role.canary_percent = 0
        role._history_user = actor.user
        role.save()
        record(
            tenant=role.tenant_id,
            actor=actor,
            action="role_version.activated",
            obj=version,
            data={
                "role": role.slug,
                "number": version.number,
                "previous_number": previous.number if previous else None,
            },
        )
    return role
