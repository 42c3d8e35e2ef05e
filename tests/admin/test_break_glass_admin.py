"""Break-glass access through the admin: platform staff open a grant with a reason, read one
client's data without changing anything, every page they view is audited, and they close it."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from desk.models import Run
from tenants.models import BreakGlassGrant
from tenants.services import open_break_glass
from tests.admin.conftest import BREAK_GLASS_REASON, make_platform_staff, parked

ADD_URL = reverse("admin:tenants_breakglassgrant_add")
CHANGELIST_URL = reverse("admin:tenants_breakglassgrant_changelist")
RUNS_URL = reverse("admin:desk_run_changelist")
TENANTS_URL = reverse("admin:tenants_tenant_changelist")


@pytest.fixture
def harbor_run(harbor, users) -> Run:
    return parked(harbor, users["ops"])


def test_people_who_are_not_platform_staff_get_403(client, users, superuser):
    for user in (users["ops"], users["auditor"], superuser):
        client.force_login(user)

        assert client.get(CHANGELIST_URL).status_code == 403
        assert client.get(ADD_URL).status_code == 403
        response = client.post(ADD_URL, {"tenant": 1, "reason": BREAK_GLASS_REASON, "minutes": 60})
        assert response.status_code == 403
    assert BreakGlassGrant.objects.count() == 0


def test_without_a_grant_platform_staff_see_no_tenant_data(client, staff, harbor_run):
    client.force_login(staff)

    tenants = client.get(TENANTS_URL)
    runs = client.get(RUNS_URL)
    run_page = client.get(reverse("admin:desk_run_change", args=[harbor_run.pk]))

    assert tenants.status_code == 200
    assert list(tenants.context["cl"].result_list) == []
    assert runs.status_code == 403
    assert run_page.status_code in (403, 404)
    assert not AuditEvent.objects.filter(action="break_glass.viewed").exists()


def test_a_grant_needs_a_reason(client, staff, harbor):
    client.force_login(staff)

    response = client.post(ADD_URL, {"tenant": harbor.pk, "reason": "because", "minutes": 60})

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "__all__": ["Say why you need access (at least 10 characters)."]
    }
    assert BreakGlassGrant.objects.count() == 0


def test_staff_open_a_grant_and_read_that_client_only(client, staff, harbor, northwind, harbor_run):
    client.force_login(staff)

    form_page = client.get(ADD_URL)
    opened = client.post(
        ADD_URL, {"tenant": harbor.pk, "reason": BREAK_GLASS_REASON, "minutes": 30}
    )

    grant = BreakGlassGrant.objects.get(user=staff)
    assert form_page.context["adminform"].form.fields["tenant"].choices[1:] == [
        (harbor.pk, "Harbor Legal LLP"),
        (northwind.pk, "Northwind Accounting"),
    ]
    assert opened.status_code == 302
    assert (grant.tenant, grant.reason) == (harbor, BREAK_GLASS_REASON)
    assert (grant.expires_at - grant.started_at).total_seconds() == 30 * 60
    assert AuditEvent.objects.filter(
        tenant=harbor, action="break_glass.opened", object_id=str(grant.pk)
    ).exists()

    run_url = reverse("admin:desk_run_change", args=[harbor_run.pk])
    tenant_url = reverse("admin:tenants_tenant_change", args=[harbor.pk])
    runs = client.get(RUNS_URL)
    run_page = client.get(run_url)
    tenant_page = client.get(tenant_url)

    until = timezone.localtime(grant.expires_at).strftime("%H:%M")
    banner = f"Break-glass access to Harbor Legal LLP until {until} — every page you view is"
    assert {run.tenant_id for run in runs.context["cl"].result_list} == {harbor.pk}
    assert harbor_run.pk in {run.pk for run in runs.context["cl"].result_list}
    for response in (runs, run_page, tenant_page):
        content = response.content.decode()
        assert response.status_code == 200
        assert banner in content
        assert 'name="_save"' not in content
    assert reverse("admin:desk_run_add") not in runs.content.decode()
    assert "cancel_runs" not in runs.content.decode()
    assert "Cancel this run" not in run_page.content.decode()
    northwind_page = client.get(reverse("admin:tenants_tenant_change", args=[northwind.pk]))
    assert northwind_page.status_code == 404

    viewed = AuditEvent.objects.filter(tenant=harbor, action="break_glass.viewed").order_by("seq")
    assert [event.data["path"] for event in viewed] == [
        RUNS_URL,
        run_url,
        tenant_url,
        reverse("admin:tenants_tenant_change", args=[northwind.pk]),
    ]
    assert {(event.actor_user, event.reason) for event in viewed} == {(staff, BREAK_GLASS_REASON)}


def test_staff_close_their_grant(client, staff, harbor, harbor_run):
    grant = open_break_glass(user=staff, tenant=harbor, reason=BREAK_GLASS_REASON)
    client.force_login(staff)

    page = client.get(reverse("admin:tenants_breakglassgrant_change", args=[grant.pk]))
    closed = client.post(
        CHANGELIST_URL, {"action": "close_grants", "_selected_action": [grant.pk], "index": "0"}
    )

    grant.refresh_from_db()
    assert "Close access" in page.content.decode()
    assert closed.status_code == 302
    assert grant.ended_at is not None
    assert AuditEvent.objects.filter(
        tenant=harbor, action="break_glass.closed", object_id=str(grant.pk)
    ).exists()
    listing = client.get(CHANGELIST_URL)
    ended_page = client.get(reverse("admin:tenants_breakglassgrant_change", args=[grant.pk]))
    content = listing.content.decode()
    assert [g.pk for g in listing.context["cl"].result_list] == [grant.pk]
    assert "Harbor Legal LLP" in content  # the ended grant still names its client
    assert "Break-glass access to" not in content
    assert ended_page.status_code == 200
    assert "Close access" not in ended_page.content.decode()
    assert client.get(RUNS_URL).status_code == 403


def test_staff_see_only_their_own_grants(client, staff, harbor):
    other = make_platform_staff("sre.other")
    theirs = open_break_glass(user=other, tenant=harbor, reason=BREAK_GLASS_REASON)
    mine = open_break_glass(user=staff, tenant=harbor, reason=BREAK_GLASS_REASON)
    client.force_login(staff)

    listing = client.get(CHANGELIST_URL)
    their_page = client.get(reverse("admin:tenants_breakglassgrant_change", args=[theirs.pk]))
    client.post(
        CHANGELIST_URL,
        {"action": "close_grants", "_selected_action": [theirs.pk], "index": "0"},
    )

    theirs.refresh_from_db()
    assert [g.pk for g in listing.context["cl"].result_list] == [mine.pk]
    assert their_page.status_code == 404
    assert theirs.ended_at is None
