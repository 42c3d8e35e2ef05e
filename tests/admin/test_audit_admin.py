"""The audit trail in the admin: readable by auditors and operators, writable by nobody."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse

from audit.models import AuditEvent
from tenants.models import Tenant


def as_request(user):
    request = RequestFactory().get("/")
    request.user = user
    return request


@pytest.fixture
def event(harbor) -> AuditEvent:
    return AuditEvent.objects.filter(tenant=harbor).order_by("seq").first()


@pytest.mark.parametrize("username", ["ops", "auditor", "reviewer.harbor", "superuser"])
def test_nobody_may_add_change_or_delete_an_event(users, superuser, event, username):
    user = superuser if username == "superuser" else users[username]
    model_admin = admin.site._registry[AuditEvent]
    request = as_request(user)

    assert model_admin.has_add_permission(request) is False
    assert model_admin.has_change_permission(request) is False
    assert model_admin.has_change_permission(request, event) is False
    assert model_admin.has_delete_permission(request) is False
    assert model_admin.has_delete_permission(request, event) is False
    assert "delete_selected" not in model_admin.get_actions(request)


@pytest.mark.parametrize("username", ["ops", "auditor", "superuser"])
def test_posting_to_an_events_pages_changes_nothing(client, users, superuser, event, username):
    user = superuser if username == "superuser" else users[username]
    before = AuditEvent.objects.filter(pk=event.pk).values().get()
    client.force_login(user)
    count = AuditEvent.objects.count()

    change = client.post(
        reverse("admin:audit_auditevent_change", args=[event.pk]),
        {"action": "forged", "reason": "forged"},
    )
    delete = client.post(reverse("admin:audit_auditevent_delete", args=[event.pk]), {"post": "yes"})
    add = client.post(reverse("admin:audit_auditevent_add"), {"action": "forged"})

    assert change.status_code == 403
    assert delete.status_code == 403
    assert add.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).values().get() == before
    assert AuditEvent.objects.count() == count


@pytest.mark.parametrize("username", ["ops", "auditor"])
def test_auditors_and_operators_read_their_tenants_trail(client, users, harbor, event, username):
    client.force_login(users[username])
    tenant_ids = set(
        Tenant.objects.filter(memberships__user=users[username]).values_list("pk", flat=True)
    )

    listing = client.get(reverse("admin:audit_auditevent_changelist"))
    page = client.get(reverse("admin:audit_auditevent_change", args=[event.pk]))

    assert listing.status_code == 200
    assert {e.tenant_id for e in listing.context["cl"].result_list} <= tenant_ids
    assert page.status_code == 200
    assert event.hash in page.content.decode()
    assert 'name="_save"' not in page.content.decode()


def test_reviewers_do_not_read_the_trail(client, users, event):
    client.force_login(users["reviewer.harbor"])

    listing = client.get(reverse("admin:audit_auditevent_changelist"))
    page = client.get(reverse("admin:audit_auditevent_change", args=[event.pk]))

    assert listing.status_code == 403
    assert page.status_code == 403


def test_the_trail_filters_on_action_and_actor_type_and_searches(client, users, harbor):
    client.force_login(users["auditor"])
    url = reverse("admin:audit_auditevent_changelist")

    by_action = client.get(url, {"action": "membership.granted"})
    by_actor = client.get(url, {"actor_type__exact": "system"})
    searched = client.get(url, {"q": "membership.granted"})

    granted = set(
        AuditEvent.objects.filter(action="membership.granted", tenant__isnull=False).values_list(
            "pk", flat=True
        )
    )
    assert {e.pk for e in by_action.context["cl"].result_list} == granted
    assert {e.actor_type for e in by_actor.context["cl"].result_list} == {"system"}
    assert {e.pk for e in searched.context["cl"].result_list} == granted


class TestExport:
    URL = "/admin/audit/auditevent/export/"

    def test_an_auditor_downloads_the_tenants_trail_and_the_export_is_audited(
        self, client, users, harbor
    ):
        client.force_login(users["auditor"])
        expected = AuditEvent.objects.filter(tenant=harbor).count()

        response = client.get(self.URL, {"tenant": harbor.pk, "format": "csv"})

        assert response.status_code == 200
        assert response["Content-Type"] == "text/csv; charset=utf-8"
        lines = response.content.decode().strip().splitlines()
        assert lines[0].startswith("seq,created_at,")
        assert len(lines) == expected + 1
        exported = AuditEvent.objects.filter(tenant=harbor, action="audit.exported").get()
        assert exported.actor_user == users["auditor"]
        assert exported.data["events"] == expected

    def test_another_tenants_reviewer_gets_nothing(self, client, users, harbor):
        client.force_login(users["reviewer.northwind"])
        before = AuditEvent.objects.count()

        response = client.get(self.URL, {"tenant": harbor.pk, "format": "jsonl"})

        assert response.status_code == 404
        assert AuditEvent.objects.count() == before

    def test_a_reviewer_of_the_tenant_may_not_export(self, client, users, harbor):
        client.force_login(users["reviewer.harbor"])

        response = client.get(self.URL, {"tenant": harbor.pk, "format": "jsonl"})

        assert response.status_code in (403, 404)
        assert not AuditEvent.objects.filter(action="audit.exported").exists()
