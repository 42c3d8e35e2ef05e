import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from audit.services import Actor
from roles.models import RoleVersion
from roles.services import (
    activate_role_version,
    create_role_version,
    publish_role_version,
    set_canary,
    update_role,
)
from tenants.services import grant_membership


@pytest.fixture
def second_operator(harbor):
    user = get_user_model().objects.create_user("ops2", password="pw-ops2-12345", is_staff=True)
    grant_membership(user=user, tenant=harbor, kind="operator", actor=Actor.system("t"))
    return user


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


def test_publish_activates_and_rollback_reactivates(intake_role, users, second_operator):
    actor = Actor.for_user(users["ops"])
    v1 = intake_role.active_version
    v2 = create_role_version(role=intake_role, definition=v1.definition, actor=actor)

    publish_role_version(version=v2, actor=Actor.for_user(second_operator))
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


def test_the_author_of_a_version_cannot_publish_it(intake_role, users):
    actor = Actor.for_user(users["ops"])
    draft = create_role_version(
        role=intake_role, definition=intake_role.active_version.definition, actor=actor
    )

    with pytest.raises(ValidationError, match="Another operator must publish"):
        publish_role_version(version=draft, actor=actor)

    draft.refresh_from_db()
    assert draft.status == RoleVersion.Status.DRAFT


def test_role_changes_are_audited_with_what_changed(intake_role, users):
    update_role(
        role=intake_role,
        actor=Actor.for_user(users["ops"]),
        changes={"target_turnaround_minutes": 30, "name": intake_role.name},
    )

    event = AuditEvent.objects.filter(action="role.updated").latest("pk")
    assert event.data == {"target_turnaround_minutes": [60, 30]}
    assert intake_role.history.first().history_user == users["ops"]


def test_an_invalid_input_schema_is_refused(intake_role, users):
    with pytest.raises(ValidationError):
        update_role(
            role=intake_role,
            actor=Actor.for_user(users["ops"]),
            changes={"input_schema": {"type": "strang"}},
        )

    intake_role.refresh_from_db()
    assert intake_role.input_schema["type"] == "object"


def test_a_canary_takes_a_share_of_new_runs(intake_role, users, second_operator):
    from desk.services import start_run
    from tests.conftest import INTAKE_INPUT

    v2 = create_role_version(
        role=intake_role,
        definition=intake_role.active_version.definition,
        actor=Actor.for_user(users["ops"]),
    )
    publish_role_version(version=v2, actor=Actor.for_user(second_operator), activate=False)

    set_canary(role=intake_role, version=v2, percent=100, actor=Actor.for_user(users["ops"]))
    run = start_run(
        tenant=intake_role.tenant,
        role=intake_role,
        input=INTAKE_INPUT,
        actor=Actor.system("t"),
        via="api",
    )

    assert run.role_version == v2
    with pytest.raises(ValidationError):
        set_canary(
            role=intake_role,
            version=intake_role.active_version,
            percent=10,
            actor=Actor.for_user(users["ops"]),
        )
