"""Sweeps: one worker per period runs each, failures are recorded, and the reaper keeps work
moving whatever process died (lost doorbells, lost leases, queued runs, undelivered mail)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.models import AuditEvent
from desk import services
from desk.models import Run, StepRun, Sweep
from desk.services.maintenance import SweepSpec
from tests.runtime import advance, lease


@pytest.fixture
def rung(monkeypatch):
    """Doorbells rung, instead of enqueued."""
    calls = []
    monkeypatch.setattr("desk.doorbell.async_task", lambda func, **kw: calls.append((func, kw)))
    monkeypatch.setattr("desk.doorbell.any_waiting", lambda: False)
    return calls


@pytest.fixture
def reap(django_capture_on_commit_callbacks):
    """One reaper round, its doorbells rung as its transactions commit."""

    def run(**kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return services.reap(**kwargs)

    return run


class TestClaims:
    def test_a_sweep_runs_once_per_period_whoever_asks(self, db):
        now = timezone.now()

        first = services.claim_sweep(name="reaper", every_seconds=5, owner="a", now=now)
        second = services.claim_sweep(name="reaper", every_seconds=5, owner="b", now=now)
        later = services.claim_sweep(
            name="reaper", every_seconds=5, owner="b", now=now + timedelta(seconds=6)
        )

        assert (first, second, later) == (True, False, True)
        assert Sweep.objects.get(name="reaper").claimed_by == "b"

    def test_a_failing_sweep_is_recorded_and_does_not_stop_the_others(self, db, monkeypatch):
        def broken(*, now):
            raise RuntimeError("the database is having a bad day")

        monkeypatch.setattr("desk.services.maintenance.boom", broken, raising=False)
        spec = SweepSpec(name="broken", func="desk.services.maintenance.boom", every_seconds=1)

        result = services.run_sweep(spec, owner="a")

        sweep = Sweep.objects.get(name="broken")
        assert result == {"error": "the database is having a bad day"}
        assert sweep.succeeded_at is None
        assert sweep.finished_at is not None
        assert sweep.last_error.startswith("RuntimeError: the database is having a bad day")

    def test_the_sweeper_runs_every_due_sweep(self, demo):
        call_command("desk_sweeper", "--once")

        sweeps = {s.name: s for s in Sweep.objects.all()}
        assert set(sweeps) == {
            "reaper",
            "approvals",
            "service_levels",
            "audit_checkpoints",
            "audit_retention",
        }
        assert all(s.succeeded_at and s.last_error == "" and s.rounds == 1 for s in sweeps.values())


class TestReaper:
    def test_a_dead_workers_step_is_made_ready_and_rung(self, start_intake, rung, reap):
        run = start_intake()
        held = lease(run, owner="host:1:dead")
        StepRun.objects.filter(pk=held.step.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        rung.clear()

        result = reap()

        step = StepRun.objects.get(pk=held.step.pk)
        assert result["expired"] == 1
        assert step.status == StepRun.Status.READY
        assert step.lease_owner == ""
        [event] = AuditEvent.objects.filter(step_id=step.pk, action="step.lease_expired")
        assert event.data == {"owner": "host:1:dead", "attempts": 1}
        assert [kw["run_id"] for _, kw in rung] == [run.pk]

    def test_a_live_lease_is_left_alone(self, start_intake, rung, reap):
        run = start_intake()
        held = lease(run, owner="host:1:alive")

        assert reap()["expired"] == 0
        assert StepRun.objects.get(pk=held.step.pk).lease_owner == "host:1:alive"

    def test_ready_work_whose_doorbell_was_lost_is_rung_once_per_batch(
        self, harbor, start_intake, rung, reap, settings
    ):
        settings.DESK_WORKER_BATCH = 2
        harbor.max_concurrent_runs = 10
        harbor.save()
        runs = [start_intake(subject=f"Lost {i}") for i in range(5)]
        StepRun.objects.filter(run__in=runs).update(
            ready_at=timezone.now() - timedelta(seconds=settings.DESK_STALL_SECONDS + 1)
        )
        rung.clear()

        result = reap()

        assert result["stalled_rung"] == 5
        assert [kw["run_id"] for _, kw in rung] == [runs[0].pk, runs[2].pk, runs[4].pk]

    def test_nothing_is_rung_while_doorbells_wait_on_the_broker(
        self, start_intake, rung, reap, monkeypatch, settings
    ):
        monkeypatch.setattr("desk.doorbell.any_waiting", lambda: True)
        run = start_intake()
        StepRun.objects.filter(run=run).update(
            ready_at=timezone.now() - timedelta(seconds=settings.DESK_STALL_SECONDS + 1)
        )
        rung.clear()

        assert reap()["stalled_rung"] == 0
        assert rung == []

    def test_queued_runs_are_admitted_when_capacity_is_free(self, harbor, start_intake, rung, reap):
        harbor.max_concurrent_runs = 1
        harbor.save()
        first, second = start_intake(subject="One"), start_intake(subject="Two")
        # A slot frees without anyone admitting (as when a worker died mid-admission).
        Run.objects.filter(pk=first.pk).update(status=Run.Status.CANCELLED)

        result = reap()

        assert result["admitted"] == 1
        assert Run.objects.get(pk=second.pk).status == Run.Status.RUNNING
        assert second.steps.get(index=0).status == StepRun.Status.READY

    def test_a_parked_run_is_not_rung(self, parked_intake, rung, reap, settings):
        StepRun.objects.filter(run=parked_intake).update(
            ready_at=timezone.now() - timedelta(hours=1)
        )
        rung.clear()

        assert reap()["stalled_rung"] == 0
        advance(parked_intake)
        assert Run.objects.get(pk=parked_intake.pk).status == Run.Status.WAITING_APPROVAL
