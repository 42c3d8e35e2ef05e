"""Platform staff reach a tenant only through an audited, time-boxed break-glass grant."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import Actor
from tenants.models import BreakGlassGrant, PlatformStaff
from tenants.permissions import can_audit_tenant, can_operate_tenant, can_view_tenant
from tenants.scoping import tenants_for_user
from tenants.services import close_break_glass, grant_platform_staff, open_break_glass

REASON = "Ticket 4521: client reports a missing reply"


def fresh(user):
    return get_user_model().objects.get(pk=user.pk)


@pytest.fixture
def staff(db):
    user = get_user_model().objects.create_user("sre", password="pw-sre-12345", is_staff=True)
    grant_platform_staff(user=user, actor=Actor.system("t"))
    return user


def test_a_superuser_is_no_way_into_a_tenant(superuser, harbor):
    assert list(tenants_for_user(superuser)) == []
    assert not can_view_tenant(superuser, harbor)


def test_the_staff_flag_alone_shows_nothing(staff, harbor):
    assert list(tenants_for_user(staff)) == []
    assert not can_view_tenant(staff, harbor)


def test_an_open_grant_gives_read_only_access_to_that_tenant_only(staff, harbor, northwind):
    grant = open_break_glass(user=staff, tenant=harbor, reason=REASON, minutes=30)
    staff = fresh(staff)

    assert list(tenants_for_user(staff)) == [harbor]
    assert can_view_tenant(staff, harbor)
    assert can_audit_tenant(staff, harbor)
    assert not can_operate_tenant(staff, harbor)
    assert not can_view_tenant(staff, northwind)
    opened = AuditEvent.objects.filter(action="break_glass.opened", object_id=str(grant.pk))
    assert {e.tenant_id for e in opened} == {harbor.pk, None}
    assert {e.reason for e in opened} == {REASON}


def test_a_closed_or_expired_grant_gives_nothing(staff, harbor):
    grant = open_break_glass(user=staff, tenant=harbor, reason=REASON)

    close_break_glass(grant=grant, actor=Actor.for_user(staff))
    assert not can_view_tenant(fresh(staff), harbor)

    expired = open_break_glass(user=staff, tenant=harbor, reason=REASON)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    BreakGlassGrant.objects.filter(pk=expired.pk).update(
        started_at=an_hour_ago, expires_at=an_hour_ago + timedelta(minutes=30)
    )
    assert not can_view_tenant(fresh(staff), harbor)


@pytest.mark.parametrize(("reason", "minutes"), [("", 30), ("too short", 30), (REASON, 600)])
def test_a_grant_needs_a_real_reason_and_a_short_time(staff, harbor, reason, minutes):
    with pytest.raises(ValidationError):
        open_break_glass(user=staff, tenant=harbor, reason=reason, minutes=minutes)

    assert BreakGlassGrant.objects.count() == 0


def test_only_platform_staff_may_open_a_grant(users, harbor):
    with pytest.raises(PermissionDenied):
        open_break_glass(user=users["ops"], tenant=harbor, reason=REASON)

    assert BreakGlassGrant.objects.count() == 0


def test_every_page_viewed_under_a_grant_is_audited(client, staff, harbor):
    open_break_glass(user=staff, tenant=harbor, reason=REASON)
    client.force_login(staff)

    client.get("/admin/")
    client.get("/admin/?q=1")

    views = AuditEvent.objects.filter(tenant=harbor, action="break_glass.viewed").order_by("seq")
    assert [e.data["path"] for e in views] == ["/admin/", "/admin/?q=1"]
    assert {e.actor_user for e in views} == {staff}


def test_the_command_flags_a_user(users):
    call_command("grant_platform_staff", "ops", "--note", "on call")

    assert PlatformStaff.objects.get(user=users["ops"]).note == "on call"
    with pytest.raises(CommandError, match="No active user 'ghost'"):
        call_command("grant_platform_staff", "ghost")
