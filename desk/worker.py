"""What a worker task does: keep many runs moving at once in one process. This is the only
executor: the cluster runs it (desk.tasks.advance_run) and tests drive it (`work`).

A model call is I/O, so a task does not block on it: it advances up to DESK_WORKER_BATCH
runs at once, awaits their model calls together (async httpx) and checkpoints each result
as it lands. Database work runs in one thread beside the event loop; model calls are
bounded per process and per tenant, and each step's execution by its deadline. A heartbeat
renews the leases the task holds while their steps execute, so a slow but live model call
keeps its step and a dead worker's steps are taken over once their short leases lapse.
The task ends when no run it can see has a ready step, or hands on to a successor when its
time is up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Collection
from datetime import timedelta

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import connections
from django.db.models import (
    Case,
    Count,
    F,
    IntegerField,
    OuterRef,
    Subquery,
    Value,
    When,
    Window,
)
from django.db.models.functions import Coalesce, RowNumber
from django.utils import timezone

from desk import cluster, doorbell, engine, services
from desk.models import Run, StepRun
from desk.providers import ProviderError, aclose_providers, get_provider
from tenants import rls
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# A reservation is steps per minute: counted over the last minute.
RESERVATION_WINDOW = timedelta(minutes=1)


def db(func):
    """Run ORM code from the event loop, in the thread that called `work`."""
    return sync_to_async(func, thread_sensitive=True)


def ready_runs(
    *, limit: int, exclude: Collection[int], only: Collection[int] | None = None
) -> list[tuple[int, int]]:
    """(run id, tenant id) of running runs with a ready step, in fair order.

    First the runs each tenant's reservation still owes it this minute: a tenant that
    completed fewer steps in the last minute than its reserved steps per minute has that
    many of its runs served ahead of everyone's turn, so a reservation is a promise. Then
    each tenant's runs are interleaved by priority weight, so one tenant's backlog cannot
    push another tenant's work to the back. Within a tenant, the run nearest its service-
    level deadline goes first, then the oldest. Reads ids only, across tenants: the
    scheduler is the one component that does.
    """
    with rls.platform_context():
        ready = StepRun.objects.filter(status=StepRun.Status.READY, run__status=Run.Status.RUNNING)
        if only is not None:
            ready = ready.filter(run_id__in=only)
        ready = ready.exclude(run_id__in=exclude)
        owed = reservation_owed(ready.values("tenant_id"))
        ranked = ready.annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("tenant_id")],
                # Deadline first, then by when the run was made (ids are random, tenants.ids).
                order_by=[
                    F("run__sla_due_at").asc(nulls_last=True),
                    F("run__created_at").asc(),
                    F("run_id").asc(),
                ],
            )
        ).annotate(
            owed=Case(
                *(When(tenant_id=tenant_id, then=Value(n)) for tenant_id, n in owed.items()),
                default=Value(0),
                output_field=IntegerField(),
            ),
            turn=F("rank") * 1.0 / F("tenant__priority_weight"),
        )
        ranked = ranked.annotate(
            reserved=Case(When(rank__lte=F("owed"), then=Value(0)), default=Value(1))
        )
        ordered = ranked.order_by(
            "reserved", "turn", "run__sla_due_at", "run__created_at", "run_id"
        )
        return list(ordered.values_list("run_id", "tenant_id")[:limit])


def reservation_owed(tenants) -> dict[int, int]:
    """Per tenant (of the `tenants` subquery), the steps its reservation still owes it: its
    reserved steps per minute less the steps it completed in the last minute, where more
    than none."""
    since = timezone.now() - RESERVATION_WINDOW
    done = (
        StepRun.objects.filter(
            tenant_id=OuterRef("pk"), status=StepRun.Status.COMPLETED, finished_at__gte=since
        )
        .order_by()
        .values("tenant_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    rows = (
        Tenant.objects.filter(pk__in=tenants, reserved_steps_per_minute__gt=0)
        .annotate(done=Coalesce(Subquery(done), 0))
        .filter(done__lt=F("reserved_steps_per_minute"))
        .values_list("pk", "reserved_steps_per_minute", "done")
    )
    return {pk: reserved - done for pk, reserved, done in rows}


def _refresh_connection() -> None:
    # Drop a connection the database closed (say, after a restart) before using it; never
    # one in a caller's transaction (seed_demo works inside platform work, on the platform
    # connection, which close_old_connections would close).
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


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


async def execute(lease: engine.Lease, limits: Limits) -> engine.Outcome:
    """Execute a leased step (a model call, or a tool that waits on the network) within its
    deadline; never raises."""
    try:
        return await asyncio.wait_for(_execute(lease, limits), lease.deadline_seconds)
    except TimeoutError:
        return engine.Outcome(
            error=f"the step did not finish within {lease.deadline_seconds:g} s",
            error_code="timeout",
        )
    except Exception as exc:  # fail the step, never the task
        logger.exception("step %s of run %s crashed", lease.step.pk, lease.run.pk)
        return engine.Outcome.crashed(exc)


async def _execute(lease: engine.Lease, limits: Limits) -> engine.Outcome:
    if lease.step.kind != "llm":
        # Its own thread and database connection: the network wait must not hold the
        # thread every other run's database work goes through.
        return await sync_to_async(engine.execute_tool, thread_sensitive=False)(lease)
    try:
        # Tenant first: a tenant at its bound must not sit on process-wide slots.
        async with limits.tenant(lease.run.tenant_id), limits.total:
            limits.in_flight += 1
            limits.peak = max(limits.peak, limits.in_flight)
            try:
                # The tenant's own provider (its API key): loaded with the run, never shared.
                provider = get_provider(tenant=lease.run.tenant)
                response = await provider.acomplete(engine.model_request(lease))
            finally:
                limits.in_flight -= 1
    except ProviderError as exc:
        return engine.Outcome(error=str(exc), error_code=exc.code)
    return engine.Outcome(
        output=response.output,
        model=response.model,
        prompt_tokens=response.prompt_tokens,
        completion_tokens=response.completion_tokens,
    )


class Task:
    """One worker task's state: its leases in flight and its time budget."""

    def __init__(self, batch: int):
        self.batch = batch
        self.limits = Limits()
        self.leases: set[engine.Lease] = set()
        # Stop taking new runs in time to finish well within django-q2's task timeout; the
        # task then rings for a successor if work is left.
        self.deadline = time.monotonic() + settings.DESK_WORKER_TASK_SECONDS
        self.owner = engine.new_lease_owner()
        self.deliveries: set[asyncio.Task] = set()

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    async def advance(self, run_id: int, tenant_id: int) -> int:
        """Execute one run's steps until it parks, ends or fails; return steps settled."""
        progress = await db(engine.advance)(run_id=run_id, tenant_id=tenant_id, owner=self.owner)
        settled = self.took(progress)
        while progress.lease is not None:
            lease = progress.lease
            self.leases.add(lease)
            try:
                outcome = await execute(lease, self.limits)
            finally:
                self.leases.discard(lease)
            progress = await db(engine.checkpoint)(lease, outcome, go_on=not self.out_of_time())
            settled += self.took(progress)
        return settled

    def took(self, progress: engine.Progress) -> int:
        """Deliver what a committed transaction put in the outbox, beside the runs' work."""
        for message_id in progress.outbox:
            delivery = asyncio.create_task(self.deliver(message_id))
            self.deliveries.add(delivery)
            delivery.add_done_callback(self.deliveries.discard)
        return progress.settled

    async def deliver(self, message_id: int) -> None:
        try:
            await db(services.deliver_outbox_message)(message_id=message_id)
        except Exception:  # left pending: the reaper has it delivered
            logger.exception("outbox message %s: delivery failed", message_id)

    async def heartbeat(self) -> None:
        """Renew this task's leases while it runs, and tell the supervisor it is alive."""
        interval = max(0.5, settings.DESK_STEP_LEASE_SECONDS / 4)
        while True:
            try:
                if self.leases:
                    await db(engine.renew_leases)(leases=list(self.leases))
            except Exception:  # the database is away: leases lapse, and the beat stops
                logger.exception("could not renew %d leases", len(self.leases))
            else:
                cluster.beat_busy()
            await asyncio.sleep(interval)


async def _work(seed: list[tuple[int, int]], batch: int, only) -> dict[str, int]:
    await db(_refresh_connection)()
    task = Task(batch)
    heartbeat = asyncio.create_task(task.heartbeat())
    candidates = deque(seed)
    active: dict[asyncio.Task, int] = {}
    idle: set[int] = set()  # runs that had nothing to do for this task: don't fetch again
    settled = 0
    try:
        while True:
            while len(active) < batch and not task.out_of_time():
                if not candidates:
                    busy = set(active.values()) | idle
                    more = await db(ready_runs)(limit=batch - len(active), exclude=busy, only=only)
                    candidates.extend(more)
                    if not candidates:
                        break
                run_id, tenant_id = candidates.popleft()
                if run_id in active.values() or run_id in idle:
                    continue
                active[asyncio.create_task(task.advance(run_id, tenant_id))] = run_id
                await asyncio.sleep(0)  # its database work goes first, then the next fetch
            if not active:
                break
            done, _ = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                run_id = active.pop(finished)
                try:
                    steps = finished.result()
                except Exception:
                    # A lost connection, say: the step's lease lapses and the reaper hands it on.
                    logger.exception("run %s: advancing failed", run_id)
                    steps = 0
                settled += steps
                if not steps:
                    idle.add(run_id)
        if task.deliveries:
            await asyncio.gather(*task.deliveries)
    finally:
        heartbeat.cancel()
        await aclose_providers()
    if task.out_of_time() and await db(ready_runs)(limit=1, exclude=idle, only=only):
        await db(doorbell.ring_work_now)()
    return {"steps": settled, "peak_model_calls": task.limits.peak}


def work(
    *,
    run_id: int | None = None,
    tenant_id: int | None = None,
    batch: int | None = None,
    only: Collection[int] | None = None,
) -> dict[str, int]:
    """Advance `run_id` first, then every other run with ready work (or only the runs in
    `only`), many at once, until none is left."""
    seed = []
    if run_id is not None:
        tenant_id = tenant_id or rls.tenant_of("desk_run", run_id)
        if tenant_id is not None:
            seed.append((run_id, tenant_id))
    # async_to_sync (not asyncio.run) so that database work runs in this very thread, on the
    # connection (and transaction) django-q or the caller already manages.
    return async_to_sync(_work)(seed, batch or settings.DESK_WORKER_BATCH, only)
