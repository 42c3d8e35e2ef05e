"""What a worker task does: keep many runs moving at once in one process.

A model call is I/O, so a task does not block on it: it leases ready steps of up to
DESK_WORKER_BATCH runs, awaits their model calls together (async httpx), and checkpoints
each result as it lands, running every run's autonomous steps back to back. Database work
runs in one thread beside the event loop; model calls are bounded per process and per
tenant. The task ends when no run it can see has a ready step.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import deque

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import F, Window
from django.db.models.functions import RowNumber

from desk import engine
from desk.models import StepRun
from desk.providers import ProviderError, get_provider
from tenants import rls

logger = logging.getLogger(__name__)


def db(func):
    """Run ORM code from the event loop, in the thread that called `work`."""
    return sync_to_async(func, thread_sensitive=True)


def ready_runs(*, limit: int, exclude: set[int]) -> list[tuple[int, int]]:
    """(run id, tenant id) of runs with a ready step, in weighted fair order across tenants.

    Each tenant's oldest ready runs are interleaved by priority weight, so one tenant's
    backlog cannot push another tenant's work to the back. Reads ids only, across
    tenants: the scheduler is the one component that does.
    """
    with rls.platform_context():
        ranked = (
            StepRun.objects.filter(status=StepRun.Status.READY)
            .exclude(run_id__in=exclude)
            .annotate(
                rank=Window(RowNumber(), partition_by=[F("tenant_id")], order_by=F("run_id").asc())
            )
            .annotate(turn=F("rank") * 1.0 / F("tenant__priority_weight"))
            .order_by("turn", "run_id")
            .values_list("run_id", "tenant_id")[:limit]
        )
        return list(ranked)


def _refresh_connection() -> None:
    # Drop a connection the database closed (say, after a restart) before using it; never
    # inside a caller's transaction.
    if not connection.in_atomic_block:
        close_old_connections()


class Limits:
    """Bounds on model calls in flight: per process and per tenant."""

    def __init__(self):
        self.total = asyncio.Semaphore(settings.DESK_MODEL_CONCURRENCY)
        self.per_tenant: dict[int, asyncio.Semaphore] = {}
        self.in_flight = 0
        self.peak = 0

    def tenant(self, tenant_id: int) -> asyncio.Semaphore:
        if tenant_id not in self.per_tenant:
            self.per_tenant[tenant_id] = asyncio.Semaphore(settings.DESK_TENANT_MODEL_CONCURRENCY)
        return self.per_tenant[tenant_id]


async def execute_async(lease: engine.Lease, limits: Limits) -> engine.Outcome:
    """Like engine.execute, awaiting model calls instead of blocking on them."""
    if lease.step.kind != "llm":
        return await db(engine.execute)(lease)
    try:
        # Tenant first: a tenant at its bound must not sit on process-wide slots.
        async with limits.tenant(lease.run.tenant_id), limits.total:
            limits.in_flight += 1
            limits.peak = max(limits.peak, limits.in_flight)
            try:
                response = await get_provider().acomplete(engine.model_request(lease))
            finally:
                limits.in_flight -= 1
    except ProviderError as exc:
        return engine.Outcome(error=str(exc), error_code=exc.code)
    except Exception as exc:  # fail the step, never the task
        logger.exception("step %s of run %s crashed", lease.step.pk, lease.run.pk)
        return engine.Outcome(
            error=f"{type(exc).__name__}: {exc}",
            error_code="crash",
            extra={"traceback": traceback.format_exc(limit=5)},
        )
    return engine.Outcome(
        output=response.output,
        model=response.model,
        prompt_tokens=response.prompt_tokens,
        completion_tokens=response.completion_tokens,
    )


async def _advance(run_id: int, tenant_id: int, limits: Limits) -> int:
    """Execute one run's steps until it parks, ends or fails; return steps executed."""
    executed = 0
    for _ in range(engine.MAX_STEPS_PER_TASK):
        lease = await db(engine.lease_next_step)(run_id=run_id, tenant_id=tenant_id)
        if lease is None:
            break
        executed += 1
        if lease.settled is not None:
            settled = lease.settled  # a quick tool, done inside the lease's transaction
        else:
            settled = await db(engine.checkpoint)(lease, await execute_async(lease, limits))
        if not settled:
            break
    return executed


async def _work(seed: list[tuple[int, int]], batch: int) -> dict[str, int]:
    await db(_refresh_connection)()
    limits = Limits()
    candidates = deque(seed)
    active: dict[asyncio.Task, int] = {}
    idle: set[int] = set()  # runs that had nothing to do for this task: don't fetch again
    executed = 0
    # Stop taking new runs in time to finish well within django-q2's task timeout; the
    # task then rings for a successor if work is left.
    deadline = time.monotonic() + settings.DESK_WORKER_TASK_SECONDS
    out_of_time = False
    while True:
        out_of_time = time.monotonic() > deadline
        while len(active) < batch and not out_of_time:
            if not candidates:
                busy = set(active.values()) | idle
                candidates.extend(await db(ready_runs)(limit=batch - len(active), exclude=busy))
                if not candidates:
                    break
            run_id, tenant_id = candidates.popleft()
            if run_id in active.values() or run_id in idle:
                continue
            active[asyncio.create_task(_advance(run_id, tenant_id, limits))] = run_id
        if not active:
            break
        done, _ = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            run_id = active.pop(task)
            try:
                steps = task.result()
            except Exception:
                # A lost connection, say: the step's lease expires and the reaper hands it on.
                logger.exception("run %s: advancing failed", run_id)
                steps = 0
            executed += steps
            if not steps:
                idle.add(run_id)
    provider = get_provider()
    if hasattr(provider, "aclose"):
        await provider.aclose()
    if out_of_time and await db(ready_runs)(limit=1, exclude=idle):
        await db(_ring_successor)()
    return {"steps": executed, "peak_model_calls": limits.peak}


def _ring_successor() -> None:
    from django_q.tasks import async_task

    async_task("desk.tasks.advance_run", run_id=None, q_options={"group": "runs"})


def work(*, run_id: int | None = None, batch: int | None = None) -> dict[str, int]:
    """Advance `run_id` and every other run with ready work, many at once."""
    seed = []
    if run_id is not None:
        tenant_id = rls.tenant_of("desk_run", run_id)
        if tenant_id is not None:
            seed.append((run_id, tenant_id))
    # async_to_sync (not asyncio.run) so that database work runs in this very thread, on the
    # connection (and transaction) django-q or the caller already manages.
    return async_to_sync(_work)(seed, batch or settings.DESK_WORKER_BATCH)
