"""Roles and versions in the admin: drafts are validated, publishing and rollback are actions."""

from __future__ import annotations

import copy
import json

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import Actor
from roles.models import Role, RoleVersion
from roles.services import create_role_version, publish_role_version

ADD_URL = reverse("admin:roles_roleversion_add")
CHANGELIST_URL = reverse("admin:roles_roleversion_changelist")


def broken_definition(role: Role) -> dict:
    definition = copy.deepcopy(role.active_version.definition)
    definition["steps"][1]["tool"] = "fax.send"
    definition["steps"][2]["prompt"] = "Dear {{ input.from_email "
    return definition


def test_an_invalid_definition_shows_every_problem_and_writes_nothing(client, users, intake_role):
    client.force_login(users["ops"])
    versions, events = RoleVersion.objects.count(), AuditEvent.objects.count()

    response = client.post(
        ADD_URL,
        {
            "role": intake_role.pk,
            "definition": json.dumps(broken_definition(intake_role)),
            "change_note": "Fax instead",
        },
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["definition"]
    assert errors == [
        "Step 'lookup': unknown tool 'fax.send'; known tools: email.send, records.get, "
        "records.search.",
        "Step 'draft' prompt has a template error on line 1: unexpected end of template, "
        "expected 'end of print statement'.",
    ]
    content = response.content.decode()
    assert "unknown tool &#x27;fax.send&#x27;" in content
    assert "has a template error on line 1" in content
    assert RoleVersion.objects.count() == versions
    assert AuditEvent.objects.count() == events


def test_a_valid_definition_saves_a_draft_through_the_service(client, users, intake_role):
    definition = intake_role.active_version.definition
    client.force_login(users["ops"])

    response = client.post(
        ADD_URL,
        {"role": intake_role.pk, "definition": json.dumps(definition), "change_note": "Again"},
    )

    version = RoleVersion.objects.get(role=intake_role, number=2)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:roles_roleversion_change", args=[version.pk])
    assert (version.status, version.definition, version.change_note, version.created_by) == (
        RoleVersion.Status.DRAFT,
        definition,
        "Again",
        users["ops"],
    )
    assert AuditEvent.objects.filter(action="role_version.created", object_id=str(version.pk))


def test_the_add_form_opened_from_a_role_starts_from_its_latest_version(client, users, intake_role):
    client.force_login(users["ops"])

    response = client.get(ADD_URL, {"role": intake_role.pk})

    form = response.context["adminform"].form
    assert form.initial["role"] == intake_role
    assert form.initial["definition"] == intake_role.active_version.definition


def test_a_reviewer_cannot_add_a_version(client, users, intake_role):
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        ADD_URL,
        {"role": intake_role.pk, "definition": json.dumps(intake_role.active_version.definition)},
    )

    assert response.status_code == 403
    assert RoleVersion.objects.filter(role=intake_role).count() == 1


@pytest.fixture
def draft(intake_role, users) -> RoleVersion:
    return create_role_version(
        role=intake_role,
        definition=intake_role.active_version.definition,
        actor=Actor.for_user(users["ops"]),
        change_note="Draft",
    )


def test_publish_and_activate(client, users, ops_harbor, intake_role, draft):
    client.force_login(ops_harbor)

    response = client.post(
        CHANGELIST_URL,
        {"action": "publish_and_activate", "_selected_action": [draft.pk], "index": "0"},
        follow=True,
    )

    draft.refresh_from_db()
    intake_role.refresh_from_db()
    assert draft.status == RoleVersion.Status.PUBLISHED
    assert draft.published_by == ops_harbor
    assert intake_role.active_version == draft
    assert [str(m) for m in response.context["messages"]] == [
        "Published intake-coordinator v2; new runs of Intake coordinator use it."
    ]


def test_the_author_of_a_version_cannot_publish_it(client, users, intake_role, draft):
    first = intake_role.active_version
    client.force_login(users["ops"])
    events = AuditEvent.objects.count()

    page = client.get(reverse("admin:roles_roleversion_change", args=[draft.pk]))
    response = client.post(
        CHANGELIST_URL,
        {"action": "publish_and_activate", "_selected_action": [draft.pk], "index": "0"},
        follow=True,
    )

    draft.refresh_from_db()
    intake_role.refresh_from_db()
    assert "You wrote this draft: another operator publishes it." in page.content.decode()
    assert [str(m) for m in response.context["messages"]] == [
        "intake-coordinator v2 was not published: Another operator must publish the version "
        "you wrote."
    ]
    assert (draft.status, draft.published_by, draft.published_at) == (
        RoleVersion.Status.DRAFT,
        None,
        None,
    )
    assert intake_role.active_version == first
    assert AuditEvent.objects.count() == events


def test_activate_rolls_back_to_an_earlier_version(client, users, ops_harbor, intake_role, draft):
    first = intake_role.active_version
    publish_role_version(version=draft, actor=Actor.for_user(ops_harbor))
    client.force_login(users["ops"])

    client.post(
        CHANGELIST_URL,
        {"action": "activate_version", "_selected_action": [first.pk], "index": "0"},
    )

    intake_role.refresh_from_db()
    assert intake_role.active_version == first


def test_actions_refuse_more_than_one_version(client, users, intake_role, draft, northwind):
    other = Role.objects.get(tenant=northwind, slug="intake-coordinator").active_version
    client.force_login(users["ops"])

    response = client.post(
        CHANGELIST_URL,
        {"action": "publish_and_activate", "_selected_action": [draft.pk, other.pk], "index": "0"},
        follow=True,
    )

    draft.refresh_from_db()
    assert draft.status == RoleVersion.Status.DRAFT
    assert [str(m) for m in response.context["messages"]] == [
        "Select exactly one role version to publish."
    ]


def test_publishing_a_published_version_says_why_not(client, users, intake_role):
    client.force_login(users["ops"])

    response = client.post(
        CHANGELIST_URL,
        {
            "action": "publish_and_activate",
            "_selected_action": [intake_role.active_version_id],
            "index": "0",
        },
        follow=True,
    )

    assert [str(m) for m in response.context["messages"]] == [
        "intake-coordinator v1 was not published: This version is already published."
    ]


def test_versions_are_read_only(client, users, intake_role):
    version = intake_role.active_version
    client.force_login(users["ops"])

    page = client.get(reverse("admin:roles_roleversion_change", args=[version.pk]))
    post = client.post(
        reverse("admin:roles_roleversion_change", args=[version.pk]), {"change_note": "edited"}
    )

    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert post.status_code == 403
    version.refresh_from_db()
    assert version.change_note == "Initial version"


def test_a_role_is_created_through_the_service(client, users, harbor):
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:roles_role_add"),
        {
            "tenant": harbor.pk,
            "slug": "scheduler",
            "name": "Scheduler",
            "input_schema": json.dumps({"type": "object"}),
            "purpose": "Books meetings.",
            "outputs": "",
            "target_turnaround_minutes": 30,
            "escalation_conditions": "",
            "allowed_tools": ["records.search"],
            "allowed_data_kinds": "contact, matter",
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
        },
    )

    role = Role.objects.get(tenant=harbor, slug="scheduler")
    assert response.status_code == 302
    assert role.allowed_tools == ["records.search"]
    assert role.allowed_data_kinds == ["contact", "matter"]
    assert AuditEvent.objects.filter(action="role.created", object_id=str(role.pk)).count() == 1


def test_a_role_with_an_invalid_input_schema_is_refused(client, users, harbor):
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:roles_role_add"),
        {
            "tenant": harbor.pk,
            "slug": "scheduler",
            "name": "Scheduler",
            "input_schema": json.dumps({"type": "nonsense"}),
            "target_turnaround_minutes": 30,
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 200
    assert "The input schema is not a valid JSON Schema" in response.content.decode()
    assert not Role.objects.filter(slug="scheduler").exists()


def role_form(role, **overrides) -> dict:
    return {
        "name": role.name,
        "input_schema": json.dumps(role.input_schema),
        "purpose": role.purpose,
        "outputs": role.outputs,
        "target_turnaround_minutes": role.target_turnaround_minutes,
        "escalation_conditions": role.escalation_conditions,
        "allowed_tools": role.allowed_tools,
        "allowed_data_kinds": ", ".join(role.allowed_data_kinds),
        "versions-TOTAL_FORMS": "1",
        "versions-INITIAL_FORMS": "1",
        **overrides,
    }


def test_a_role_is_changed_through_the_service(client, users, intake_role):
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:roles_role_change", args=[intake_role.pk]),
        role_form(intake_role, target_turnaround_minutes=45, slug="renamed"),
    )

    intake_role.refresh_from_db()
    event = AuditEvent.objects.get(action="role.updated", object_id=str(intake_role.pk))
    assert response.status_code == 302
    assert (intake_role.target_turnaround_minutes, intake_role.slug) == (45, "intake-coordinator")
    assert event.data == {"target_turnaround_minutes": [60, 45]}
    assert event.actor_user == users["ops"]
    assert intake_role.history.first().history_user == users["ops"]


def canary_url(role) -> str:
    return reverse("admin:roles_role_canary", args=[role.pk])


@pytest.fixture
def published(intake_role, draft, ops_harbor) -> RoleVersion:
    """Version 2, published without being activated: a candidate canary."""
    return publish_role_version(version=draft, actor=Actor.for_user(ops_harbor), activate=False)


def test_the_canary_is_set_from_the_role_page_through_the_service(
    client, users, intake_role, published
):
    client.force_login(users["ops"])

    page = client.get(reverse("admin:roles_role_change", args=[intake_role.pk]))
    form = client.get(canary_url(intake_role))
    response = client.post(canary_url(intake_role), {"version": published.pk, "percent": 25})

    intake_role.refresh_from_db()
    assert canary_url(intake_role) in page.content.decode()
    assert list(form.context["form"].fields["version"].queryset) == [published]
    assert response.status_code == 302
    assert (intake_role.canary_version, intake_role.canary_percent) == (published, 25)
    event = AuditEvent.objects.get(action="role.canary_set", object_id=str(intake_role.pk))
    assert event.data == {"version": 2, "percent": 25}
    assert event.actor_user == users["ops"]

    client.post(canary_url(intake_role), {"version": "", "percent": 25})

    intake_role.refresh_from_db()
    assert (intake_role.canary_version, intake_role.canary_percent) == (None, 0)


def test_a_draft_cannot_be_the_canary(client, users, intake_role, draft):
    client.force_login(users["ops"])

    response = client.post(canary_url(intake_role), {"version": draft.pk, "percent": 25})

    intake_role.refresh_from_db()
    assert response.status_code == 200
    assert "version" in response.context["form"].errors
    assert (intake_role.canary_version, intake_role.canary_percent) == (None, 0)


def test_only_the_roles_operators_set_its_canary(
    client, users, ops_northwind, intake_role, published
):
    for user, status in ((users["reviewer.harbor"], 403), (ops_northwind, 404)):
        client.force_login(user)

        assert client.get(canary_url(intake_role)).status_code == status
        response = client.post(canary_url(intake_role), {"version": published.pk, "percent": 50})

        assert response.status_code == status
    intake_role.refresh_from_db()
    assert intake_role.canary_version is None
