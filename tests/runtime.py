"""Driving the runtime from tests through the code production runs (desk.worker), not a
second implementation of it."""

from __future__ import annotations

from asgiref.sync import async_to_sync

from desk import engine, worker
from desk.models import Run


def advance(*runs: Run | int) -> dict[str, int]:
    """Run the production executor for exactly these runs until each parks, ends or fails."""
    ids = [getattr(run, "pk", run) for run in runs]
    return worker.work(run_id=ids[0], only=ids)


def lease(run: Run, *, owner: str) -> engine.Lease | None:
    """The run's next waiting step, leased to `owner` as a worker task would."""
    return engine.advance(run_id=run.pk, tenant_id=run.tenant_id, owner=owner).lease


def execute(lease: engine.Lease) -> engine.Outcome:
    """Execute a leased step as a worker task does (its model call, within its deadline)."""
    return async_to_sync(worker.execute)(lease, worker.Limits())
