"""Sweeps cost what is due, not what is open (issue 12): each reads only the rows whose
deadline has passed (a run's service-level deadline, an approval's next rung, a step's
lease or its wait for a worker), so runs parked at a review cost nothing per round."""

from __future__ import annotations

import importlib
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals.models import ApprovalRequest, Escalation
from approvals.services import sweep_approvals
from desk import services
from desk.models import Run
from desk.selectors import runs_at_service_level
from roles.models import RoleVersion
from tests.queries import page_statements
from tests.runtime import advance, backdate

TARGET = timedelta(minutes=60)  # the intake role's target turnaround (tests.admin asserts it)
SWEEPS = {
    "reap": services.reap,
    "sweep_approvals": sweep_approvals,
    "escalate_service_levels": services.escalate_service_levels,
}


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Doorbells go nowhere, and the broker's queue is empty."""
    monkeypatch.setattr("desk.doorbell.async_task", lambda func, **kw: None)
    monkeypatch.setattr("desk.doorbell.any_waiting", lambda: False)


@pytest.fixture
def park(start_intake):
    """Runs taken to their review gate, each waiting for approval."""

    def park(count: int) -> list[Run]:
        runs = []
        for i in range(count):
            run = start_intake(subject=f"Parked {i}")
            advance(run)
            run.refresh_from_db()
            assert run.status == Run.Status.WAITING_APPROVAL
            runs.append(run)
        return runs

    return park


def sweep_once(name: str, now) -> tuple[dict, list[str]]:
    """One round of a sweep at `now`: what it did, and the SQL it ran."""
    with CaptureQueriesContext(connection) as captured:
        result = SWEEPS[name](now=now)
    return result, page_statements(captured)


def escalated(runs: list[Run]) -> set[int]:
    return set(
        Run.objects.filter(pk__in=[r.pk for r in runs], sla_escalated_at__isnull=False).values_list(
            "pk", flat=True
        )
    )


class TestParkedRunsCostNothing:
    def test_each_sweep_runs_as_many_queries_for_40_parked_runs_as_for_3(self, park):
        park(3)
        now = timezone.now()
        few = {name: sweep_once(name, now) for name in SWEEPS}
        park(37)

        many = {name: sweep_once(name, now) for name in SWEEPS}

        for name in SWEEPS:
            assert len(many[name][1]) == len(few[name][1]), name
        for result, _ in [*few.values(), *many.values()]:
            assert not any(result.values()), result
        assert Run.objects.filter(status=Run.Status.WAITING_APPROVAL).count() == 40

    def test_each_sweep_filters_by_its_deadline_column(self, park):
        park(1)
        now = timezone.now()

        sql = {name: "\n".join(sweep_once(name, now)[1]) for name in SWEEPS}

        assert re.search(r'WHERE .*"desk_run"\."sla_due_at" <=', sql["escalate_service_levels"])
        assert 'ORDER BY "desk_run"."sla_due_at"' in sql["escalate_service_levels"]
        # The deadline is read, not computed from each run's role version.
        assert "roles_roleversion" not in sql["escalate_service_levels"]
        assert re.search(
            r'WHERE .*"approvals_approvalrequest"\."next_action_at" <=', sql["sweep_approvals"]
        )
        assert re.search(r'WHERE .*"desk_steprun"\."lease_expires_at" <', sql["reap"])
        assert re.search(r'WHERE .*"desk_steprun"\."ready_at" <', sql["reap"])

    def test_the_sweeps_deadlines_have_their_partial_indexes(self, db):
        def indexes(table: str) -> set[str]:
            with connection.cursor() as cursor:
                return set(connection.introspection.get_constraints(cursor, table))

        assert {"run_sla_due", "run_queued"} <= indexes("desk_run")
        assert {"steprun_ready_since"} <= indexes("desk_steprun")
        assert {"approval_ladder_due", "approval_not_notified"} <= indexes(
            "approvals_approvalrequest"
        )


class TestServiceLevelDeadline:
    def test_a_run_is_given_its_deadline_when_started(self, start_intake):
        run = start_intake()

        assert run.sla_due_at == run.created_at + TARGET
        run.refresh_from_db()
        assert run.sla_due_at == run.created_at + TARGET

    def test_only_the_runs_past_their_deadline_are_escalated(self, park):
        late, also_late, on_time = park(3)
        now = timezone.now()
        for run in (late, also_late):
            backdate(run, created_at=now - TARGET - timedelta(minutes=1))

        result = services.escalate_service_levels(now=now)

        assert result == {"escalated": 2}
        assert escalated([late, also_late, on_time]) == {late.pk, also_late.pk}
        assert set(Escalation.objects.filter(kind="sla").values_list("run_id", flat=True)) == {
            late.pk,
            also_late.pk,
        }
        assert services.escalate_service_levels(now=now) == {"escalated": 0}

    def test_a_second_before_its_deadline_a_run_is_at_risk_a_second_after_escalated(self, park):
        [run] = park(1)
        before, after = run.sla_due_at - timedelta(seconds=1), run.sla_due_at + timedelta(seconds=1)

        assert services.sla_state(run, now=before) == "at_risk"
        assert services.escalate_service_levels(now=before) == {"escalated": 0}
        assert list(runs_at_service_level(Run.objects.all(), "at_risk", now=before)) == [run]
        assert not runs_at_service_level(Run.objects.all(), "breached", now=before).exists()

        assert services.sla_state(run, now=after) == "breached"
        assert list(runs_at_service_level(Run.objects.all(), "breached", now=after)) == [run]
        assert services.escalate_service_levels(now=after) == {"escalated": 1}
        run.refresh_from_db()
        assert run.sla_escalated_at == after

    def test_at_risk_starts_when_the_share_of_the_target_is_used(self, start_intake):
        run = start_intake()
        at_risk_from = run.created_at + TARGET * services.SLA_AT_RISK_SHARE
        just_before = at_risk_from - timedelta(microseconds=1)
        runs = Run.objects.filter(pk=run.pk)

        assert services.sla_state(run, now=just_before) == "on_track"
        assert not runs_at_service_level(runs, "at_risk", now=just_before).exists()
        assert services.sla_state(run, now=at_risk_from) == "at_risk"
        assert runs_at_service_level(runs, "at_risk", now=at_risk_from).exists()

    def test_a_run_whose_version_has_no_target_gets_no_deadline_and_is_never_escalated(
        self, intake_role, start_intake
    ):
        # Validation refuses such a bundle (roles.workflow); one written around it.
        version = intake_role.active_version
        RoleVersion.objects.filter(pk=version.pk).update(
            definition={**version.definition, "target_turnaround_minutes": None}
        )
        run = start_intake()
        advance(run)
        run.refresh_from_db()
        much_later = run.created_at + timedelta(days=365)

        result = services.escalate_service_levels(now=much_later)

        assert run.is_open
        assert run.sla_due_at is None
        assert result == {"escalated": 0}
        assert escalated([run]) == set()
        assert services.sla_state(run, now=much_later) == "unmeasured"
        for level in ("at_risk", "breached"):
            assert not runs_at_service_level(Run.objects.all(), level, now=much_later).exists()

    def test_a_version_that_leaves_the_target_out_has_the_default_one(
        self, intake_role, start_intake
    ):
        version = intake_role.active_version
        definition = {
            k: v for k, v in version.definition.items() if k != "target_turnaround_minutes"
        }
        RoleVersion.objects.filter(pk=version.pk).update(definition=definition)
        run = start_intake()
        due = run.created_at + timedelta(minutes=240)  # roles.workflow.BUNDLE_DEFAULTS
        before = due - timedelta(minutes=1)

        assert run.sla_due_at == due
        assert services.sla_state(run, now=before) == "at_risk"
        assert list(runs_at_service_level(Run.objects.all(), "at_risk", now=before)) == [run]
        assert services.escalate_service_levels(now=due) == {"escalated": 1}

    def test_a_closed_run_is_not_escalated(self, park, system_actor):
        [run] = park(1)
        services.cancel_run(run=run, actor=system_actor, reason="Not needed")

        assert services.escalate_service_levels(now=run.sla_due_at + TARGET) == {"escalated": 0}


class TestDeadlinesOfExistingRuns:
    """desk/migrations/0009: runs started before the column get their deadline."""

    migration = importlib.import_module("desk.migrations.0009_sweep_deadlines")

    def test_open_and_failed_runs_get_their_deadline_closed_ones_none(
        self, park, start_intake, system_actor
    ):
        parked, failed, cancelled = park(3)
        queued = start_intake(subject="Queued")
        Run.objects.filter(pk=failed.pk).update(status=Run.Status.FAILED)
        services.cancel_run(run=cancelled, actor=system_actor, reason="Not needed")
        runs = [parked, failed, cancelled, queued]
        Run.objects.filter(pk__in=[r.pk for r in runs]).update(sla_due_at=None)

        filled = self.migration.fill_deadlines(Run, RoleVersion, batch=2)

        due = dict(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("pk", "sla_due_at"))
        assert filled == 3
        assert due == {
            parked.pk: parked.created_at + TARGET,
            failed.pk: failed.created_at + TARGET,
            cancelled.pk: None,
            queued.pk: queued.created_at + TARGET,
        }
        assert self.migration.fill_deadlines(Run, RoleVersion) == 0

    def test_a_run_whose_version_has_no_usable_target_is_left_without(self, intake_role, park):
        [run] = park(1)
        version = intake_role.active_version
        RoleVersion.objects.filter(pk=version.pk).update(
            definition={**version.definition, "target_turnaround_minutes": None}
        )
        Run.objects.filter(pk=run.pk).update(sla_due_at=None)

        filled = self.migration.fill_deadlines(Run, RoleVersion)

        run.refresh_from_db()
        assert filled == 0
        assert run.sla_due_at is None

    def test_filled_deadlines_are_what_start_run_writes(self, park):
        runs = park(3)
        written = {r.pk: r.sla_due_at for r in runs}
        Run.objects.filter(pk__in=written).update(sla_due_at=None)

        self.migration.fill_deadlines(Run, RoleVersion, batch=1)

        assert dict(Run.objects.filter(pk__in=written).values_list("pk", "sla_due_at")) == written


def test_an_approval_past_its_next_rung_is_the_only_one_the_sweep_takes(park):
    overdue, waiting = park(2)
    past = timezone.now() - timedelta(seconds=1)
    ApprovalRequest.objects.filter(run=overdue).update(next_action_at=past)
    waiting_next = ApprovalRequest.objects.get(run=waiting).next_action_at

    result = sweep_approvals()

    assert sum(result.values()) == 1
    assert ApprovalRequest.objects.get(run=overdue).next_action_at != past
    assert ApprovalRequest.objects.get(run=waiting).next_action_at == waiting_next
