"""Versions compared over one period (roles.comparison.compare_versions)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.services import Actor
from desk.models import Run
from desk.services import start_run
from roles.comparison import Ratio, compare_versions
from roles.models import Role
from tests.admin.conftest import NORTHWIND_INPUT
from tests.roles.conftest import build_v1_runs, build_v2_runs


def figures_of(canary):
    return compare_versions(canary.role, [canary.v1, canary.v2], **canary.period)


def test_each_version_is_figured_with_the_counts_behind_each_rate(canary):
    v1, v2 = figures_of(canary)

    assert (v1.version, v2.version) == (canary.v1, canary.v2)
    assert v1.runs_started == 4
    assert v1.completed == Ratio(2, 4)
    assert v1.failed == Ratio(0, 4)
    assert v1.still_open == 1
    assert v1.decisions == 3
    assert v1.approval_rate == Ratio(2, 3)
    assert v1.edit_rate == Ratio(1, 2)
    assert v1.send_back_rate == Ratio(0, 3)
    assert v1.reject_rate == Ratio(1, 3)
    assert (v1.escalated, v1.escalations) == (Ratio(0, 4), 0)
    assert (v1.total_cost, v1.cost_per_run) == (Decimal("0.60"), Decimal("0.15"))
    assert v1.timed_runs == 2
    assert v1.mean_latency == timedelta(minutes=20)
    assert v1.median_latency == timedelta(minutes=10)  # the lower median of 10 and 30

    assert v2.runs_started == 3
    assert v2.completed == Ratio(1, 3)
    assert v2.failed == Ratio(1, 3)
    assert v2.still_open == 1
    assert v2.decisions == 2  # the send-back, then the approval of the redraft
    assert v2.approval_rate == Ratio(1, 2)
    assert v2.edit_rate == Ratio(0, 1)
    assert v2.send_back_rate == Ratio(1, 2)
    assert v2.reject_rate == Ratio(0, 2)
    assert (v2.escalated, v2.escalations) == (Ratio(1, 3), 1)
    assert (v2.total_cost, v2.cost_per_run) == (Decimal("0.60"), Decimal("0.20"))
    assert v2.timed_runs == 1  # the failed run's finish time is no latency
    assert v2.mean_latency == v2.median_latency == timedelta(minutes=6)


def test_a_ratio_shows_its_counts():
    assert str(Ratio(2, 3)) == "67% (2 of 3)"
    assert str(Ratio(0, 0)) == "— (0 of 0)"
    assert Ratio(0, 0).value is None


def test_runs_outside_the_period_are_not_counted(canary):
    (v1,) = compare_versions(
        canary.role,
        [canary.v1],
        since=canary.now - timedelta(hours=1),
        until=canary.now + timedelta(minutes=1),
    )

    assert v1.runs_started == 0
    assert (v1.completed, v1.approval_rate) == (Ratio(0, 0), Ratio(0, 0))
    assert (v1.cost_per_run, v1.mean_latency, v1.median_latency) == (None, None, None)


def test_a_version_without_runs_has_empty_figures(canary, intake_role):
    canary.use(canary.v1)
    (v2,) = compare_versions(
        intake_role, [canary.v2], since=canary.now + timedelta(days=1), until=canary.now
    )

    assert (v2.runs_started, v2.decisions, v2.total_cost) == (0, 0, Decimal(0))


def test_the_query_count_does_not_grow_with_the_runs(canary):
    versions = [canary.v1, canary.v2]
    with CaptureQueriesContext(connection) as before:
        compare_versions(canary.role, versions, **canary.period)

    build_v1_runs(canary)  # twice the runs, decisions and escalations
    build_v2_runs(canary)
    with CaptureQueriesContext(connection) as after:
        doubled = compare_versions(canary.role, versions, **canary.period)

    assert len(before.captured_queries) == len(after.captured_queries) == 4
    assert [f.runs_started for f in doubled] == [8, 6]
    assert [f.decisions for f in doubled] == [6, 4]


def test_another_tenants_runs_are_never_counted(canary, northwind, users):
    # Northwind runs its own intake coordinator in the same period; one of its rows even
    # claims harbor's role and version (as a forged or corrupted row would).
    theirs = Role.objects.get(tenant=northwind, slug="intake-coordinator")
    runs = [
        start_run(
            tenant=northwind,
            role=theirs,
            input=NORTHWIND_INPUT,
            actor=Actor.for_user(users["ops"]),
            via=Run.Via.ADMIN,
        )
        for _ in range(2)
    ]
    Run.objects.filter(pk=runs[0].pk).update(role=canary.role, role_version=canary.v1)

    v1, v2 = figures_of(canary)

    assert (v1.runs_started, v2.runs_started) == (4, 3)
    (own,) = compare_versions(theirs, [theirs.active_version], **canary.period)
    assert own.runs_started == 1


def test_a_version_of_another_role_is_refused(canary, northwind):
    theirs = Role.objects.get(tenant=northwind, slug="intake-coordinator")

    with pytest.raises(ValueError, match="Not versions of intake-coordinator"):
        compare_versions(canary.role, [canary.v1, theirs.active_version], **canary.period)
