"""Driving the runtime from tests through the code production runs (desk.worker), not a
second implementation of it."""

from __future__ import annotations

from datetime import datetime

from asgiref.sync import async_to_sync
from django.db.models import F

from desk import engine, worker
from desk.models import Run


def advance(*runs: Run | int) -> dict[str, int]:
    """Run the production executor for exactly these runs until each parks, ends or fails."""
    ids = [getattr(run, "pk", run) for run in runs]
    return worker.work(run_id=ids[0], only=ids)


def backdate(run: Run, *, created_at: datetime) -> Run:
    """The run as if started at `created_at`: its service-level deadline (Run.sla_due_at)
    moves with it, as start_run would have set it."""
    earlier = run.created_at - created_at
    Run.objects.filter(pk=run.pk).update(
        created_at=created_at, sla_due_at=F("sla_due_at") - earlier
    )
    run.refresh_from_db()
    return run


def lease(run: Run, *, owner: str) -> engine.Lease | None:
    """The run's next waiting step, leased to `owner` as a worker task would."""
    return engine.advance(run_id=run.pk, tenant_id=run.tenant_id, owner=owner).lease


def execute(lease: engine.Lease) -> engine.Outcome:
    """Execute a leased step as a worker task does (its model call, within its deadline)."""
    return async_to_sync(worker.execute)(lease, worker.Limits())
