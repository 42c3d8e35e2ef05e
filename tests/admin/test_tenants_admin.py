"""Tenants, memberships and client records in the admin."""

from __future__ import annotations

import json

from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError
from django.urls import reverse

from audit.models import AuditEvent
from tenants import admin as tenants_admin
from tenants.models import ClientRecord, Membership, Tenant
from tenants.permissions import can_review_tenant


def tenant_form(tenant, **overrides) -> dict:
    return {
        "max_concurrent_runs": tenant.max_concurrent_runs,
        "reserved_steps_per_minute": tenant.reserved_steps_per_minute,
        "priority_weight": tenant.priority_weight,
        "monthly_token_budget": "",
        "monthly_cost_budget": "",
        "retention_days": tenant.retention_days,
        **overrides,
    }


def test_an_operator_tunes_capacity_but_not_who_the_client_is(client, users, harbor):
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:tenants_tenant_change", args=[harbor.pk]),
        tenant_form(harbor, max_concurrent_runs=3, name="Renamed", status="suspended"),
    )

    harbor.refresh_from_db()
    assert response.status_code == 302
    assert harbor.max_concurrent_runs == 3
    assert (harbor.name, harbor.status) == ("Harbor Legal LLP", "active")
    event = AuditEvent.objects.get(tenant=harbor, action="tenant.updated")
    assert event.data == {"max_concurrent_runs": [10, 3]}
    assert event.actor_user == users["ops"]
    assert harbor.history.first().history_user == users["ops"]


def test_an_invalid_setting_is_a_form_error_and_changes_nothing(client, users, harbor):
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:tenants_tenant_change", args=[harbor.pk]),
        tenant_form(harbor, max_concurrent_runs=3, priority_weight=0),
    )

    harbor.refresh_from_db()
    assert response.status_code == 200
    assert "priority_weight" in response.context["adminform"].form.errors
    assert (harbor.max_concurrent_runs, harbor.priority_weight) == (10, 1)
    assert not AuditEvent.objects.filter(action="tenant.updated").exists()


def test_a_refusal_by_the_service_is_shown_on_the_form(client, users, harbor, monkeypatch):
    def refuse(**kwargs):
        raise ValidationError({"max_concurrent_runs": "More than this client's plan allows."})

    monkeypatch.setattr(tenants_admin, "update_tenant_settings", refuse)
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:tenants_tenant_change", args=[harbor.pk]),
        tenant_form(harbor, max_concurrent_runs=50, retention_days=30),
    )

    harbor.refresh_from_db()
    form = response.context["adminform"].form
    assert response.status_code == 200
    assert form.errors == {"max_concurrent_runs": ["More than this client's plan allows."]}
    assert form["retention_days"].value() == "30"  # what was typed is kept
    assert (harbor.max_concurrent_runs, harbor.retention_days) == (10, 365)
    assert not LogEntry.objects.exists()


def test_reviewers_only_view_their_tenant(client, users, harbor):
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        reverse("admin:tenants_tenant_change", args=[harbor.pk]),
        tenant_form(harbor, max_concurrent_runs=3),
    )

    harbor.refresh_from_db()
    assert response.status_code == 403
    assert harbor.max_concurrent_runs == 10


def test_only_platform_staff_add_tenants_and_nobody_deletes_one(
    client, users, superuser, staff, harbor
):
    for user in (users["ops"], superuser):
        client.force_login(user)

        assert client.get(reverse("admin:tenants_tenant_add")).status_code == 403
        assert (
            client.post(reverse("admin:tenants_tenant_add"), new_tenant_form()).status_code == 403
        )
    for user in (users["ops"], superuser, staff):
        client.force_login(user)

        assert client.post(
            reverse("admin:tenants_tenant_delete", args=[harbor.pk]), {"post": "yes"}
        ).status_code in (403, 404)
    assert not Tenant.objects.filter(slug="acme-advisory").exists()
    assert Tenant.objects.filter(pk=harbor.pk).exists()


def new_tenant_form(**overrides) -> dict:
    return {
        "name": "Acme Advisory",
        "slug": "acme-advisory",
        "max_concurrent_runs": 4,
        "reserved_steps_per_minute": 30,
        "priority_weight": 2,
        "monthly_token_budget": 500000,
        "monthly_cost_budget": "250.00",
        "retention_days": 90,
        **overrides,
    }


def test_platform_staff_create_a_tenant_through_the_service(client, staff):
    client.force_login(staff)

    page = client.get(reverse("admin:tenants_tenant_add"))
    response = client.post(reverse("admin:tenants_tenant_add"), new_tenant_form())

    tenant = Tenant.objects.get(slug="acme-advisory")
    assert page.status_code == 200
    assert 'name="_continue"' not in page.content.decode()
    assert response.status_code == 302
    assert (tenant.name, tenant.max_concurrent_runs, tenant.monthly_token_budget) == (
        "Acme Advisory",
        4,
        500000,
    )
    created = AuditEvent.objects.filter(action="tenant.created", object_id=str(tenant.pk))
    assert {event.tenant_id for event in created} == {tenant.pk, None}
    assert {event.actor_user for event in created} == {staff}


def test_a_taken_slug_is_a_form_error(client, staff, harbor):
    # The staff member sees no tenant: on PostgreSQL the form cannot find harbor-legal, and
    # create_tenant's own check (under the platform role) refuses it.
    count = Tenant.objects.count()
    client.force_login(staff)

    response = client.post(
        reverse("admin:tenants_tenant_add"), new_tenant_form(slug="harbor-legal")
    )

    assert response.status_code == 200
    assert "slug" in response.context["adminform"].form.errors
    assert "Please correct the error below." in response.content.decode()
    assert Tenant.objects.count() == count


def test_memberships_are_granted_changed_and_revoked_through_the_services(client, users, harbor):
    newcomer = users["reviewer.northwind"]
    client.force_login(users["ops"])

    client.post(
        reverse("admin:tenants_membership_add"),
        {"person": newcomer.username, "tenant": harbor.pk, "kind": "auditor"},
    )
    membership = Membership.objects.get(user=newcomer, tenant=harbor)
    client.post(
        reverse("admin:tenants_membership_change", args=[membership.pk]), {"kind": "reviewer"}
    )
    membership.refresh_from_db()
    newcomer.refresh_from_db()

    assert membership.kind == "reviewer"
    assert can_review_tenant(type(newcomer).objects.get(pk=newcomer.pk), harbor)
    events = AuditEvent.objects.filter(tenant=harbor, object_id=str(membership.pk))
    assert list(events.order_by("seq").values_list("action", flat=True)) == [
        "membership.granted",
        "membership.changed",
    ]

    client.post(reverse("admin:tenants_membership_delete", args=[membership.pk]), {"post": "yes"})

    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert not can_review_tenant(type(newcomer).objects.get(pk=newcomer.pk), harbor)
    assert events.order_by("seq").last().action == "membership.revoked"


def test_an_operator_cannot_grant_membership_of_a_tenant_they_do_not_operate(
    client, users, harbor, ops_northwind
):
    client.force_login(ops_northwind)

    response = client.post(
        reverse("admin:tenants_membership_add"),
        {"person": ops_northwind.username, "tenant": harbor.pk, "kind": "operator"},
    )

    assert response.status_code == 200
    assert "tenant" in response.context["adminform"].form.errors
    assert not Membership.objects.filter(user=ops_northwind, tenant=harbor).exists()


def record_form(tenant, **overrides) -> dict:
    return {
        "tenant": tenant.pk,
        "reference": "C-1003",
        "kind": "contact",
        "name": "Ines Duarte",
        "email": "ines@example.com",
        "data": json.dumps({"company": "Duarte Design"}),
        **overrides,
    }


def record_actions(record) -> list[str]:
    return list(
        AuditEvent.objects.filter(tenant=record.tenant, object_id=str(record.pk))
        .filter(action__startswith="client_record.")
        .order_by("seq")
        .values_list("action", flat=True)
    )


def test_client_records_are_saved_and_deleted_through_the_services(client, users, harbor):
    client.force_login(users["ops"])

    added = client.post(reverse("admin:tenants_clientrecord_add"), record_form(harbor))
    record = ClientRecord.objects.get(tenant=harbor, reference="C-1003")
    changed = client.post(
        reverse("admin:tenants_clientrecord_change", args=[record.pk]),
        record_form(harbor, name="Inês Duarte", reference="C-9999"),
    )
    record.refresh_from_db()

    assert (added.status_code, changed.status_code) == (302, 302)
    assert (record.reference, record.name, record.data) == (
        "C-1003",
        "Inês Duarte",
        {"company": "Duarte Design"},
    )
    assert record_actions(record) == ["client_record.created", "client_record.updated"]

    deleted = client.post(
        reverse("admin:tenants_clientrecord_delete", args=[record.pk]), {"post": "yes"}
    )

    assert deleted.status_code == 302
    assert not ClientRecord.objects.filter(pk=record.pk).exists()
    assert record_actions(record)[-1] == "client_record.deleted"
    event = AuditEvent.objects.filter(action="client_record.deleted").get()
    assert (event.data, event.actor_user) == (
        {"reference": "C-1003", "kind": "contact"},
        users["ops"],
    )


def test_deleting_several_records_audits_each(client, users, harbor):
    records = list(ClientRecord.objects.filter(tenant=harbor).order_by("pk")[:2])
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:tenants_clientrecord_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [record.pk for record in records],
            "post": "yes",
        },
    )

    assert response.status_code == 302
    assert not ClientRecord.objects.filter(pk__in=[r.pk for r in records]).exists()
    deleted = AuditEvent.objects.filter(tenant=harbor, action="client_record.deleted")
    assert sorted(e.data["reference"] for e in deleted) == sorted(r.reference for r in records)


def test_history_pages_are_read_only(client, users, harbor):
    version = harbor.history.order_by("history_date").first()
    url = reverse("admin:tenants_tenant_simple_history", args=[harbor.pk, version.history_id])
    client.force_login(users["ops"])

    listing = client.get(reverse("admin:tenants_tenant_history", args=[harbor.pk]))
    page = client.get(url)
    revert = client.post(url, tenant_form(harbor, max_concurrent_runs=1))

    harbor.refresh_from_db()
    assert listing.status_code == 200
    assert page.status_code == 200
    assert revert.status_code == 403
    assert harbor.max_concurrent_runs == 10
