import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from audit.services import Actor
from roles.models import RoleVersion
from roles.services import activate_role_version, create_role_version, publish_role_version


def test_a_new_version_is_a_numbered_draft_with_history(intake_role, users):
    definition = {**intake_role.active_version.definition, "system": "Be brief."}

    version = create_role_version(
        role=intake_role,
        definition=definition,
        actor=Actor.for_user(users["ops"]),
        change_note="Shorter",
    )

    assert version.number == 2
    assert version.status == RoleVersion.Status.DRAFT
    assert version.history.first().history_user == users["ops"]
    intake_role.refresh_from_db()
    assert intake_role.active_version.number == 1


def test_an_invalid_definition_writes_nothing(intake_role, users):
    before = (RoleVersion.objects.count(), AuditEvent.objects.count())

    with pytest.raises(ValidationError):
        create_role_version(
            role=intake_role, definition={"steps": []}, actor=Actor.for_user(users["ops"])
        )

    assert (RoleVersion.objects.count(), AuditEvent.objects.count()) == before


def test_publish_activates_and_rollback_reactivates(intake_role, users):
    actor = Actor.for_user(users["ops"])
    v1 = intake_role.active_version
    v2 = create_role_version(role=intake_role, definition=v1.definition, actor=actor)

    publish_role_version(version=v2, actor=actor)
    intake_role.refresh_from_db()
    assert intake_role.active_version == v2

    activate_role_version(version=v1, actor=actor)
    intake_role.refresh_from_db()
    assert intake_role.active_version == v1
    rollback = (
        AuditEvent.objects.filter(tenant=intake_role.tenant, action="role_version.activated")
        .order_by("-seq")
        .first()
    )
    assert rollback.data == {"role": "intake-coordinator", "number": 1, "previous_number": 2}


def test_a_published_version_cannot_be_published_again_and_drafts_cannot_activate(
    intake_role, users
):
    actor = Actor.for_user(users["ops"])
    draft = create_role_version(
        role=intake_role, definition=intake_role.active_version.definition, actor=actor
    )

    with pytest.raises(ValidationError):
        publish_role_version(version=intake_role.active_version, actor=actor)
    with pytest.raises(ValidationError):
        activate_role_version(version=draft, actor=actor)
