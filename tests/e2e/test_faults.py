"""Faults through real `manage.py desk_worker` processes on PostgreSQL: every kind of process
of a worker killed mid-load, processes stopped (SIGSTOP) so that the cluster hangs while it
looks alive, a worker killed during a slow model call, repeated kills of any process, two
workers sharing the broker while one dies entirely, every task delivered twice, the worker
connecting as the application role, and PostgreSQL restarted mid-run.

Model calls go to a FakeOpenAIServer (in this process) whose latency keeps steps in flight
long enough to hit them. Leases are short (LEASE_SECONDS, renewed by each worker task's
heartbeat) and the supervisor's patience is the tests' (tests/e2e/workers.py), so recovery
takes seconds. Every story ends with each run parked at its gate or completed, no step
lost, each approved reply sent exactly once (one outbox row, one mail) and every tenant's
audit chain intact.
"""

from __future__ import annotations

import collections
import os
import random
import re
import shutil
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import django_q.tasks
import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_q.models import Task
from django_q.tasks import async_task

import desk.doorbell
from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from desk.models import OutboxMessage, Run, StepRun, Sweep, WorkerHeartbeat
from tenants import rls
from tenants.models import Tenant
from tests.e2e.support import (
    database_url_of_this_process,
    process_env,
    restart_postgresql,
    run_manage,
    wait_for,
    wait_for_database,
)
from tests.e2e.workers import (
    TIMEOUT,
    approve_all,
    approve_and_wait_until_sent,
    assert_nothing_lost_or_doubled,
    is_stopped,
    running_steps,
    start_runs,
    statuses,
    wait_until_all,
    wait_until_sent,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.cluster,
    pytest.mark.django_db(transaction=True),
]

LEASE_SECONDS = 4


@pytest.fixture
def worker_settings():
    return {"DESK_STEP_LEASE_SECONDS": str(LEASE_SECONDS), "DESK_STALL_SECONDS": "3"}


def wait_for_model_calls(count: int, model, worker) -> None:
    wait_for(
        lambda: len(running_steps()) >= count and model.in_flight >= count,
        what=f"{count} steps to be in their model calls",
        timeout=TIMEOUT,
        process=worker.process,
    )


def wait_for_probe(worker) -> WorkerHeartbeat:
    """Until the worker's cluster has passed a probe (it is up and delivering)."""
    return wait_for(
        lambda: WorkerHeartbeat.objects.filter(name=worker.name, probe_ok_at__isnull=False).first(),
        what=f"worker {worker.name}'s cluster to pass a probe",
        timeout=TIMEOUT,
        process=worker.process,
    )


def restart_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="worker.cluster_restarted").order_by("seq"))


# --- 1. any process of a worker killed mid-load --------------------------------------------------

KILLED = [
    # (which process, the broker) — the kinds spread over both brokers to keep the suite short.
    ("worker", "orm"),
    ("pusher", "redis"),
    ("monitor", "orm"),
    ("sentinel", "redis"),  # also django-q2's scheduler
    ("cluster", "orm"),  # the qcluster main process
    ("sweeper", "redis"),  # the reaper and the other sweeps
]


@pytest.mark.parametrize(
    ("kind", "broker"), KILLED, indirect=["broker"], ids=[k for k, _ in KILLED]
)
def test_any_process_killed_mid_load_loses_nothing(workers, model, kind):
    model.latency = 1.0
    worker = workers.start()
    runs = start_runs(harbor=3, northwind=2)
    wait_for_model_calls(2, model, worker)
    [victim] = worker.tree()[kind][:1]

    os.kill(victim, signal.SIGKILL)

    wait_until_all(runs, Run.Status.WAITING_APPROVAL)
    assert_nothing_lost_or_doubled(runs, workers)
    approve_and_wait_until_sent(runs)
    assert_nothing_lost_or_doubled(runs, workers)
    assert max(StepRun.objects.filter(run__in=runs).values_list("attempts", flat=True)) <= 2
    wait_for(worker.ready, what="every process to be back", timeout=TIMEOUT)
    assert victim not in [pid for pids in worker.tree().values() for pid in pids]
    if kind in ("sentinel", "cluster"):
        # django-q2 cannot replace these: the supervisor replaced the whole cluster.
        assert worker.restarts() >= 1
        assert restart_events()[0].data["worker"] == worker.name


# --- 2. a cluster that hangs while it looks alive ------------------------------------------------

STOPPED = [
    # Every worker stopped while idle: one of them holds the task queue's lock in get(),
    # so even a replacement worker could never take a task (django-q2 #23).
    ("workers", "probe"),
    ("pusher", "probe"),
    ("monitor", "probe"),
    ("sentinel", "sentinel"),
]


@pytest.mark.parametrize(("kind", "detected_by"), STOPPED, ids=[k for k, _ in STOPPED])
def test_a_hung_cluster_is_detected_and_replaced(workers, model, kind, detected_by):
    model.latency = 0.2
    worker = workers.start()
    wait_for_probe(worker)
    tree = worker.tree()
    victims = tree["worker"] if kind == "workers" else tree[kind]
    for pid in victims:
        os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: all(is_stopped(pid) for pid in victims), what="them to stop", timeout=10)

    runs = start_runs(harbor=2, northwind=1)

    wait_for(lambda: worker.restarts() >= 1, what="the supervisor to replace the cluster")
    wait_until_all(runs, Run.Status.WAITING_APPROVAL)
    assert_nothing_lost_or_doubled(runs, workers)
    assert not any(os.path.exists(f"/proc/{pid}") and is_stopped(pid) for pid in victims)
    # The log line comes before the old cluster is gone and the restart audited; the old
    # cluster's workers may have parked the runs meanwhile (only its monitor was stopped).
    event = wait_for(lambda: next(iter(restart_events()), None), what="the restart's audit event")
    assert detected_by in event.reason
    beat = wait_for(
        lambda: WorkerHeartbeat.objects.filter(name=worker.name, cluster_restarts__gte=1).first(),
        what="the heartbeat to record the restart",
    )
    assert detected_by in beat.last_restart_reason
    approve_and_wait_until_sent(runs)
    assert_nothing_lost_or_doubled(runs, workers)


def test_a_worker_stopped_mid_step_loses_its_steps_to_the_other_worker(workers, model):
    model.latency = 1.5
    worker = workers.start()
    runs = start_runs(harbor=2, northwind=0)
    wait_for_model_calls(1, model, worker)
    step = running_steps()[0]
    pid = int(step.lease_owner.split(":")[1])

    os.kill(pid, signal.SIGSTOP)

    wait_until_all(runs, Run.Status.WAITING_APPROVAL)
    step.refresh_from_db()
    assert step.attempts == 2
    assert AuditEvent.objects.filter(step_id=step.pk, action="step.lease_expired").exists()
    assert worker.restarts() == 0  # the other worker kept the cluster progressing
    os.kill(pid, signal.SIGCONT)  # its late result is discarded: the lease moved on
    approve_and_wait_until_sent(runs)
    assert_nothing_lost_or_doubled(runs, workers)


# --- 3. leases follow the worker -----------------------------------------------------------------


def test_a_slow_model_call_keeps_its_step_until_its_worker_dies(workers, model):
    model.latency = 3 * LEASE_SECONDS  # far longer than a lease
    worker = workers.start(DESK_Q_WORKERS="1")
    [run] = start_runs(harbor=1, northwind=0)
    wait_for_model_calls(1, model, worker)
    [step] = running_steps()
    first_expiry = step.lease_expires_at

    # Alive: the heartbeat renews the lease while the call goes on.
    wait_for(lambda: timezone.now() > first_expiry + timedelta(seconds=2), what="time")
    step.refresh_from_db()
    assert step.status == StepRun.Status.RUNNING
    assert step.lease_expires_at > first_expiry
    assert step.attempts == 1
    assert not AuditEvent.objects.filter(step_id=step.pk, action="step.lease_expired").exists()

    # Dead: the lease stops moving and the step waits for it to lapse, then is taken over.
    pid = int(step.lease_owner.split(":")[1])
    os.kill(pid, signal.SIGKILL)
    model.latency = 0.2
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the worker to die", timeout=10)
    step.refresh_from_db()
    last_lease = step.lease_expires_at
    wait_until_all([run], Run.Status.WAITING_APPROVAL)

    [expired] = AuditEvent.objects.filter(step_id=step.pk, action="step.lease_expired")
    assert expired.created_at >= last_lease  # not before the lease lapsed
    step.refresh_from_db()
    assert step.status == StepRun.Status.COMPLETED
    assert step.attempts == 2
    assert_nothing_lost_or_doubled([run], workers)


# --- 4. repeated kills of any process -------------------------------------------------------------


ANY_PROCESS = ("worker", "pusher", "monitor", "sentinel", "cluster", "sweeper")


@pytest.mark.parametrize("broker", ["orm", "redis"], indirect=True)
def test_repeated_kills_of_any_process_then_recovery(workers, model):
    model.latency = 0.5
    # Killed again and again a step may lose more attempts than a failing model would.
    worker = workers.start(DESK_STEP_MAX_ATTEMPTS="8")
    runs = start_runs(harbor=6, northwind=4)
    chooser = random.Random(7)
    kills = collections.Counter()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        tree = worker.tree()
        kinds = [kind for kind in ANY_PROCESS if tree[kind]]
        if kinds:
            kind = chooser.choice(kinds)
            os.kill(chooser.choice(tree[kind]), signal.SIGKILL)
            kills[kind] += 1
        time.sleep(1.5)
    last_fault = time.monotonic()
    print(f"kills: {dict(kills)}")

    # Processing resumes within 60 s of the last fault, and nothing is lost.
    wait_until_all(runs, Run.Status.WAITING_APPROVAL, timeout=60)
    print(f"all parked {time.monotonic() - last_fault:.1f} s after the last kill")
    assert sum(kills.values()) >= 8
    assert_nothing_lost_or_doubled(runs, workers)
    approve_and_wait_until_sent(runs)
    assert_nothing_lost_or_doubled(runs, workers)


# --- 5. two workers on one broker and database ------------------------------------------------


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_two_workers_share_the_work_and_one_dies_entirely(workers, model, tmp_path):
    model.latency = 1.0
    first = workers.start("first")
    second = workers.start("second")
    runs = start_runs(harbor=4, northwind=2)
    wait_for_model_calls(2, model, first)
    tree = first.tree()
    members = [pid for pids in tree.values() for pid in pids]

    os.kill(first.process.pid, signal.SIGKILL)  # the supervisor itself, as an OOM kill would

    first.process.wait(timeout=10)
    wait_for(
        lambda: not [pid for pid in members if os.path.exists(f"/proc/{pid}")],
        what="the dead worker's cluster and sweeper to die with it",
        timeout=10,
    )
    wait_until_all(runs, Run.Status.WAITING_APPROVAL)
    approve_and_wait_until_sent(runs)
    assert_nothing_lost_or_doubled(runs, workers)
    owners = set(StepRun.objects.filter(run__in=runs).values_list("lease_owner", flat=True))
    assert owners == {""}
    assert Sweep.objects.filter(name="reaper", claimed_by__startswith="second@").exists()

    # The health check names the worker that stopped beating.
    env = process_env(tmp_path / "var", **workers.base_env)
    wait_for(
        lambda: (timezone.now() - WorkerHeartbeat.objects.get(name="first").beat_at).seconds > 3,
        what="the dead worker's heartbeat to age",
    )
    result = run_manage("desk_health", "--max-age=3", env=env)
    assert result.returncode == 1, result.stdout
    assert "worker first: no heartbeat" in result.stdout.splitlines()[0]
    assert second.process.poll() is None


# --- 6. every task delivered twice --------------------------------------------------------------


def ring_twice(enqueue):
    def enqueue_twice(*args, **kwargs):
        enqueue(*args, **kwargs)
        return enqueue(*args, **kwargs)

    return enqueue_twice


@pytest.mark.parametrize("broker", ["orm", "redis"], indirect=True)
def test_every_task_delivered_twice_changes_nothing(workers, model, monkeypatch):
    model.latency = 0.3
    # Doorbells rung here (intake, decisions) go out twice...
    monkeypatch.setattr(desk.doorbell, "async_task", ring_twice(desk.doorbell.async_task))
    monkeypatch.setattr(django_q.tasks, "async_task", ring_twice(django_q.tasks.async_task))
    workers.start()
    Tenant.objects.filter(slug="harbor-legal").update(max_concurrent_runs=2)
    runs = start_runs(harbor=3, northwind=2)
    wait_until_all(runs, Run.Status.WAITING_APPROVAL)
    wait_for(
        lambda: [workers.notifications(run) for run in runs] == [1] * len(runs),
        what="the reviewers to be notified of every gate",
    )
    approve_and_wait_until_sent(runs)

    # ...and every delivery and notification is asked for twice more (these results saved).
    for _ in range(2):
        for message in OutboxMessage.objects.filter(run__in=runs):
            async_task("desk.tasks.deliver_outbox", message_id=message.pk)
        for request in ApprovalRequest.objects.filter(run__in=runs):
            async_task("approvals.tasks.notify_reviewers", request_id=request.pk)
    repeated = ("desk.tasks.deliver_outbox", "approvals.tasks.notify_reviewers")
    wait_for(
        lambda: Task.objects.filter(func__in=repeated, success=True).count() == 4 * len(runs),
        what="every repeated delivery and notification to be done",
    )

    assert_nothing_lost_or_doubled(runs, workers)
    assert [workers.notifications(run) for run in runs] == [1] * len(runs)
    assert set(StepRun.objects.filter(run__in=runs).values_list("attempts", flat=True)) == {1}
    assert not AuditEvent.objects.filter(action="step.lease_expired").exists()


# --- 7. the cluster as its own logins ---------------------------------------------------------


def role_url(role: str) -> str:
    parts = urlsplit(database_url_of_this_process())
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


def test_cluster_as_the_worker_and_platform_logins_sets_tenant_context(workers, model):
    # As in production: the worker's login for its work, the platform's own for the
    # scheduler's cross-tenant reads; neither may become the other.
    worker = workers.start(
        DATABASE_URL=role_url(rls.WORKER_ROLE),
        DESK_PLATFORM_DATABASE_URL=role_url(rls.PLATFORM_ROLE),
    )
    runs = start_runs(harbor=1, northwind=1)

    wait_until_all(runs, Run.Status.WAITING_APPROVAL)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        assert {row[0] for row in cursor.fetchall()} == {rls.WORKER_ROLE, rls.PLATFORM_ROLE}
    # Under row-level security a query outside the tenant's context finds nothing and
    # sends nothing, silently: the reviewers' notifications prove their queries saw rows.
    wait_for(
        lambda: all(workers.notifications(run) == 1 for run in runs),
        what="the reviewers to be notified",
    )
    approve_and_wait_until_sent(runs)
    # Every sweep ran, as the same role, and succeeded (the audit checkpoints and retention too).
    wait_for(
        lambda: (
            Sweep.objects.filter(succeeded_at__isnull=False).count() == len(settings.DESK_SWEEPS)
        ),
        what="every sweep to succeed",
    )
    assert not Sweep.objects.exclude(last_error="").exists()
    assert_nothing_lost_or_doubled(runs, workers)
    assert set(StepRun.objects.filter(run__in=runs).values_list("attempts", flat=True)) == {1}
    assert "Traceback" not in worker.output()


# --- 8. PostgreSQL restarted mid-run (last: it cuts every session on the server) -----------------


def restart_unavailable() -> str:
    """Why this process cannot restart the test database's server ("" when it can)."""
    host = connection.settings_dict["HOST"] or "localhost"
    if host not in ("127.0.0.1", "localhost", "::1"):
        return f"PostgreSQL runs on {host}, not here"
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        return "no pg_ctlcluster (Debian's postgresql-common) to restart PostgreSQL with"
    if os.geteuid() != 0:
        return "restarting PostgreSQL with pg_ctlcluster needs root"
    return ""


def test_postgresql_restarted_mid_run(workers, model):
    if reason := restart_unavailable():
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    model.latency = 1.0
    worker = workers.start()
    runs = start_runs(harbor=3, northwind=2)
    wait_for_model_calls(2, model, worker)
    in_flight = running_steps()

    restart_postgresql(timeout=TIMEOUT)
    connection.close()  # this process's connection was cut too

    # The worker reconnects by itself; steps whose checkpoint failed wait for the reaper.
    wait_until_all(runs, Run.Status.WAITING_APPROVAL, poll=wait_for_database)
    assert_nothing_lost_or_doubled(runs, workers)
    reaped = AuditEvent.objects.filter(action="step.lease_expired").count()
    attempts = collections.Counter(
        StepRun.objects.filter(run__in=runs).values_list("attempts", flat=True)
    )
    print(f"restart: {len(in_flight)} steps in flight, {reaped} reaped, attempts {attempts}")
    assert worker.process.poll() is None

    approve_all(runs)
    wait_until_all(runs, Run.Status.COMPLETED)
    wait_until_sent(runs)
    assert_nothing_lost_or_doubled(runs, workers)


def test_the_lease_owner_names_the_worker_process(workers, model):
    model.latency = 1.0
    worker = workers.start(DESK_Q_WORKERS="1")
    [run] = start_runs(harbor=1, northwind=0)
    wait_for_model_calls(1, model, worker)
    [step] = running_steps()
    [worker_pid] = worker.tree()["worker"]

    # host:pid of the worker that holds it, then a token unique to the lease.
    owner = rf"{re.escape(socket.gethostname())}:{worker_pid}:[0-9a-f]{{8}}"
    assert re.fullmatch(owner, step.lease_owner)
    wait_until_all([run], Run.Status.WAITING_APPROVAL)
    assert statuses([run]) == {Run.Status.WAITING_APPROVAL: 1}
