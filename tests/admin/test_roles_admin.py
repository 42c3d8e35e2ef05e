"""Roles and versions in the admin: drafts are validated; publication is asked for by one
operator and decided by another; activation, rollback and canaries are confirmed first."""

from __future__ import annotations

import copy
import json

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import Actor
from roles.models import Role, RoleVersion
from roles.services import create_role_version
from tests.publishing import publish
from tests.queries import page_statements

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


def override_request(client, version, reason="No golden cases yet."):
    return client.post(
        reverse("admin:roles_roleversion_request_publication", args=[version.pk]),
        {"note": "Please look at the prompt", "override_reason": reason},
    )


def test_asking_for_publication_shows_the_diff_and_the_gate_and_refuses_without_a_reason(
    client, users, intake_role, draft
):
    draft = update_draft_text(draft, users, "You are brief.")
    client.force_login(users["ops"])
    url = reverse("admin:roles_roleversion_request_publication", args=[draft.pk])
    events = AuditEvent.objects.count()

    page = client.get(url)
    refused = client.post(url, {"note": "", "override_reason": ""})

    html = page.content.decode()
    assert "What changes against the active v1" in html and "You are brief." in html
    assert "Regression gate" in html and "refuses" in html
    assert refused.status_code == 200
    assert "The regression gate refuses this version" in refused.content.decode()
    assert not draft.publications.exists() and AuditEvent.objects.count() == events


def test_the_second_operator_decides_on_the_publication_page(client, users, intake_role, draft):
    client.force_login(users["ops"])
    response = override_request(client, draft)
    publication = draft.publications.get()
    url = reverse("admin:roles_publication_change", args=[publication.pk])
    assert response.status_code == 302 and response["Location"] == url

    mine = client.get(url).content.decode()
    forged = client.post(url, {"_approve": "1", "note": ""})
    draft.refresh_from_db()
    assert "Approve and publish" not in mine and "Withdraw" in mine
    assert "A second operator must decide" in forged.content.decode()
    assert draft.status == RoleVersion.Status.DRAFT

    client.force_login(users["ops.second"])
    theirs = client.get(url).content.decode()
    approved = client.post(url, {"_approve": "1", "note": "Reviewed"}, follow=True)

    draft.refresh_from_db()
    intake_role.refresh_from_db()
    assert "Approve and publish" in theirs and "No golden cases yet." in theirs
    assert draft.status == RoleVersion.Status.PUBLISHED
    assert draft.published_by == users["ops.second"]
    assert intake_role.active_version.number == 1  # published, kept ready
    assert "Activate it for all new runs, start a canary, or keep it ready." in next(
        str(m) for m in approved.context["messages"]
    )


def test_activating_asks_for_confirmation_and_rolls_back(client, users, intake_role, draft):
    first = intake_role.active_version
    publish(draft)
    client.force_login(users["ops"])
    url = reverse("admin:roles_roleversion_activate", args=[first.pk])

    page = client.get(url)
    intake_role.refresh_from_db()
    assert "Roll back to intake-coordinator v1" in page.content.decode()
    assert intake_role.active_version == draft

    client.post(url, {"_activate": "1"})

    intake_role.refresh_from_db()
    assert intake_role.active_version == first
    event = AuditEvent.objects.filter(action="role_version.activated").latest("created_at")
    assert event.data["rollback"] is True and event.actor_user == users["ops"]


def test_a_reviewer_reaches_none_of_the_publication_pages(client, users, intake_role, draft):
    client.force_login(users["reviewer.harbor"])
    for name in ("edit", "request_publication", "activate"):
        url = reverse(f"admin:roles_roleversion_{name}", args=[draft.pk])
        assert client.get(url).status_code == 403
        assert client.post(url, {"override_reason": "x"}).status_code == 403
    draft.refresh_from_db()
    assert draft.status == RoleVersion.Status.DRAFT and not draft.publications.exists()


def test_a_draft_is_edited_on_its_page_and_a_pending_request_lapses(
    client, users, intake_role, draft
):
    client.force_login(users["ops"])
    override_request(client, draft)
    definition = {**draft.definition, "system": "Edited"}

    response = client.post(
        reverse("admin:roles_roleversion_edit", args=[draft.pk]),
        {"definition": json.dumps(definition), "change_note": "Edited"},
    )

    draft.refresh_from_db()
    assert response.status_code == 302
    assert draft.definition["system"] == "Edited"
    assert draft.publications.get().status == "lapsed"


def update_draft_text(draft, users, text):
    from roles.services import update_draft

    return update_draft(
        version=draft,
        actor=Actor.for_user(users["ops"]),
        definition={**draft.definition, "system": text},
        change_note=draft.change_note,
    )


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
            "purpose": "Books meetings.",
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
        },
    )

    role = Role.objects.get(tenant=harbor, slug="scheduler")
    assert response.status_code == 302
    assert role.purpose == "Books meetings." and role.active_version is None
    assert AuditEvent.objects.filter(action="role.created", object_id=str(role.pk)).count() == 1


def test_the_role_page_cannot_change_what_runs_do(client, users, intake_role):
    client.force_login(users["ops"])
    before = intake_role.active_version.definition

    response = client.post(
        reverse("admin:roles_role_change", args=[intake_role.pk]),
        {
            "name": "Intake desk",
            "purpose": intake_role.purpose,
            "allowed_tools": ["email.send"],
            "input_schema": json.dumps({"type": "object"}),
            "target_turnaround_minutes": 9999,
            "slug": "renamed",
            "versions-TOTAL_FORMS": "1",
            "versions-INITIAL_FORMS": "1",
        },
    )

    intake_role.refresh_from_db()
    event = AuditEvent.objects.get(action="role.updated", object_id=str(intake_role.pk))
    assert response.status_code == 302
    assert (intake_role.name, intake_role.slug) == ("Intake desk", "intake-coordinator")
    assert event.data == {"name": ["Intake coordinator", "Intake desk"]}
    assert intake_role.active_version.definition == before


def canary_url(role) -> str:
    return reverse("admin:roles_role_canary", args=[role.pk])


@pytest.fixture
def published(intake_role, draft, ops_harbor) -> RoleVersion:
    """Version 2, published without being activated: a candidate canary."""
    return publish(draft, activate=False)


def test_the_canary_is_set_from_the_role_page_through_the_service(
    client, users, intake_role, published
):
    client.force_login(users["ops"])

    page = client.get(reverse("admin:roles_role_change", args=[intake_role.pk]))
    form = client.get(canary_url(intake_role))
    confirm = client.post(canary_url(intake_role), {"version": published.pk, "percent": 25})
    intake_role.refresh_from_db()
    assert "Yes, send 25% of new runs to v2" in confirm.content.decode()
    assert intake_role.canary_version is None  # nothing reaches live runs before confirming
    response = client.post(
        canary_url(intake_role), {"version": published.pk, "percent": 25, "_confirm": "1"}
    )

    intake_role.refresh_from_db()
    assert canary_url(intake_role) in page.content.decode()
    assert list(form.context["form"].fields["version"].queryset) == [published]
    assert response.status_code == 302
    assert (intake_role.canary_version, intake_role.canary_percent) == (published, 25)
    event = AuditEvent.objects.get(action="role.canary_set", object_id=str(intake_role.pk))
    assert event.data == {"version": 2, "percent": 25, "previous_version": None}
    assert event.actor_user == users["ops"]

    client.post(canary_url(intake_role), {"version": "", "percent": 25, "_confirm": "1"})

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
        response = client.post(
            canary_url(intake_role), {"version": published.pk, "percent": 50, "_confirm": "1"}
        )

        assert response.status_code == status
    intake_role.refresh_from_db()
    assert intake_role.canary_version is None


def test_the_publication_pages_cost_the_same_whatever_their_number(
    client, users, intake_role, django_assert_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from roles.services import request_publication

    client.force_login(users["ops.second"])
    list_url = reverse("admin:roles_publication_changelist")

    def ask(n):
        for i in range(n):
            version = create_role_version(
                role=intake_role,
                definition={**intake_role.active_version.definition, "system": f"v{i}"},
                actor=Actor.for_user(users["ops"]),
            )
            request_publication(
                version=version, actor=Actor.for_user(users["ops"]), override_reason="load"
            )

    ask(1)
    client.get(list_url)  # warm the caches a first request fills
    with CaptureQueriesContext(connection) as few:
        assert client.get(list_url).status_code == 200
    ask(5)
    with django_assert_num_queries(len(few.captured_queries)):
        assert client.get(list_url).status_code == 200
    statements = page_statements(few)
    assert len(statements) <= 15, statements
