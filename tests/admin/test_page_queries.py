"""The admin's main pages cost a fixed number of queries (issue 12, an admin that stays fast
at a million runs): the same for 3 runs as for 30 (with their steps, approval requests,
escalations, decisions, outbox messages and audit events), and at most 15. No page counts
a big table whole: any COUNT(*) is over a LIMITed subquery (tenants/admin_pagination.py).

Each page is asked for once to warm the caches a first request fills, then measured, as a
person who works there would open it: the reviewer their queue, the operator the runs,
escalations, outbox and tenants, the auditor the audit trail.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from approvals.gate import ApprovalGate
from approvals.models import ApprovalRequest
from approvals.services import decide
from desk.admin import RunAdmin
from desk.models import Run
from tests.admin.conftest import NORTHWIND_INPUT, parked
from tests.conftest import INTAKE_INPUT
from tests.queries import page_statements
from tests.runtime import advance

BUDGET = 15
FEW, MANY = 3, 30  # with 3, every page shows a row (harbor waits in one run)


def add_runs(count: int, *, harbor, northwind, users) -> None:
    """`count` intake runs, alternating between the two demo tenants, each parked at its
    review: one in three is then approved and completed (its e-mail in the outbox), one in
    three escalated, the rest left waiting."""
    for i in range(count):
        tenant, reviewer, input = (
            (harbor, users["reviewer.harbor"], INTAKE_INPUT)
            if i % 2 == 0
            else (northwind, users["reviewer.northwind"], NORTHWIND_INPUT)
        )
        run = parked(tenant, users["ops"], input)
        if i % 3 == 0:
            decide(
                request=ApprovalRequest.objects.get(run=run),
                reviewer=reviewer,
                verdict="approve",
                comment="fine",
            )
            advance(run.pk)
        elif i % 3 == 1:
            with transaction.atomic():
                ApprovalGate().open_escalation(
                    run=run, step=run.steps.get(key="draft"), reason="Sender unknown"
                )


def page_queries(client, url: str) -> list[str]:
    """The statements of one request for `url` (after a first, warming one)."""
    assert client.get(url).status_code == 200
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, url
    return page_statements(captured)


def assert_flat(client, urls: list[str], grow) -> None:
    """Each page costs the same before and after `grow()` adds rows, and at most BUDGET."""
    few = {url: page_queries(client, url) for url in urls}
    grow()
    for url in urls:
        many = page_queries(client, url)
        shapes = Counter(sql[:90] for sql in many)
        shapes.subtract(sql[:90] for sql in few[url])
        changed = {shape: n for shape, n in shapes.items() if n}
        assert len(many) == len(few[url]), (url, "more (+) or fewer (-) of:", changed)
        assert len(many) <= BUDGET, (url, many)


@pytest.fixture
def grow(harbor, northwind, users):
    """Start with FEW runs; calling the result adds runs up to MANY."""
    add_runs(FEW, harbor=harbor, northwind=northwind, users=users)
    return lambda: add_runs(MANY - FEW, harbor=harbor, northwind=northwind, users=users)


def test_the_index_costs_the_same_queries_for_3_and_30_runs(client, users, grow):
    client.force_login(users["reviewer.harbor"])

    assert_flat(client, [reverse("admin:index")], grow)


def test_runs_list_costs_the_same_queries_for_3_and_30_runs(client, users, grow, monkeypatch):
    # Ten a page: one page of 3 runs, then the first of 3 pages of 30.
    monkeypatch.setattr(RunAdmin, "list_per_page", 10)
    client.force_login(users["ops"])
    runs = reverse("admin:desk_run_changelist")

    assert_flat(
        client,
        [runs, f"{runs}?status__exact=waiting_approval", f"{runs}?q=intake"],
        grow,
    )


def test_a_runs_page_costs_the_same_queries_for_3_and_30_runs(client, users, grow, harbor):
    client.force_login(users["ops"])
    run = Run.objects.filter(tenant=harbor).order_by("created_at").first()

    assert_flat(client, [reverse("admin:desk_run_change", args=[run.pk])], grow)


def test_the_approvals_queue_costs_the_same_queries_for_3_and_30_runs(client, users, grow):
    client.force_login(users["reviewer.harbor"])
    queue = reverse("admin:approvals_approvalrequest_changelist")

    assert_flat(client, [queue, f"{queue}?inbox=all&status=all"], grow)


def test_escalations_cost_the_same_queries_for_3_and_30_runs(client, users, grow):
    client.force_login(users["ops"])

    assert_flat(client, [reverse("admin:approvals_escalation_changelist")], grow)


def test_the_audit_trail_costs_the_same_queries_for_3_and_30_runs(client, users, grow):
    client.force_login(users["auditor"])
    events = reverse("admin:audit_auditevent_changelist")

    assert_flat(client, [events, f"{events}?action=run.started"], grow)


def test_the_outbox_costs_the_same_queries_for_3_and_30_runs(client, users, grow):
    client.force_login(users["ops"])

    assert_flat(client, [reverse("admin:desk_outboxmessage_changelist")], grow)


def test_the_tenant_pages_cost_the_same_queries_for_3_and_30_runs(client, users, grow, harbor):
    client.force_login(users["ops"])

    assert_flat(
        client,
        [
            reverse("admin:tenants_tenant_changelist"),
            reverse("admin:tenants_tenant_change", args=[harbor.pk]),
        ],
        grow,
    )


# --- no count of a whole big table ------------------------------------------------------------

COUNT = re.compile(r"COUNT\(\*\)", re.IGNORECASE)
BOUNDED_COUNT = re.compile(
    r"^SELECT COUNT\(\*\) FROM \(SELECT .* LIMIT \d+\) subquery$", re.IGNORECASE | re.DOTALL
)


def test_the_big_changelists_count_no_table_whole(client, users, harbor, northwind):
    add_runs(FEW, harbor=harbor, northwind=northwind, users=users)
    pages = {
        "reviewer.harbor": [
            "admin:index",
            "admin:approvals_approvalrequest_changelist",
            "admin:desk_run_changelist",
        ],
        "ops": [
            "admin:desk_run_changelist",
            "admin:approvals_escalation_changelist",
            "admin:desk_outboxmessage_changelist",
        ],
        "auditor": ["admin:audit_auditevent_changelist"],
    }
    counts = []
    for username, names in pages.items():
        client.force_login(users[username])
        for name in names:
            for sql in page_queries(client, reverse(name)):
                if COUNT.search(sql):
                    counts.append(sql)
                    assert BOUNDED_COUNT.match(sql), (name, sql)

    assert counts  # the pages do count, within a limit


# --- the capped paginator ---------------------------------------------------------------------


def test_a_long_runs_list_says_at_least_and_still_opens_any_page(
    client, users, harbor, northwind, monkeypatch
):
    add_runs(12, harbor=harbor, northwind=northwind, users=users)
    # One run a page: the first page counts no further than 10 pages ahead, 10 runs (and
    # "Show all" for at most 5).
    monkeypatch.setattr(RunAdmin, "list_per_page", 1)
    monkeypatch.setattr(RunAdmin, "list_max_show_all", 5)
    assert Run.objects.count() == 12
    client.force_login(users["ops"])
    runs = reverse("admin:desk_run_changelist")

    first = client.get(runs).content.decode()

    assert "10+ runs" in first
    assert "12 runs" not in first
    assert 'class="end"' not in first  # no last page: it was not counted
    assert 'href="?p=4"' in first and 'href="?p=5"' not in first  # this page, 3 more, "…"
    assert "Select all 10+ runs" in first and "All 10+ selected" in first
    assert "?all=" not in first  # not "Show all": the count is past its limit
    assert "results (" not in first  # nothing beside the search box: the whole table
    assert "10+ results (" in client.get(f"{runs}?q=intake").content.decode()
    third = client.get(f"{runs}?p=3").content.decode()  # counts to page 12: exact
    assert "12 runs" in third
    assert 'href="?p=12" class="end"' in third  # Django's last-page link
    assert "12 runs" in client.get(f"{runs}?p=12").content.decode()
    assert client.get(f"{runs}?p=13").status_code == 302  # past the end: Django's ?e=1


def test_a_page_of_runs_is_read_by_its_keys_from_the_table_alone(client, users, grow):
    # One query with the joins let PostgreSQL (blind to what row-level security lets
    # through) join and sort all of a big tenant's runs to keep a page of them.
    client.force_login(users["ops"])

    statements = page_queries(client, reverse("admin:desk_run_changelist"))

    keys = [sql for sql in statements if sql.startswith('SELECT "desk_run"."id" AS "pk" FROM')]
    assert len(keys) == 1 and "JOIN" not in keys[0] and " LIMIT " in keys[0], keys
    rows = [sql for sql in statements if sql.startswith('SELECT "desk_run"."id", "desk_run"')]
    assert len(rows) == 1 and '"desk_run"."id" IN (' in rows[0], rows
    assert " LIMIT " not in rows[0]
