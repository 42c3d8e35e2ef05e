"""The platform's own tables — django-q2's admin (tasks, schedules, failures, the ORM queue)
and model prices — are platform staff's alone."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse
from django_q.models import Schedule

from audit.services import Actor
from desk.models import ModelPrice
from tenants.models import PlatformStaff
from tenants.services import grant_platform_staff

QUEUE_PAGES = [
    "admin:django_q_schedule_changelist",
    "admin:django_q_success_changelist",
    "admin:django_q_failure_changelist",
    "admin:django_q_ormq_changelist",
]


@pytest.mark.parametrize("page", QUEUE_PAGES)
@pytest.mark.parametrize("username", ["ops", "reviewer.harbor", "auditor"])
def test_tenant_people_get_403(client, users, page, username):
    client.force_login(users[username])

    response = client.get(reverse(page))

    assert response.status_code == 403


def test_a_tenant_operator_cannot_delete_a_schedule(client, users):
    schedule = Schedule.objects.create(
        name="nightly", func="desk.tasks.advance_run", schedule_type=Schedule.DAILY
    )
    client.force_login(users["ops"])

    response = client.post(
        reverse("admin:django_q_schedule_delete", args=[schedule.pk]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert Schedule.objects.filter(pk=schedule.pk).exists()


@pytest.mark.parametrize("page", QUEUE_PAGES)
def test_platform_staff_and_superusers_see_the_queue(client, superuser, page):
    staff = get_user_model().objects.create_user("sre", password="pw-sre-12345", is_staff=True)
    grant_platform_staff(user=staff, actor=Actor.system("tests"))

    client.force_login(superuser)
    assert client.get(reverse(page)).status_code == 200
    client.force_login(staff)
    assert client.get(reverse(page)).status_code == 200


def test_the_queue_is_not_in_a_tenant_persons_index(client, users):
    client.force_login(users["ops"])

    index = client.get(reverse("admin:index"))

    assert {app["app_label"] for app in index.context["app_list"]} == {
        "approvals",
        "audit",
        "desk",
        "roles",
        "tenants",
        "webhooks",
    }


def test_model_prices_are_platform_staffs_to_set(client, users, superuser, staff):
    add_url = reverse("admin:desk_modelprice_add")
    data = {"model": "offline-1", "prompt_per_million": "1.5", "completion_per_million": "6"}
    for user in (users["ops"], superuser):
        client.force_login(user)

        assert client.get(reverse("admin:desk_modelprice_changelist")).status_code == 403
        assert client.post(add_url, data).status_code == 403
    assert not ModelPrice.objects.exists()

    client.force_login(staff)
    index = client.get(reverse("admin:index"))
    response = client.post(add_url, data)

    price = ModelPrice.objects.get(model="offline-1")
    assert "desk" in {app["app_label"] for app in index.context["app_list"]}
    assert response.status_code == 302
    assert (price.prompt_per_million, price.completion_per_million) == (
        Decimal("1.5"),
        Decimal("6"),
    )
    assert price.history.get().history_user == staff


def test_platform_staff_are_granted_by_command_not_in_the_admin():
    assert not admin.site.is_registered(PlatformStaff)
