"""A superuser's changes to a tenant member's account are on that tenant's record; a
member's account is not deleted from the user admin; other accounts' changes are on the
platform's record. No event holds a password."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from audit.verification import verify_chain
from tenants.models import Membership

User = get_user_model()
CHANGELIST_URL = reverse("admin:auth_user_changelist")
ADD_URL = reverse("admin:auth_user_add")


def change_url(user) -> str:
    return reverse("admin:auth_user_change", args=[user.pk])


def delete_url(user) -> str:
    return reverse("admin:auth_user_delete", args=[user.pk])


def split(value) -> tuple[str, str]:
    if value is None:
        return "", ""
    local = timezone.localtime(value)
    return local.strftime("%Y-%m-%d"), local.strftime("%H:%M:%S.%f")


def change_form(user, **changes) -> dict:
    """The user's change form as the admin shows it, with `changes` made."""
    values = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
        "groups": [group.pk for group in user.groups.all()],
        "user_permissions": [perm.pk for perm in user.user_permissions.all()],
        **changes,
    }
    data = {name: value for name, value in values.items() if value is not False}
    for name in ("is_active", "is_staff", "is_superuser"):
        if data.get(name) is True:
            data[name] = "on"
    for name in ("last_login", "date_joined"):
        data[f"{name}_0"], data[f"{name}_1"] = split(getattr(user, name))
    return data


def new_events(seen: frozenset[int]) -> list[AuditEvent]:
    """Events written since `seen` was taken: by tenant (platform first, then by slug), each
    tenant's in its chain's order. Ids are random, so they mark nothing."""
    events = AuditEvent.objects.exclude(pk__in=seen)
    return list(events.order_by(F("tenant__slug").asc(nulls_first=True), "seq"))


def seen_events() -> frozenset[int]:
    return frozenset(AuditEvent.objects.values_list("pk", flat=True))


@pytest.fixture
def reviewer(users):
    return users["reviewer.harbor"]


def test_a_superuser_deactivating_a_reviewer_is_on_the_tenants_record(
    client, superuser, reviewer, harbor
):
    partners = Group.objects.create(name="Partners (platform)")
    client.force_login(superuser)
    seen = seen_events()

    response = client.post(
        change_url(reviewer),
        change_form(reviewer, is_active=False, groups=[partners.pk]),
        headers={"X-Request-ID": "offboard-0001"},
    )

    events = new_events(seen)
    reviewer.refresh_from_db()
    assert response.status_code == 302
    assert not reviewer.is_active
    assert list(reviewer.groups.all()) == [partners]
    assert [(e.tenant_id, e.action, e.actor_user, e.object_id) for e in events] == [
        (harbor.pk, "auth.user_changed", superuser, str(reviewer.pk))
    ]
    assert events[0].data == {
        "user": "reviewer.harbor",
        "changes": {"is_active": [True, False], "groups": [[], ["Partners (platform)"]]},
    }
    assert (events[0].request_id, events[0].client_ip) == ("offboard-0001", "127.0.0.1")
    assert verify_chain(tenant_id=harbor.pk) == []


def test_making_a_member_of_two_tenants_a_superuser_is_on_both_records(
    client, superuser, users, harbor, northwind
):
    ops = users["ops"]
    client.force_login(superuser)
    seen = seen_events()

    response = client.post(change_url(ops), change_form(ops, is_superuser=True))

    assert response.status_code == 302
    assert [(e.tenant_id, e.action, e.data["changes"]) for e in new_events(seen)] == [
        (harbor.pk, "auth.user_changed", {"is_superuser": [False, True]}),
        (northwind.pk, "auth.user_changed", {"is_superuser": [False, True]}),
    ]


def test_saving_an_account_unchanged_records_nothing(client, superuser, reviewer):
    client.force_login(superuser)
    seen = seen_events()

    response = client.post(change_url(reviewer), change_form(reviewer))

    assert response.status_code == 302
    assert new_events(seen) == []


def test_a_superuser_cannot_delete_a_tenant_member(client, superuser, reviewer, harbor):
    memberships = list(Membership.objects.filter(user=reviewer).values())
    client.force_login(superuser)
    seen = seen_events()

    page = client.get(delete_url(reviewer))
    delete = client.post(delete_url(reviewer), {"post": "yes"})
    bulk = client.post(
        CHANGELIST_URL,
        {"action": "delete_selected", "_selected_action": [reviewer.pk], "post": "yes"},
    )

    assert page.status_code == 200
    assert page.context["perms_lacking"] == {"membership"}
    assert delete.status_code == 403
    assert bulk.status_code == 403
    assert User.objects.filter(pk=reviewer.pk).exists()
    assert list(Membership.objects.filter(user=reviewer).values()) == memberships
    assert new_events(seen) == []


def test_a_new_account_is_on_the_platform_record_without_its_password(client, superuser):
    client.force_login(superuser)
    seen = seen_events()

    response = client.post(
        ADD_URL,
        {
            "username": "new.hire",
            "usable_password": "true",
            "password1": "Fresh-start-2026",
            "password2": "Fresh-start-2026",
        },
    )

    user = User.objects.get(username="new.hire")
    events = new_events(seen)
    assert response.status_code == 302
    assert user.check_password("Fresh-start-2026")
    assert [(e.tenant_id, e.action, e.actor_user, e.object_id) for e in events] == [
        (None, "auth.user_created", superuser, str(user.pk))
    ]
    assert events[0].data == {
        "user": "new.hire",
        "is_staff": False,
        "is_superuser": False,
        "usable_password": True,
    }
    assert "Fresh-start-2026" not in json.dumps(list(AuditEvent.objects.values()), default=str)


def test_deleting_an_account_in_no_tenant_is_on_the_platform_record(client, superuser):
    leaver = User.objects.create_user("leaver", password="pw-leaver-123")
    client.force_login(superuser)
    seen = seen_events()

    response = client.post(delete_url(leaver), {"post": "yes"})

    assert response.status_code == 302
    assert not User.objects.filter(pk=leaver.pk).exists()
    assert [(e.tenant_id, e.action, e.object_id, e.data) for e in new_events(seen)] == [
        (None, "auth.user_deleted", str(leaver.pk), {"user": "leaver"})
    ]
