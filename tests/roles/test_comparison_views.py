"""The role's "Compare versions" and "Canary: compare" admin pages."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import Actor
from roles.models import Role
from tenants.services import grant_membership
from tests.roles.conftest import build_v1_runs, build_v2_runs


def compare_url(role) -> str:
    return reverse("admin:roles_role_compare", args=[role.pk])


def canary_url(role) -> str:
    return reverse("admin:roles_role_canary_compare", args=[role.pk])


@pytest.fixture
def northwind_role(northwind) -> Role:
    return Role.objects.get(tenant=northwind, slug="intake-coordinator")


@pytest.fixture
def northwind_operator(northwind):
    """An operator of northwind-accounting only."""
    user = get_user_model().objects.create_user(
        "ops.northwind", password="pw-ops-northwind-1", is_staff=True
    )
    grant_membership(user=user, tenant=northwind, kind="operator", actor=Actor.system("tests"))
    return user


# --- Compare versions ---------------------------------------------------------------------


def test_the_version_page_links_to_its_diff_against_the_active_version(client, users, canary):
    client.force_login(users["ops"])

    version_page = client.get(reverse("admin:roles_roleversion_change", args=[canary.v2.pk]))
    link = f"{compare_url(canary.role)}?new={canary.v2.pk}"
    response = client.get(link)

    assert link in version_page.content.decode()
    assert response.status_code == 200
    assert (response.context["old"], response.context["new"]) == (canary.v1, canary.v2)
    assert [(c.section, c.path, c.kind) for c in response.context["changes"]] == [
        ("system prompt", "system prompt", "changed")
    ]
    content = response.content.decode()
    assert '<span class="add">+You are brief.</span>' in content
    assert "Change note of v2: Shorter" in content


def test_two_chosen_versions_are_compared_either_way(client, users, canary):
    client.force_login(users["reviewer.harbor"])  # reading is for every member

    response = client.get(compare_url(canary.role), {"old": canary.v2.pk, "new": canary.v1.pk})

    assert response.status_code == 200
    (change,) = response.context["changes"]
    assert "-You are brief." in change.lines
    assert response.context["swap_url"] == f"?old={canary.v1.pk}&new={canary.v2.pk}"


def test_the_active_version_is_compared_with_the_one_before(client, users, intake_role):
    client.force_login(users["ops"])

    response = client.get(compare_url(intake_role))

    assert response.status_code == 200
    assert response.context["old"] is None  # v1 has nothing before it: everything is added
    assert response.context["new"] == intake_role.active_version
    assert {c.kind for c in response.context["changes"]} == {"added"}


def test_another_tenants_version_is_refused(client, users, canary, northwind_role):
    client.force_login(users["ops"])  # an operator of both tenants, on harbor's role

    response = client.get(
        compare_url(canary.role), {"old": northwind_role.active_version.pk, "new": canary.v2.pk}
    )

    assert response.status_code == 200
    assert "old" in response.context["form"].errors
    assert response.context["changes"] is None


# --- Canary: compare --------------------------------------------------------------------


def test_the_canary_page_shows_active_and_canary_with_links_to_their_runs(client, users, canary):
    client.force_login(users["ops"])

    response = client.get(canary_url(canary.role))

    assert response.status_code == 200
    columns = response.context["columns"]
    assert [c["label"] for c in columns] == [
        "v2 · Published · canary (20%)",
        "v1 · Published · active",
    ]
    rows = {row["label"]: row["cells"] for row in response.context["rows"]}
    assert [cell["value"] for cell in rows["Runs started"]] == ["3", "4"]
    assert [cell["detail"] for cell in rows["Approval rate"]] == ["1 of 2", "2 of 3"]
    assert [cell["value"] for cell in rows["Edited when approved"]] == ["0%", "50%"]
    assert [cell["detail"] for cell in rows["Cost per run"]] == [
        "0.6000 over 3 runs",
        "0.6000 over 4 runs",
    ]
    content = response.content.decode()
    assert reverse("admin:roles_role_canary", args=[canary.role.pk]) in content
    assert reverse("admin:roles_roleversion_change", args=[canary.v2.pk]) in content
    assert "Promote the canary (v2)" in content
    assert f"{compare_url(canary.role)}?old={canary.v1.pk}&amp;new={canary.v2.pk}" in content


def test_a_figures_link_opens_the_runs_behind_it(client, users, canary):
    client.force_login(users["ops"])
    page = client.get(canary_url(canary.role))
    rows = {row["label"]: row["cells"] for row in page.context["rows"]}
    started, completed = rows["Runs started"][0]["url"], rows["Completed"][0]["url"]

    runs = client.get(started)
    done = client.get(completed)

    assert parse_qs(urlsplit(started).query)["role_version__id__exact"] == [str(canary.v2.pk)]
    assert runs.status_code == done.status_code == 200
    assert {r.pk for r in runs.context["cl"].result_list} == {r.pk for r in canary.runs["v2"]}
    assert [r.pk for r in done.context["cl"].result_list] == [canary.runs["v2"][0].pk]


def test_reviewers_see_the_figures_but_not_the_promote_and_rollback_links(client, users, canary):
    client.force_login(users["reviewer.harbor"])

    response = client.get(canary_url(canary.role))

    assert response.status_code == 200
    assert len(response.context["columns"]) == 2
    assert "Promote the canary" not in response.content.decode()
    assert reverse("admin:roles_role_canary", args=[canary.role.pk]) not in (
        response.content.decode()
    )


def test_a_period_and_versions_are_chosen_on_the_form(client, users, canary):
    client.force_login(users["ops"])
    day = canary.now.date()

    response = client.get(
        canary_url(canary.role),
        {
            "versions": [canary.v1.pk],
            "since_date": (day.replace(day=1)).isoformat(),
            "until_date": day.isoformat(),
        },
    )
    later = client.get(
        canary_url(canary.role),
        {"versions": [canary.v1.pk], "since_date": "2099-01-01", "until_date": "2099-01-31"},
    )
    backwards = client.get(
        canary_url(canary.role),
        {"versions": [canary.v1.pk], "since_date": "2099-01-31", "until_date": "2099-01-01"},
    )

    assert [c["label"] for c in response.context["columns"]] == ["v1 · Published · active"]
    assert [cell["value"] for cell in later.context["rows"][0]["cells"]] == ["0"]
    assert backwards.context["form"].errors == {
        "__all__": ["The period must start before it ends."]
    }
    assert backwards.context["columns"] == []


def test_a_version_of_another_tenants_role_is_refused_by_the_page(
    client, users, canary, northwind_role
):
    client.force_login(users["ops"])

    response = client.get(
        canary_url(canary.role),
        {
            "versions": [canary.v1.pk, northwind_role.active_version.pk],
            "since_date": "2026-01-01",
            "until_date": "2026-12-31",
        },
    )

    assert response.status_code == 200
    assert "versions" in response.context["form"].errors
    assert response.context["columns"] == []


def test_the_canary_page_makes_the_same_queries_for_twice_the_runs(client, users, canary):
    client.force_login(users["ops"])
    client.get(canary_url(canary.role))  # warm the session and permission caches
    with CaptureQueriesContext(connection) as before:
        client.get(canary_url(canary.role))

    build_v1_runs(canary)
    build_v2_runs(canary)
    with CaptureQueriesContext(connection) as after:
        response = client.get(canary_url(canary.role))

    assert [cell["value"] for cell in response.context["rows"][0]["cells"]] == ["6", "8"]
    assert len(after.captured_queries) == len(before.captured_queries)


# --- another tenant's role ----------------------------------------------------------------


@pytest.mark.parametrize("page", ["roles_role_compare", "roles_role_canary_compare"])
def test_another_tenants_operator_gets_404_and_nothing_changes(
    client, northwind_operator, canary, page
):
    client.force_login(northwind_operator)
    events = AuditEvent.objects.filter(tenant=canary.role.tenant).count()

    response = client.get(reverse(f"admin:{page}", args=[canary.role.pk]))
    with_versions = client.get(
        reverse(f"admin:{page}", args=[canary.role.pk]),
        {"old": canary.v1.pk, "new": canary.v2.pk, "versions": [canary.v1.pk]},
    )

    assert response.status_code == with_versions.status_code == 404
    assert AuditEvent.objects.filter(tenant=canary.role.tenant).count() == events


@pytest.mark.parametrize("page", ["roles_role_compare", "roles_role_canary_compare"])
def test_the_pages_are_linked_from_the_role(client, users, canary, page):
    client.force_login(users["reviewer.harbor"])

    role_page = client.get(reverse("admin:roles_role_change", args=[canary.role.pk]))

    assert reverse(f"admin:{page}", args=[canary.role.pk]) in role_page.content.decode()
