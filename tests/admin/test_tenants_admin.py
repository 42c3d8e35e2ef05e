"""Tenants, memberships and client records in the admin."""

from __future__ import annotations

import json

from django.urls import reverse

from audit.models import AuditEvent
from tenants.models import ClientRecord, Membership
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


def test_reviewers_only_view_their_tenant(client, users, harbor):
    client.force_login(users["reviewer.harbor"])

    response = client.post(
        reverse("admin:tenants_tenant_change", args=[harbor.pk]),
        tenant_form(harbor, max_concurrent_runs=3),
    )

    harbor.refresh_from_db()
    assert response.status_code == 403
    assert harbor.max_concurrent_runs == 10


def test_nobody_adds_or_deletes_tenants_in_the_admin(client, users, superuser, harbor):
    for user in (users["ops"], superuser):
        client.force_login(user)

        assert client.get(reverse("admin:tenants_tenant_add")).status_code == 403
        assert client.post(
            reverse("admin:tenants_tenant_delete", args=[harbor.pk]), {"post": "yes"}
        ).status_code in (403, 404)


def test_memberships_are_granted_changed_and_revoked_through_the_services(client, users, harbor):
    newcomer = users["reviewer.northwind"]
    client.force_login(users["ops"])

    client.post(
        reverse("admin:tenants_membership_add"),
        {"user": newcomer.pk, "tenant": harbor.pk, "kind": "auditor"},
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
        {"user": ops_northwind.pk, "tenant": harbor.pk, "kind": "operator"},
    )

    assert response.status_code == 200
    assert "tenant" in response.context["adminform"].form.errors
    assert not Membership.objects.filter(user=ops_northwind, tenant=harbor).exists()


def test_client_records_are_saved_through_the_service(client, users, harbor):
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:tenants_clientrecord_add"),
        {
            "tenant": harbor.pk,
            "reference": "C-1003",
            "kind": "contact",
            "name": "Ines Duarte",
            "email": "ines@example.com",
            "data": json.dumps({"company": "Duarte Design"}),
        },
    )

    record = ClientRecord.objects.get(tenant=harbor, reference="C-1003")
    assert response.status_code == 302
    assert record.data == {"company": "Duarte Design"}


def test_history_pages_are_read_only(client, users, harbor):
    version = harbor.history.order_by("history_id").first()
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
