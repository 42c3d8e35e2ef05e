"""The runtime's upkeep: sweeps that keep every run moving whatever process died, and the
workers' own heartbeats.

Sweeps are listed in settings.DESK_SWEEPS (name -> function path and period) and run by
every `desk_worker`'s sweeper process; claiming the sweep's row first (`claim_sweep`) makes
each one run once per period across all machines. None of them depends on django-q2's
scheduler, nor on any one worker being alive.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.module_loading import import_string

from audit.services import Actor, record
from desk import doorbell
from desk.models import OutboxMessage, Run, StepRun, Sweep, WorkerHeartbeat
from desk.services.outbox import deliver_due_outbox, sweep_outbox
from desk.services.runs import admit_runs
from desk.services.usage import escalate_missed_service_level
from tenants import locking, rls
from tenants.locking import Level, lock
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# At most this many rows of each kind per sweep round; the rest wait for the next round.
SWEEP_LIMIT = 500


@dataclass(frozen=True)
class SweepSpec:
    name: str
    func: str
    every_seconds: float


def sweep_specs() -> list[SweepSpec]:
    return [
        SweepSpec(name=name, func=func, every_seconds=float(every))
        for name, (func, every) in settings.DESK_SWEEPS.items()
    ]


def claim_sweep(*, name: str, every_seconds: float, owner: str, now=None) -> bool:
    """Take the sweep for this period unless another worker already did; True when taken."""
    now = now or timezone.now()
    due = Q(claimed_at__isnull=True) | Q(claimed_at__lte=now - timedelta(seconds=every_seconds))
    for _ in range(2):
        if Sweep.objects.filter(due, name=name).update(claimed_at=now, claimed_by=owner):
            return True
        _, created = Sweep.objects.get_or_create(name=name)
        if not created:
            return False
    return False


def run_sweep(spec: SweepSpec, *, owner: str) -> dict | None:
    """Run one sweep if it is due and this worker claims it; record how it went.

    Returns the sweep's result, or None when it was not due here. Never raises: a failing
    sweep is logged and recorded on its row (the health check reports it).
    """
    if not claim_sweep(name=spec.name, every_seconds=spec.every_seconds, owner=owner):
        return None
    now = timezone.now()
    try:
        result = import_string(spec.func)(now=now) or {}
    except Exception as exc:
        logger.exception("sweep %s failed", spec.name)
        Sweep.objects.filter(name=spec.name).update(
            finished_at=timezone.now(),
            last_error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}",
            rounds=F("rounds") + 1,
        )
        return {"error": str(exc)}
    finished = timezone.now()
    Sweep.objects.filter(name=spec.name).update(
        finished_at=finished,
        succeeded_at=finished,
        last_error="",
        last_result=result,
        rounds=F("rounds") + 1,
    )
    return result


def run_due_sweeps(*, owner: str) -> float:
    """Run every sweep that is due (and that this worker claims); return the seconds until
    the next one is due."""
    now = timezone.now()
    claimed = dict(Sweep.objects.values_list("name", "claimed_at"))
    waits = []
    for spec in sweep_specs():
        last = claimed.get(spec.name)
        due_at = last + timedelta(seconds=spec.every_seconds) if last else now
        if due_at <= now:
            result = run_sweep(spec, owner=owner)
            if result and any(result.values()):
                logger.info("sweep %s: %s", spec.name, result)
            due_at = timezone.now() + timedelta(seconds=spec.every_seconds)
        waits.append((due_at - timezone.now()).total_seconds())
    return min(waits, default=1.0)


# --- the reaper ------------------------------------------------------------------------------


def reap(*, now=None) -> dict[str, int]:
    """Hand on the steps of workers that stopped heartbeating, re-ring stalled work and
    undelivered mail, and admit queued runs where capacity is free.

    Reads across tenants only which tenants need attention; the work is per tenant.
    """
    now = now or timezone.now()
    stall_seconds = settings.DESK_STALL_SECONDS
    stalled_before = now - timedelta(seconds=stall_seconds)
    with rls.platform_context():
        expired = set(
            StepRun.objects.filter(status=StepRun.Status.RUNNING, lease_expires_at__lt=now)
            .values_list("tenant_id", flat=True)
            .distinct()
        )
        stalled = list(
            StepRun.objects.filter(
                status=StepRun.Status.READY,
                run__status=Run.Status.RUNNING,
                ready_at__lt=stalled_before,
            )
            # Longest waiting first; among equals, the oldest run (ids are random).
            .order_by("ready_at", "run__created_at", "run_id")
            .values_list("run_id", "tenant_id")[:SWEEP_LIMIT]
        )
        undelivered = set(
            OutboxMessage.objects.filter(
                status__in=(OutboxMessage.Status.PENDING, OutboxMessage.Status.SENDING),
                created_at__lt=stalled_before,
            )
            .values_list("tenant_id", flat=True)
            .distinct()
        )
        admissible = _tenants_with_admissible_runs()
    result = dict.fromkeys(
        ("expired", "stalled_rung", "admitted", "outbox_due", "outbox_delivered"), 0
    )
    result["outbox_uncertain"] = 0
    for tenant_id in sorted(expired):
        result["expired"] += expire_leases(tenant_id=tenant_id, now=now)
    # Lost doorbells are rung again only while the broker's queue is empty: otherwise a
    # worker is coming anyway, and a flood of re-rings would only delay it.
    queue_empty = not doorbell.any_waiting()
    if stalled and queue_empty:
        doorbell.ring_runs(stalled)
        result["stalled_rung"] = len(stalled)
    for tenant_id in sorted(undelivered):
        swept = sweep_outbox(tenant_id=tenant_id, now=now, stall_seconds=stall_seconds)
        for key, count in swept.items():
            result[key] += count
    if result["outbox_due"]:
        # Delivered here, not by a task that would wait in the queue behind other work.
        result["outbox_delivered"] = deliver_due_outbox(now=now)
    for tenant_id in admissible:
        result["admitted"] += len(admit_runs(tenant_id=tenant_id))
    return result


def _tenants_with_admissible_runs() -> list[int]:
    """Tenants with queued runs and a free slot (one query; inside the platform context)."""
    running = (
        Run.objects.filter(tenant=OuterRef("pk"), status=Run.Status.RUNNING)
        .order_by()
        .values("tenant")
        .annotate(n=Count("pk"))
        .values("n")
    )
    queued_tenants = (
        Run.objects.filter(status=Run.Status.QUEUED).values_list("tenant_id", flat=True).distinct()
    )
    return list(
        Tenant.objects.filter(pk__in=queued_tenants, status=Tenant.Status.ACTIVE)
        .annotate(running=Coalesce(Subquery(running), 0))
        .filter(running__lt=F("max_concurrent_runs"))
        .values_list("pk", flat=True)
    )


def expire_leases(*, tenant_id: int, now) -> int:
    """Make the tenant's steps whose lease ran out ready again; return how many.

    Only time decides: a worker that merely looks dead from here (another machine, another
    process namespace) may be alive, and its step must not be taken from it early.
    """
    expired = 0
    with locking.tracked(), rls.tenant_context(tenant_id):
        steps = StepRun.objects.filter(
            tenant_id=tenant_id, status=StepRun.Status.RUNNING, lease_expires_at__lt=now
        )
        for step in lock(steps.order_by("lease_expires_at", "pk"), Level.STEP, skip_locked=True)[
            :SWEEP_LIMIT
        ]:
            record(
                tenant=tenant_id,
                actor=Actor.system("reaper"),
                action="step.lease_expired",
                obj=step,
                run_id=step.run_id,
                step_id=step.pk,
                data={"owner": step.lease_owner, "attempts": step.attempts},
            )
            step.move("expire")
            step.lost_leases += 1
            step.lease_owner = ""
            step.lease_expires_at = None
            step.ready_at = now
            step.save(
                update_fields=[
                    "status",
                    "lost_leases",
                    "lease_owner",
                    "lease_expires_at",
                    "ready_at",
                ]
            )
            doorbell.ring_run(step.run_id, tenant_id)
            expired += 1
    return expired


def escalate_service_levels(*, now=None) -> dict[str, int]:
    """Open one escalation for each open run past its deadline (its role version's target
    turnaround, stored on the run when it started).

    Reads only the runs past their deadline and not escalated yet (index run_sla_due), so
    runs still within theirs, parked or not, cost nothing here.
    """
    now = now or timezone.now()
    with rls.platform_context():
        late = Run.objects.filter(
            status__in=Run.OPEN_STATUSES, sla_escalated_at__isnull=True, sla_due_at__lte=now
        )
        candidates = list(late.order_by("sla_due_at").values_list("pk", "tenant_id")[:SWEEP_LIMIT])
    escalated = sum(
        escalate_missed_service_level(run_id=run_id, tenant_id=tenant_id, now=now)
        for run_id, tenant_id in candidates
    )
    return {"escalated": escalated}


# --- workers -----------------------------------------------------------------------------------


def record_worker_heartbeat(*, name: str, **fields) -> None:
    """Write a `desk_worker`'s heartbeat row (created on first beat)."""
    WorkerHeartbeat.objects.update_or_create(name=name, defaults=fields)


def forget_worker(*, worker: WorkerHeartbeat, actor: Actor, reason: str) -> WorkerHeartbeat:
    """Record that a worker is gone for good (a machine retired without a clean stop), so
    that the health check stops waiting for its heartbeat; audited on the platform chain.

    Raises ValueError without a reason.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("Say why the worker is gone.")
    with locking.tracked(), rls.platform_context():
        worker = lock(WorkerHeartbeat.objects.all(), Level.ROW).get(pk=worker.pk)
        if worker.stopped_at is None:
            worker.stopped_at = timezone.now()
            worker.save(update_fields=["stopped_at"])
            record(
                tenant=None,
                actor=actor,
                action="worker.forgotten",
                reason=reason,
                data={"worker": worker.name, "host": worker.host, "beat_at": worker.beat_at},
            )
    return worker


def record_cluster_restart(*, name: str, host: str, reason: str, restarts: int) -> None:
    """Audit that a worker replaced its django-q2 cluster (on the platform's own chain)."""
    with locking.tracked(), rls.platform_context():
        record(
            tenant=None,
            actor=Actor.system(f"worker {name}"),
            action="worker.cluster_restarted",
            reason=reason,
            data={"worker": name, "host": host, "restarts": restarts},
        )
