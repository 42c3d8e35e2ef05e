"""Health checks: is the runtime making progress? Read by `GET /healthz` (the web process and
its database) and `manage.py desk_health` (everything: the database, the broker, the
sweeps, django-q2's scheduler, ready work waiting, the workers' heartbeats and probes)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Min
from django.utils import timezone

from audit import signing
from desk.models import Run, StepRun, Sweep, WorkerHeartbeat
from desk.services import sweep_specs
from tenants import rls

# Seconds a sweep, a schedule or a worker may go without progress before it is unhealthy.
MAX_AGE = 60


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        return "ok" if self.ok else "fail"


@dataclass
class Report:
    checks: list[Check]
    checked_at: datetime

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def reason(self) -> str:
        """One line: "ok", or what failed first (and how many other checks failed)."""
        failed = [check for check in self.checks if not check.ok]
        if not failed:
            return f"ok: {len(self.checks)} checks passed"
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return f"{failed[0].name}: {failed[0].detail}{more}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "fail",
            "reason": self.reason,
            "checked_at": self.checked_at.isoformat(),
            "checks": [asdict(check) for check in self.checks],
        }


def _ago(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round((now - then).total_seconds(), 1)


def check_database() -> Check:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return Check("database", False, f"unreachable: {type(exc).__name__}: {exc}".strip())
    latency = round((time.monotonic() - started) * 1000, 1)
    return Check("database", True, f"{connection.vendor}, {latency} ms", {"latency_ms": latency})


def check_broker() -> Check:
    from django_q.brokers import get_broker

    try:
        broker = get_broker()
        broker.ping()
        queued = broker.queue_size()
    except Exception as exc:
        return Check("broker", False, f"unreachable: {type(exc).__name__}: {exc}".strip())
    return Check("broker", True, f"{broker.info()}, {queued} queued", {"queued": queued})


def sweep_check(sweep: Sweep | None, *, name: str = "", now: datetime, max_age: float) -> Check:
    """Whether a sweep succeeded within `max_age` s (or three of its periods, if longer),
    and its last round did not fail (a failing hourly sweep is loud at once, not in hours)."""
    name = sweep.name if sweep else name
    every = {spec.name: spec.every_seconds for spec in sweep_specs()}.get(name)
    if every is None:
        return Check(f"sweep {name}", True, "no longer configured")
    allowed = max(max_age, 3 * every)
    age = _ago(now, sweep.succeeded_at if sweep else None)
    data = {"succeeded_ago_s": age, "every_s": every}
    if sweep and sweep.last_error:
        data["last_error"] = sweep.last_error.splitlines()[0]
    if age is not None and age <= allowed and not data.get("last_error"):
        return Check(f"sweep {name}", True, f"succeeded {age:.0f} s ago", data)
    if age is not None and age <= allowed:
        return Check(f"sweep {name}", False, f"its last round failed: {data['last_error']}", data)
    when = "never" if age is None else f"{age:.0f} s ago"
    why = f"; last error: {data['last_error']}" if "last_error" in data else ""
    return Check(f"sweep {name}", False, f"last succeeded {when}{why}", data)


def check_sweeps(now: datetime, max_age: float) -> list[Check]:
    rows = {sweep.name: sweep for sweep in Sweep.objects.all()}
    return [
        sweep_check(rows.get(spec.name), name=spec.name, now=now, max_age=max_age)
        for spec in sweep_specs()
    ]


def check_scheduler(now: datetime, max_age: float) -> Check:
    """django-q2's scheduler (in each cluster's sentinel) fires the schedules that are due."""
    from django_q.models import Schedule

    late = (
        Schedule.objects.exclude(repeats=0)
        .filter(next_run__lt=now - timedelta(seconds=max_age))
        .order_by("next_run")
        .first()
    )
    if late is not None:
        return Check(
            "scheduler",
            False,
            f"schedule '{late.name or late.func}' due {_ago(now, late.next_run):.0f} s ago "
            "has not fired",
            {"schedule": late.name or late.func, "due_ago_s": _ago(now, late.next_run)},
        )
    return Check("scheduler", True, "no schedule overdue")


def check_ready_steps(now: datetime, max_age: float) -> Check:
    """No step a worker may take has waited longer than `max_age` s."""
    with rls.platform_context():
        waiting = StepRun.objects.filter(
            status=StepRun.Status.READY, run__status=Run.Status.RUNNING
        ).aggregate(oldest=Min("ready_at"))
    age = _ago(now, waiting["oldest"])
    data = {"oldest_ready_ago_s": age}
    if age is not None and age > max_age:
        return Check("ready steps", False, f"a ready step has waited {age:.0f} s", data)
    return Check(
        "ready steps", True, "none waiting" if age is None else f"oldest {age:.0f} s", data
    )


def worker_check(worker: WorkerHeartbeat, *, now: datetime, max_age: float) -> Check:
    """Whether a worker beats and its cluster passes probes (a stopped worker is fine)."""
    name = f"worker {worker.name}"
    beat = _ago(now, worker.beat_at)
    probe = _ago(now, worker.probe_ok_at)
    data = {
        "host": worker.host,
        "pid": worker.pid,
        "beat_ago_s": beat,
        "probe_ok_ago_s": probe,
        "cluster_restarts": worker.cluster_restarts,
        "last_restart_reason": worker.last_restart_reason,
    }
    if worker.stopped_at is not None:
        return Check(name, True, "stopped", data)
    if beat > max_age:
        return Check(name, False, f"no heartbeat for {beat:.0f} s", data)
    since_start = _ago(now, worker.cluster_started_at) or 0
    if (probe is None and since_start > max_age) or (probe is not None and probe > max_age):
        when = "never" if probe is None else f"{probe:.0f} s ago"
        restart = worker.last_restart_reason or "none yet"
        detail = f"its cluster last passed a probe {when} (last restart: {restart})"
        return Check(name, False, detail, data)
    return Check(name, True, f"running; beat {beat:.0f} s ago", data)


def check_workers(now: datetime, max_age: float) -> list[Check]:
    """At least one worker beats; none that is not stopped has gone quiet or stuck."""
    workers = list(WorkerHeartbeat.objects.filter(stopped_at__isnull=True).order_by("name"))
    if not workers:
        return [Check("workers", False, "no worker is running (no heartbeat)")]
    return [worker_check(worker, now=now, max_age=max_age) for worker in workers]


def check_signing_key() -> Check:
    """The audit signing key is there: without it no checkpoint or export can be signed."""
    try:
        name = signing.verifier().name
    except signing.SigningKeyMissing as exc:
        return Check("audit signing key", False, str(exc))
    return Check("audit signing key", True, f"{name} at {signing.key_path()}")


def web_health() -> Report:
    """The web process and its database (for a load balancer)."""
    return Report(checks=[check_database()], checked_at=timezone.now())


def system_health(*, max_age: float = MAX_AGE, ready_max_age: float = 2 * MAX_AGE) -> Report:
    """Everything that must keep moving, each judged against `max_age` seconds."""
    now = timezone.now()
    database = check_database()
    checks = [database, check_broker(), check_signing_key()]
    if database.ok:
        try:
            checks += check_sweeps(now, max_age)
            checks.append(check_scheduler(now, max_age))
            checks.append(check_ready_steps(now, ready_max_age))
            checks += check_workers(now, max_age)
        except Exception as exc:  # the database went away mid-way
            checks.append(Check("database", False, f"{type(exc).__name__}: {exc}"))
    return Report(checks=checks, checked_at=now)
