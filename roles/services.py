"""Writes to roles and their versions: create, draft, request and decide publication,
activate (roll back), canary.

The bundle is the version: a draft is edited freely by its authors; publishing it needs a
second operator of the tenant who did not write it, for the exact bundle (by digest) the
request was for, and a regression gate that passes (or a written override both people
stood behind). A published version never changes; what runs use changes only through
`activate_role_version` and `set_canary`, each audited.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Max
from django.utils import timezone

from audit.services import Actor, apply_changes, record
from roles.models import Publication, Role, RoleVersion
from roles.workflow import pin_tools, validate_definition
from tenants import locking
from tenants.locking import Level, lock
from tenants.models import Membership, Tenant


def _is_operator(user, tenant_id: int) -> bool:
    return (
        user is not None
        and user.is_active
        and Membership.objects.filter(
            tenant_id=tenant_id, user=user, kind=Membership.Kind.OPERATOR
        ).exists()
    )


def _check_operator(actor: Actor, tenant_id: int, *, doing: str) -> None:
    """A person must operate the tenant; a system actor (a migration, seed_demo, a shell
    command, all run with the platform's own access) passes."""
    if actor.user is not None and not _is_operator(actor.user, tenant_id):
        raise ValidationError(f"Only the tenant's operators {doing}.", code="forbidden")


# --- roles -----------------------------------------------------------------------------------


def create_role(*, tenant: Tenant, slug: str, name: str, actor: Actor, purpose: str = "") -> Role:
    """Create a role (an AI employee's job) in a tenant; its bundle comes with a version.

    Raises ValidationError on invalid fields.
    """
    _check_operator(actor, tenant.pk, doing="create roles")
    with locking.atomic():
        role = Role(tenant=tenant, slug=slug, name=name, purpose=purpose)
        role.full_clean()
        role._history_user = actor.user
        role.save()
        record(tenant=tenant, actor=actor, action="role.created", obj=role)
    return role


ROLE_FIELDS = {"name", "purpose"}


def update_role(*, role: Role, actor: Actor, changes: dict[str, Any]) -> Role:
    """Rename a role or change its purpose (nothing that decides behaviour: see versions).

    Raises ValidationError on invalid values.
    """
    _check_operator(actor, role.tenant_id, doing="change roles")
    with locking.atomic():
        role = lock(Role.objects.all(), Level.ROW).get(pk=role.pk)
        diff = apply_changes(role, changes, allowed=ROLE_FIELDS)
        if not diff:
            return role
        role.full_clean()
        role._history_user = actor.user
        role.save(update_fields=list(diff))
        record(tenant=role.tenant_id, actor=actor, action="role.updated", obj=role, data=diff)
    return role


# --- drafts ----------------------------------------------------------------------------------


def prepare_bundle(*, tenant_id: int, definition: Any) -> dict[str, Any]:
    """The bundle a draft stores: defaults filled, allowed tools pinned as registered now,
    approver groups checked against the tenant's.

    Raises ValidationError listing every problem.
    """
    if isinstance(definition, dict) and isinstance(definition.get("allowed_tools", []), list):
        definition = pin_tools(definition)
    validate_definition(definition)
    from approvals.models import ReviewerGroup

    named = {g for rule in definition["approval_rules"] for g in rule.get("approver_groups", [])}
    known = set(
        ReviewerGroup.objects.filter(tenant_id=tenant_id, name__in=named).values_list(
            "name", flat=True
        )
    )
    if named - known:
        raise ValidationError(
            f"Approval rules name groups the tenant does not have: "
            f"{', '.join(sorted(named - known))}."
        )
    return definition


def create_role_version(
    *, role: Role, definition: dict[str, Any], actor: Actor, change_note: str = ""
) -> RoleVersion:
    """Save a new draft version of a role's bundle, numbered after the last one.

    Raises ValidationError when the bundle is invalid or the actor does not operate the
    tenant.
    """
    _check_operator(actor, role.tenant_id, doing="write role versions")
    bundle = prepare_bundle(tenant_id=role.tenant_id, definition=definition)
    with locking.atomic():
        lock(Role.objects.filter(pk=role.pk), Level.ROW).first()
        last = role.versions.aggregate(last=Max("number"))["last"] or 0
        version = RoleVersion(
            role=role,
            tenant_id=role.tenant_id,
            number=last + 1,
            definition=bundle,
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
            data={
                "role": role.slug,
                "number": version.number,
                "change_note": change_note,
                "digest": version.digest,
            },
        )
    return version


def update_draft(
    *, version: RoleVersion, actor: Actor, definition: dict[str, Any], change_note: str
) -> RoleVersion:
    """Change a draft's bundle or note. A pending publication lapses: what it asked to
    publish is no longer what the draft holds.

    Raises ValidationError for a published version or an invalid bundle.
    """
    _check_operator(actor, version.tenant_id, doing="write role versions")
    bundle = prepare_bundle(tenant_id=version.tenant_id, definition=definition)
    with locking.atomic():
        pending = list(
            lock(Publication.objects.filter(version=version, status="pending"), Level.ROW)
        )
        version = lock(RoleVersion.objects.select_related("role"), Level.ROW).get(pk=version.pk)
        if version.is_published:
            raise ValidationError("A published version never changes: write a new draft.")
        before = version.digest
        if bundle == version.definition and change_note == version.change_note:
            return version
        version.definition = bundle
        version.change_note = change_note
        version._history_user = actor.user
        version.save(update_fields=["definition", "change_note"])
        for publication in pending:
            publication.status = Publication.Status.LAPSED
            publication.decided_at = timezone.now()
            publication.save(update_fields=["status", "decided_at"])
        record(
            tenant=version.tenant_id,
            actor=actor,
            action="role_version.edited",
            obj=version,
            data={
                "role": version.role.slug,
                "number": version.number,
                "digest_before": before,
                "digest": version.digest,
                "lapsed_publications": [p.pk for p in pending],
            },
        )
    return version


def draft_authors(version: RoleVersion) -> set[int]:
    """Everyone who wrote any of the draft: its creator and every editor in its history."""
    authors = set(
        version.history.exclude(history_user__isnull=True).values_list("history_user_id", flat=True)
    )
    if version.created_by_id:
        authors.add(version.created_by_id)
    return authors


# --- publication -----------------------------------------------------------------------------


def request_publication(
    *, version: RoleVersion, actor: Actor, note: str = "", override_reason: str = ""
) -> Publication:
    """Ask a second operator to publish a draft, with the regression gate's report.

    Raises ValidationError when the actor is not a person operating the tenant, the version
    is published or already under review, the bundle is invalid, or the gate refuses and
    no override reason is given.
    """
    from roles.golden import regression_gate

    if actor.user is None or not _is_operator(actor.user, version.tenant_id):
        raise ValidationError("Only an operator of the tenant asks for a publication.")
    override_reason = (override_reason or "").strip()
    prepare_bundle(tenant_id=version.tenant_id, definition=version.definition)
    with locking.atomic():
        version = lock(RoleVersion.objects.select_related("role"), Level.ROW).get(pk=version.pk)
        if version.is_published:
            raise ValidationError("This version is already published.")
        if version.publications.filter(status=Publication.Status.PENDING).exists():
            raise ValidationError("This version already waits for a second operator.")
        gate = regression_gate(version)
        if not gate.ok and not override_reason:
            raise ValidationError(
                "The regression gate refuses this version: " + " ".join(gate.problems),
                code="gate",
            )
        publication = Publication.objects.create(
            tenant_id=version.tenant_id,
            version=version,
            digest=version.digest,
            gate=gate.as_dict(),
            override_reason=override_reason if not gate.ok else "",
            requested_by=actor.user,
            note=note,
        )
        record(
            tenant=version.tenant_id,
            actor=actor,
            action="role_version.publication_requested",
            obj=publication,
            reason=override_reason or note,
            data={
                "role": version.role.slug,
                "number": version.number,
                "digest": publication.digest,
                "gate_ok": gate.ok,
                "gate_problems": gate.problems,
                "override": publication.is_override,
            },
        )
    return publication


def approve_publication(*, publication: Publication, actor: Actor, note: str = "") -> RoleVersion:
    """Publish the draft as the second operator: the version becomes published (ready);
    activating it or starting a canary is the next, confirmed step.

    Raises ValidationError when the approver is not a person operating the tenant, asked
    for the publication or wrote any of the draft (four eyes), the publication is no longer
    pending, the bundle changed since it was asked for, or the gate no longer passes
    (unless the publication is an override, which this approval then stands behind).
    """
    from roles.golden import regression_gate

    user = actor.user
    with locking.atomic():
        publication = lock(Publication.objects.all(), Level.ROW).get(pk=publication.pk)
        version = lock(RoleVersion.objects.select_related("role"), Level.ROW).get(
            pk=publication.version_id
        )
        _check_decider(publication, user)
        if user.pk in draft_authors(version):
            raise ValidationError(
                "You wrote part of this draft: another operator must publish it.",
                code="four_eyes",
            )
        if version.is_published or version.digest != publication.digest:
            raise ValidationError(
                "The draft changed since publication was asked for: ask again.", code="stale"
            )
        if not publication.is_override:
            gate = regression_gate(version)
            if not gate.ok:
                raise ValidationError(
                    "The regression gate no longer passes: " + " ".join(gate.problems),
                    code="gate",
                )
        now = timezone.now()
        publication.status = Publication.Status.APPROVED
        publication.decided_by = user
        publication.decided_at = now
        publication.decision_note = note
        publication.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
        version.status = RoleVersion.Status.PUBLISHED
        version.published_by = user
        version.published_at = now
        version._history_user = user
        version.save(update_fields=["status", "published_by", "published_at"])
        record(
            tenant=version.tenant_id,
            actor=actor,
            action="role_version.published",
            obj=version,
            reason=note,
            data={
                "role": version.role.slug,
                "number": version.number,
                "publication": publication.pk,
                "requested_by": publication.requested_by_id,
                "digest": publication.digest,
                "override": publication.is_override,
                "override_reason": publication.override_reason,
            },
        )
    return version


def close_publication(*, publication: Publication, actor: Actor, note: str) -> Publication:
    """Reject a publication (another operator) or withdraw it (its requester).

    Raises ValidationError without a note, when not allowed, or when no longer pending.
    """
    note = (note or "").strip()
    if not note:
        raise ValidationError("Say why.", code="reason_required")
    with locking.atomic():
        publication = lock(Publication.objects.select_related("version__role"), Level.ROW).get(
            pk=publication.pk
        )
        user = actor.user
        withdrawn = user is not None and publication.requested_by_id == user.pk
        if withdrawn:
            if publication.status != Publication.Status.PENDING:
                raise ValidationError("This publication is no longer pending.")
        else:
            _check_decider(publication, user)
        publication.status = (
            Publication.Status.WITHDRAWN if withdrawn else Publication.Status.REJECTED
        )
        publication.decided_by = user
        publication.decided_at = timezone.now()
        publication.decision_note = note
        publication.save(update_fields=["status", "decided_by", "decided_at", "decision_note"])
        record(
            tenant=publication.tenant_id,
            actor=actor,
            action=f"role_version.publication_{publication.status}",
            obj=publication,
            reason=note,
            data={
                "role": publication.version.role.slug,
                "number": publication.version.number,
            },
        )
    return publication


def _check_decider(publication: Publication, user) -> None:
    if user is None or not _is_operator(user, publication.tenant_id):
        raise ValidationError("Only the tenant's operators decide publications.", code="forbidden")
    if publication.requested_by_id == user.pk:
        raise ValidationError(
            "A second operator must decide the publication you asked for.", code="four_eyes"
        )
    if publication.status != Publication.Status.PENDING:
        raise ValidationError("This publication is no longer pending.", code="not_pending")


# --- what runs use -------------------------------------------------------------------------


def set_canary(*, role: Role, version: RoleVersion | None, percent: int, actor: Actor) -> Role:
    """Send a share of new runs to another published version (None or 0 % stops it).

    Raises ValidationError for a draft, another role's version, the active version, a
    share outside 0-100, or an actor who does not operate the tenant.
    """
    _check_operator(actor, role.tenant_id, doing="change what runs use")
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
        previous = role.canary_version.number if role.canary_version_id else None
        role.canary_version = version
        role.canary_percent = percent
        role._history_user = actor.user
        role.save(update_fields=["canary_version", "canary_percent"])
        record(
            tenant=role.tenant_id,
            actor=actor,
            action="role.canary_set",
            obj=role,
            data={
                "version": version.number if version else None,
                "percent": percent,
                "previous_version": previous,
            },
        )
    return role


def activate_role_version(*, version: RoleVersion, actor: Actor) -> Role:
    """Make a published version the one every new run uses (also how a rollback is done).

    Raises ValidationError for a draft, or an actor who does not operate the tenant.
    """
    _check_operator(actor, version.tenant_id, doing="change what runs use")
    with locking.atomic():
        role = lock(Role.objects.all(), Level.ROW).get(pk=version.role_id)
        version = RoleVersion.objects.get(pk=version.pk)
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
                "rollback": previous is not None and previous.number > version.number,
            },
        )
    return role
