"""The audit trail in the admin: readable by auditors and operators, writable by nobody."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.contrib import admin
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from audit import proof, signing
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

    def download(self, client, HTTP_USER_AGENT="", **params):
        response = client.get(self.URL, params, HTTP_USER_AGENT=HTTP_USER_AGENT)
        assert response.status_code == 200, response
        assert response["Content-Type"] == "application/zip"
        return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))

    def test_an_auditor_downloads_a_bundle_that_verifies_and_the_export_is_audited(
        self, client, users, harbor, tmp_path
    ):
        client.force_login(users["auditor"])
        expected = AuditEvent.objects.filter(tenant=harbor).count()

        bundle = self.download(
            client, tenant=harbor.pk, format="csv", HTTP_USER_AGENT="AuditBrowser/1.0"
        )

        assert bundle.namelist() == ["events.csv", "manifest.json"]
        lines = bundle.read("events.csv").decode().strip().splitlines()
        assert lines[0].startswith("tenant,seq,created_at,")
        assert len(lines) == expected + 1
        manifest = json.loads(bundle.read("manifest.json"))
        exported = AuditEvent.objects.filter(tenant=harbor, action="audit.exported").get()
        assert exported.actor_user == users["auditor"]
        assert (exported.user_agent, exported.client_ip) == ("AuditBrowser/1.0", "127.0.0.1")
        assert len(exported.request_id) == 32
        assert exported.data["events"] == expected
        assert exported.data["manifest_sha256"] == proof.sha256_hex(proof.canonical_json(manifest))
        path = tmp_path / "bundle.zip"
        with zipfile.ZipFile(path, "w") as out:
            for name in bundle.namelist():
                out.writestr(name, bundle.read(name))
        assert proof.verify_export(path, signing.verifier()).ok

    def test_a_download_given_up_half_way_is_recorded_as_abandoned(
        self, client, users, harbor, monkeypatch
    ):
        client.force_login(users["auditor"])
        response = client.get(self.URL, {"tenant": harbor.pk, "format": "jsonl"})
        next(iter(response.streaming_content))
        # Closed as a WSGI server closes a response whose client went away. The request's
        # end would close the test's own database connection (it is inside the test's
        # transaction), so that part of Django's request signal is held back.
        monkeypatch.setattr(BaseDatabaseWrapper, "close_if_unusable_or_obsolete", lambda self: None)

        response.close()

        [abandoned] = AuditEvent.objects.filter(tenant=harbor, action="audit.export_abandoned")
        assert abandoned.actor_user == users["auditor"]
        assert not AuditEvent.objects.filter(action="audit.exported").exists()

    def test_the_export_takes_the_period_and_the_changelists_filters(
        self, client, users, harbor, tmp_path
    ):
        client.force_login(users["auditor"])
        today = timezone.now().date().isoformat()

        bundle = self.download(
            client,
            tenant=harbor.pk,
            format="jsonl",
            since=today,
            until=today,
            action="membership.granted",
        )

        rows = [json.loads(line) for line in bundle.read("events.jsonl").splitlines()]
        expected = AuditEvent.objects.filter(tenant=harbor, action="membership.granted")
        assert [r["seq"] for r in rows] == sorted(expected.values_list("seq", flat=True))
        manifest = json.loads(bundle.read("manifest.json"))
        assert manifest["contiguous"] is False
        assert manifest["query"]["filters"] == {"action": "membership.granted"}
        path = tmp_path / "bundle.zip"
        with zipfile.ZipFile(path, "w") as out:
            for name in bundle.namelist():
                out.writestr(name, bundle.read(name))
        assert proof.verify_export(path, signing.verifier()).ok

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({"since": "yesterday"}, "is not an ISO date"),
            ({"since": "2026-03-01", "until": "2026-02-01"}, "The period is empty"),
            ({"action__nope": "x"}, "the filters are not ones the audit trail offers"),
        ],
    )
    def test_bad_export_input_is_a_clear_error_and_exports_nothing(
        self, client, users, harbor, params, message
    ):
        client.force_login(users["auditor"])
        before = AuditEvent.objects.count()

        response = client.get(
            self.URL, {"tenant": harbor.pk, "format": "csv", **params}, follow=True
        )

        assert message in response.content.decode()
        assert AuditEvent.objects.count() == before

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
