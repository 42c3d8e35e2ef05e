"""The filters of the big changelists (runs, approval requests, audit events, the outbox) build
their choices without reading the table (issue 12): a related filter offers the related
rows of the user's tenants, a text column's filter the values of the newest rows, a date
filter fixed ranges. Each still applies any value asked for, and none shows another
tenant's values.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.services import Actor, record
from desk.models import Run
from roles.models import Role
from tenants.admin_pagination import RecentValuesFilter
from tests.admin.conftest import parked
from tests.admin.test_page_queries import page_queries
from tests.runtime import backdate

pytestmark = pytest.mark.django_db


def filter_choices(response, title: str) -> list[str]:
    """The labels a changelist's filter offers (its "All" first)."""
    for spec in response.context["cl"].filter_specs:
        if str(spec.title).startswith(title):
            return [str(choice["display"]) for choice in spec.choices(response.context["cl"])]
    raise AssertionError(f"no filter {title!r}")


def filter_link(response, title: str, display: str) -> str:
    """The query string of one of a filter's choices, as the page links it."""
    for spec in response.context["cl"].filter_specs:
        if str(spec.title).startswith(title):
            for choice in spec.choices(response.context["cl"]):
                if str(choice["display"]) == display:
                    return choice["query_string"]
    raise AssertionError(f"no choice {display!r} in filter {title!r}")


def test_the_role_filter_offers_roles_that_have_no_runs_yet(client, users, harbor):
    # Choices from the roles of the user's tenants, not from the distinct roles of the runs.
    Role.objects.create(tenant=harbor, slug="month-end", name="Month-end reporter")
    client.force_login(users["reviewer.harbor"])

    response = client.get(reverse("admin:desk_run_changelist"))

    assert not Run.objects.exists()
    assert "Month-end reporter (harbor-legal)" in " ".join(filter_choices(response, "role"))


def test_the_role_filter_offers_no_role_of_another_tenant(client, users, northwind):
    Role.objects.create(tenant=northwind, slug="payroll", name="Payroll clerk")
    client.force_login(users["reviewer.harbor"])

    response = client.get(reverse("admin:desk_run_changelist"))

    assert "Payroll clerk" not in " ".join(filter_choices(response, "role"))
    other = Role.objects.get(tenant=northwind, slug="payroll")
    asked = client.get(reverse("admin:desk_run_changelist"), {"role__id__exact": other.pk})
    assert asked.status_code == 200
    assert list(asked.context["cl"].result_list) == []


def events(tenant, *actions: str) -> None:
    for action in actions:
        record(tenant=tenant, actor=Actor.system("tests"), action=action)


def test_the_action_filter_offers_the_actions_of_the_newest_events(
    client, users, harbor, monkeypatch
):
    monkeypatch.setattr(RecentValuesFilter, "recent_rows", 3)
    client.force_login(users["auditor"])  # signed in first: its own events are older
    events(harbor, "test.oldest", "test.newer", "test.newer", "test.newest")
    trail = reverse("admin:audit_auditevent_changelist")

    offered = filter_choices(client.get(trail), "action")

    assert "test.newest" in offered and "test.newer" in offered
    assert "test.oldest" not in offered  # older than the newest 3 (a bounded read)
    asked = client.get(trail, {"action": "test.oldest"})  # still one click (or URL) away
    assert [e.action for e in asked.context["cl"].result_list] == ["test.oldest"]
    assert "test.oldest" in filter_choices(asked, "action")  # and shown as chosen


def test_the_action_filter_offers_no_action_of_another_tenant(client, users, harbor, northwind):
    events(harbor, "test.harbor")
    events(northwind, "test.northwind")
    reader = users["auditor"]
    reader.memberships.filter(tenant=northwind).delete()
    client.force_login(reader)
    trail = reverse("admin:audit_auditevent_changelist")

    offered = filter_choices(client.get(trail), "action")
    asked = client.get(trail, {"action": "test.northwind"})

    assert "test.harbor" in offered and "test.northwind" not in offered
    assert list(asked.context["cl"].result_list) == []


def test_the_action_filter_reads_a_bounded_number_of_events(client, users, harbor):
    events(harbor, "test.one")
    client.force_login(users["auditor"])

    statements = page_queries(client, reverse("admin:audit_auditevent_changelist"))

    reads = [sql for sql in statements if '"action"' in sql and "DISTINCT" in sql.upper()]
    assert reads == []  # no SELECT DISTINCT action over the table
    limited = [sql for sql in statements if sql.startswith('SELECT "audit_auditevent"."action"')]
    assert len(limited) == 1 and limited[0].endswith(f"LIMIT {RecentValuesFilter.recent_rows}")


def test_runs_are_filtered_by_fixed_date_ranges_not_a_date_hierarchy(client, users, harbor):
    recent = parked(harbor, users["ops"])
    old = parked(harbor, users["ops"])
    backdate(old, created_at=timezone.now() - timedelta(days=40))
    client.force_login(users["ops"])
    runs = reverse("admin:desk_run_changelist")

    page = client.get(runs)
    past_week = client.get(runs + filter_link(page, "created", "Past 7 days"))

    assert "Past 7 days" in filter_choices(page, "created")
    assert page.context["cl"].date_hierarchy is None
    assert [r.pk for r in past_week.context["cl"].result_list] == [recent.pk]


def test_audit_events_are_filtered_by_fixed_date_ranges(client, users, harbor, monkeypatch):
    long_ago = timezone.now() - timedelta(days=400)
    with monkeypatch.context() as patched:  # events are append-only: written as of then
        patched.setattr(timezone, "now", lambda: long_ago)
        events(harbor, "test.old")
    events(harbor, "test.today")
    client.force_login(users["auditor"])
    trail = reverse("admin:audit_auditevent_changelist")

    page = client.get(trail)
    today = client.get(trail + filter_link(page, "created", "Today"))

    assert "This year" in filter_choices(page, "created")
    actions = {e.action for e in today.context["cl"].result_list}
    assert "test.today" in actions and "test.old" not in actions
