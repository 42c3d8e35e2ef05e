"""Faults through real `manage.py qcluster` processes on PostgreSQL: a worker killed mid-step,
the whole cluster killed and restarted, every task delivered twice, the cluster connecting
as the application role (row-level security enforced), and PostgreSQL restarted mid-run.

As in test_cluster.py, the test process plays intake and the reviewers and the cluster
subprocess does the work; model calls go to a FakeOpenAIServer (in this process) whose
latency keeps steps in flight long enough to hit them. Every story ends with each run parked
at its gate or completed, no step lost, each approved reply sent exactly once (one outbox
row, one mail) and every tenant's audit chain intact.

The reaper runs every minute on the cluster's schedule; the tests call
`desk.services.reap_expired_leases()` in this process instead, once the leases they broke
have expired, to stay short. Runs whose doorbell a crash lost are re-rung by the reaper
once they look stalled (`STALL_SECONDS`); the tests that lose doorbells set that to 0.

Two tests pin down runtime bugs these faults exposed (the lease owner named the qcluster
parent instead of the worker; a notification delivered twice was sent twice).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import django_q.tasks
import pytest
import redis
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis as RedisBroker
from django_q.conf import Conf
from django_q.models import Task
from django_q.tasks import async_task

import desk.services
import desk.tasks
from approvals.models import ApprovalRequest, Decision
from approvals.services import decide
from audit.models import AuditEvent
from audit.services import Actor, verify_chain
from desk.demo import seed_demo
from desk.models import OutboxMessage, Run, StepRun
from desk.services import reap_expired_leases, start_run
from roles.models import Role
from tenants.models import Tenant
from tests.conftest import INTAKE_INPUT
from tests.e2e.support import (
    database_url_of_this_process,
    kill_group,
    kill_tagged,
    manage_command,
    process_env,
    process_group,
    restart_postgresql,
    stop_process,
    wait_for,
    wait_for_database,
)
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.cluster,
    pytest.mark.django_db(transaction=True),
]

REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")
TIMEOUT = 60  # seconds any one wait may take
# Model calls take MODEL_LATENCY; leases last LEASE_SECONDS, comfortably longer, so that
# only a dead worker's lease ever expires.
MODEL_LATENCY = 2.0
LEASE_SECONDS = 5
REVIEWERS = {"harbor-legal": "reviewer.harbor", "northwind-accounting": "reviewer.northwind"}

# Run by `python -c` instead of manage.py: every task the cluster enqueues (doorbells,
# outbox deliveries, reviewer notifications) goes onto the broker twice. django-q2 forks
# its workers, so they inherit the patch.
RING_TWICE_LAUNCHER = """
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "desk.settings")
import django
django.setup()
import desk.tasks, django_q.tasks

def twice(enqueue):
    def enqueue_twice(*args, **kwargs):
        enqueue(*args, **kwargs)
        return enqueue(*args, **kwargs)
    return enqueue_twice

desk.tasks.async_task = twice(desk.tasks.async_task)
django_q.tasks.async_task = twice(django_q.tasks.async_task)
from django.core.management import execute_from_command_line
execute_from_command_line(["manage.py", *sys.argv[1:]])
"""


# --- clusters -------------------------------------------------------------------------------


@dataclass
class Cluster:
    process: subprocess.Popen
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """Live worker processes (django-q2 logs each as it starts; dead ones are replaced)."""
        alive = process_group(self.process.pid)
        found = re.findall(r"ready for work at (\d+)", self.output())
        return [int(pid) for pid in found if int(pid) in alive]


@dataclass
class Clusters:
    """Starts qcluster subprocesses for one test, all writing mail under one var dir."""

    var_dir: Path
    base_env: dict[str, str | None]
    started: list[Cluster] = field(default_factory=list)

    def start(self, *, launcher: str | None = None, **env: str | None) -> Cluster:
        log_path = self.var_dir.parent / f"qcluster-{len(self.started) + 1}.log"
        command = (
            [sys.executable, "-c", launcher, "qcluster"] if launcher else manage_command("qcluster")
        )
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                command,
                cwd=Path(__file__).resolve().parents[2],
                env=process_env(self.var_dir, **{**self.base_env, **env}),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        cluster = Cluster(process, log_path)
        self.started.append(cluster)
        return cluster

    def mails(self) -> str:
        mail_dir = self.var_dir / "outbox-mail"
        return "".join(p.read_text() for p in mail_dir.iterdir()) if mail_dir.exists() else ""

    def notifications(self, run: Run) -> int:
        """How many reviewer notifications (not reminders) went out about the run's gate."""
        return self.mails().count(f"of run #{run.pk} is waiting")


@pytest.fixture
def broker(request, monkeypatch) -> dict[str, str | None]:
    """Point this process's django-q2 at the broker the cluster will use; return its env."""
    if getattr(request, "param", "orm") == "orm":
        monkeypatch.setattr(Conf, "ORM", "default")
        assert isinstance(get_broker(), ORM)
        return {"REDIS_URL": None}
    connection = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        connection.ping()
    except redis.RedisError as exc:
        message = f"Redis at {REDIS_TEST_URL} is not reachable: {exc}"
        if os.environ.get("CI") or os.environ.get("REDIS_TEST_URL"):
            pytest.fail(message)
        pytest.skip(message)
    connection.flushdb()
    request.addfinalizer(connection.flushdb)
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", REDIS_TEST_URL)
    assert isinstance(get_broker(), RedisBroker)
    return {"REDIS_URL": REDIS_TEST_URL}


@pytest.fixture
def demo(transactional_db):
    """The demo data, committed so the cluster sees it."""
    seed_demo()


@pytest.fixture
def model(fake_openai: FakeOpenAIServer) -> FakeOpenAIServer:
    fake_openai.latency = MODEL_LATENCY
    return fake_openai


@pytest.fixture
def clusters(demo, broker, model, tmp_path) -> Iterator[Clusters]:
    """Start clusters with `clusters.start(**env)`; every one is stopped (then its process
    group killed) afterwards, and its output printed (shown when the test failed)."""
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    base_env = {
        "DATABASE_URL": database_url_of_this_process(),
        "DESK_Q_POLL": "0.1",
        "DESK_Q_WORKERS": "2",
        "DESK_LOG_LEVEL": "INFO",
        "DESK_LLM_PROVIDER": "openai",
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "test-key",
        "DESK_STEP_LEASE_SECONDS": str(LEASE_SECONDS),
        **broker,
    }
    started = Clusters(var_dir, base_env)
    yield started
    for number, cluster in enumerate(started.started, 1):
        stop_process(cluster.process, sig=signal.SIGTERM, timeout=30)
        print(f"--- qcluster {number} output ---\n{cluster.output()}")
    kill_tagged(var_dir)
    connection.close()  # in case the test restarted PostgreSQL under it


# --- stories --------------------------------------------------------------------------------


def start(tenant_slug: str, number: int, role_slug: str = "intake-coordinator") -> Run:
    tenant = Tenant.objects.get(slug=tenant_slug)
    return start_run(
        tenant=tenant,
        role=Role.objects.get(tenant=tenant, slug=role_slug),
        input={**INTAKE_INPUT, "subject": f"{INTAKE_INPUT['subject']} #{number}"},
        actor=Actor.system("tests"),
        via=Run.Via.COMMAND,
    )


def start_runs(harbor: int, northwind: int) -> list[Run]:
    tenants = ["harbor-legal"] * harbor + ["northwind-accounting"] * northwind
    return [start(slug, number) for number, slug in enumerate(tenants, 1)]


def statuses(runs: list[Run]) -> collections.Counter:
    return collections.Counter(
        Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)
    )


def wait_until_all(
    runs: list[Run], status: str, cluster: Cluster, *, poll: Callable = wait_for
) -> None:
    """Poll until every run has `status`; fails at once if one closes otherwise."""
    failing = {Run.Status.FAILED, Run.Status.CANCELLED, Run.Status.REJECTED}

    def check():
        found = statuses(runs)
        bad = failing & set(found)
        if bad and status not in bad:
            errors = list(Run.objects.filter(pk__in=[r.pk for r in runs], status__in=bad))
            pytest.fail(f"runs closed unexpectedly: {[(r.pk, r.status, r.error) for r in errors]}")
        return found[status] == len(runs)

    try:
        poll(
            check,
            what=f"all {len(runs)} runs to be {status}",
            timeout=TIMEOUT,
            process=cluster.process,
        )
    except pytest.fail.Exception as exc:
        steps = StepRun.objects.filter(run__in=runs).order_by("run_id", "index")
        found = [(s.run_id, s.key, s.status, s.attempts, s.lease_owner) for s in steps]
        pytest.fail(f"{exc.msg}\nruns: {dict(statuses(runs))}\nsteps: {found}")


def approve_all(runs: list[Run]) -> None:
    User = get_user_model()
    for run in runs:
        request = ApprovalRequest.objects.get(run=run, status=ApprovalRequest.Status.PENDING)
        reviewer = User.objects.get(username=REVIEWERS[run.tenant.slug])
        decide(request=request, reviewer=reviewer, verdict=Decision.Verdict.APPROVE)


def wait_until_sent(runs: list[Run], cluster: Cluster, *, poll: Callable = wait_for) -> None:
    ids = [r.pk for r in runs]
    poll(
        lambda: (
            OutboxMessage.objects.filter(run_id__in=ids, status=OutboxMessage.Status.SENT).count()
            >= len(runs)
        ),
        what=f"the outbox of all {len(runs)} runs to be sent",
        timeout=TIMEOUT,
        process=cluster.process,
    )


def approve_and_wait_until_sent(runs: list[Run], cluster: Cluster) -> None:
    wait_until_all(runs, Run.Status.WAITING_APPROVAL, cluster)
    approve_all(runs)
    wait_until_all(runs, Run.Status.COMPLETED, cluster)
    wait_until_sent(runs, cluster)


def running_steps() -> list[StepRun]:
    return list(StepRun.objects.filter(status=StepRun.Status.RUNNING).order_by("pk"))


def wait_until_expired(steps: list[StepRun], *, poll: Callable = wait_for) -> None:
    """Bounded wait for the leases of `steps` to lapse."""
    expiry = max(s.lease_expires_at for s in steps)
    poll(
        lambda: timezone.now() > expiry,
        what="the broken leases to expire",
        timeout=LEASE_SECONDS + 10,
    )


def assert_nothing_lost_or_doubled(runs: list[Run], clusters: Clusters) -> None:
    """Each run parked at its gate or completed, its steps in order, each effect once."""
    mails = clusters.mails()
    for run in runs:
        run.refresh_from_db()
        steps = list(run.steps.order_by("index"))
        states = [s.status for s in steps]
        where = f"run {run.pk} ({run.status}, steps {states})"
        events = list(AuditEvent.objects.filter(run_id=run.pk).values_list("action", "step_id"))
        once = collections.Counter(events)
        assert [e for e, n in once.items() if n > 1 and e[0] != "data.read"] == [], where
        assert ApprovalRequest.objects.filter(run=run).count() == 1, where  # parked once
        messages = list(OutboxMessage.objects.filter(run=run))
        if run.status == Run.Status.COMPLETED:
            assert set(states) == {StepRun.Status.COMPLETED}, where
            [message] = messages
            assert message.status == OutboxMessage.Status.SENT, where
            assert message.attempts == 1, where
            assert mails.count(f"X-AgentDesk-Key: {message.idempotency_key}\n") == 1, where
            actions = [action for action, _ in events]
            assert actions.count("outbox.sent") == 1, where
            assert actions.count("run.completed") == 1, where
        else:
            assert run.status == Run.Status.WAITING_APPROVAL, where
            gate = states.index(StepRun.Status.WAITING_APPROVAL)
            assert states[:gate] == [StepRun.Status.COMPLETED] * gate, where
            assert set(states[gate + 1 :]) <= {StepRun.Status.PENDING}, where
            assert messages == [], where
    for tenant_id in {run.tenant_id for run in runs}:
        assert verify_chain(tenant_id=tenant_id) == []


def reap() -> bool:
    reap_expired_leases()
    return True


def single_worker_pid(cluster: Cluster) -> int:
    [pid] = wait_for(
        lambda: cluster.worker_pids() or None,
        what="the cluster's worker to start",
        timeout=TIMEOUT,
        process=cluster.process,
    )
    return pid


# --- 1. a worker killed mid-step ----------------------------------------------------------------


def test_worker_killed_mid_step_is_reaped_and_retried(clusters, model):
    # One worker: every lease is its own, whatever the lease says about its owner.
    cluster = clusters.start(DESK_Q_WORKERS="1")
    worker_pid = single_worker_pid(cluster)
    runs = start_runs(harbor=2, northwind=1)
    wait_for(
        lambda: len(running_steps()) == len(runs) and model.in_flight == len(runs),
        what="every run's first step to be in its model call",
        timeout=TIMEOUT,
        process=cluster.process,
    )
    leased = running_steps()
    owners = {s.pk: s.lease_owner for s in leased}
    assert all(re.fullmatch(r"[^:]+:\d+:[0-9a-f]{8}", owner) for owner in owners.values()), owners

    os.kill(worker_pid, signal.SIGKILL)
    wait_for(
        lambda: worker_pid not in process_group(cluster.process.pid),
        what=f"worker {worker_pid} to die",
        timeout=10,
        interval=0.05,
    )
    # Killed mid-step: nothing was checkpointed in between.
    assert [(s.pk, s.attempts, s.lease_expires_at) for s in running_steps()] == [
        (s.pk, s.attempts, s.lease_expires_at) for s in leased
    ]
    assert {s.attempts for s in leased} == {1}
    # django-q2 replaces the dead worker; the steps wait for their leases to lapse.
    wait_for(
        lambda: [p for p in cluster.worker_pids() if p != worker_pid],
        what="django-q2 to replace the dead worker",
        timeout=TIMEOUT,
        process=cluster.process,
    )
    wait_until_expired(leased)
    assert reap_expired_leases() >= len(leased)

    wait_until_all(runs, Run.Status.WAITING_APPROVAL, cluster)
    for step in leased:
        step.refresh_from_db()
        assert step.status == StepRun.Status.COMPLETED
        assert step.attempts == 2, f"step {step.pk} ({step.key}) ran {step.attempts} times"
        [expired] = AuditEvent.objects.filter(step_id=step.pk, action="step.lease_expired")
        assert expired.data["attempts"] == 1
        assert expired.data["owner"] == owners[step.pk]
    later = StepRun.objects.filter(run__in=runs).exclude(pk__in=[s.pk for s in leased])
    assert set(later.exclude(attempts=0).values_list("attempts", flat=True)) == {1}
    assert_nothing_lost_or_doubled(runs, clusters)

    approve_and_wait_until_sent(runs, cluster)
    assert_nothing_lost_or_doubled(runs, clusters)


def test_lease_owner_names_the_worker_process(clusters, model):
    model.latency = 1.0
    cluster = clusters.start(DESK_Q_WORKERS="1")
    worker_pid = single_worker_pid(cluster)
    [run] = start_runs(harbor=1, northwind=0)
    [step] = wait_for(
        running_steps, what="a step to be leased", timeout=TIMEOUT, process=cluster.process
    )
    wait_until_all([run], Run.Status.WAITING_APPROVAL, cluster)
    assert_nothing_lost_or_doubled([run], clusters)
    # host:pid of the worker that holds it, then a token unique to the lease.
    assert step.lease_owner.startswith(f"{socket.gethostname()}:{worker_pid}:"), (
        f"the lease names {step.lease_owner}; the worker is pid {worker_pid}, "
        f"qcluster pid {cluster.process.pid}"
    )


# --- 2. the whole cluster killed and restarted ------------------------------------------------


@pytest.mark.parametrize("broker", ["orm", "redis"], indirect=True)
def test_cluster_killed_and_restarted_mid_load(clusters, monkeypatch):
    # A crash loses the doorbells the cluster had taken (Redis) or locked (ORM): let the
    # reaper re-ring runs at once instead of after STALL_SECONDS.
    monkeypatch.setattr(desk.services, "STALL_SECONDS", 0)
    # Capacity 2 for harbor: its other runs queue, and are admitted as runs park.
    Tenant.objects.filter(slug="harbor-legal").update(max_concurrent_runs=2)
    cluster = clusters.start()
    runs = start_runs(harbor=4, northwind=2)
    # Mid-load: some run past its first model call, into its second.
    wait_for(
        lambda: StepRun.objects.filter(key="draft", status=StepRun.Status.RUNNING).exists(),
        what="a draft to be in its model call",
        timeout=TIMEOUT,
        process=cluster.process,
    )
    kill_group(cluster.process)
    orphaned = running_steps()
    assert orphaned, "the cluster died holding no lease"
    assert statuses(runs)[Run.Status.QUEUED] > 0

    cluster = clusters.start()
    wait_until_expired(orphaned)
    assert reap_expired_leases() >= len(orphaned)

    wait_until_all(runs, Run.Status.WAITING_APPROVAL, cluster)
    for step in orphaned:
        step.refresh_from_db()
        assert step.attempts == 2, f"step {step.pk} ({step.key}) ran {step.attempts} times"
        assert AuditEvent.objects.filter(step_id=step.pk, action="step.lease_expired").exists()
    assert_nothing_lost_or_doubled(runs, clusters)

    approve_and_wait_until_sent(runs, cluster)
    assert_nothing_lost_or_doubled(runs, clusters)


# --- 3. every task delivered twice ---------------------------------------------------------------


def ring_twice(enqueue: Callable) -> Callable:
    def enqueue_twice(*args, **kwargs):
        enqueue(*args, **kwargs)
        return enqueue(*args, **kwargs)

    return enqueue_twice


@pytest.mark.parametrize("broker", ["orm", "redis"], indirect=True)
def test_every_task_delivered_twice_changes_nothing(clusters, model, monkeypatch):
    model.latency = 0.3
    # Doorbells rung here (intake, decisions) and in the cluster all go out twice.
    monkeypatch.setattr(desk.tasks, "async_task", ring_twice(desk.tasks.async_task))
    monkeypatch.setattr(django_q.tasks, "async_task", ring_twice(django_q.tasks.async_task))
    Tenant.objects.filter(slug="harbor-legal").update(max_concurrent_runs=2)
    cluster = clusters.start(launcher=RING_TWICE_LAUNCHER)
    runs = start_runs(harbor=3, northwind=2)

    approve_and_wait_until_sent(runs, cluster)

    assert_nothing_lost_or_doubled(runs, clusters)
    steps = StepRun.objects.filter(run__in=runs)
    assert set(steps.values_list("attempts", flat=True)) == {1}
    assert not AuditEvent.objects.filter(action="step.lease_expired").exists()
    # The fault was there: each outbox delivery reached a worker twice.
    wait_for(
        lambda: tasks_done("desk.tasks.deliver_outbox") == 2 * len(runs),
        what="both deliveries of every outbox message to be done",
        timeout=TIMEOUT,
        process=cluster.process,
    )


def tasks_done(func: str) -> int:
    return Task.objects.filter(func=func).count()


def test_reviewer_notification_delivered_twice_is_sent_once(clusters, model, monkeypatch):
    model.latency = 0.3
    monkeypatch.setattr(desk.tasks, "async_task", ring_twice(desk.tasks.async_task))
    monkeypatch.setattr(django_q.tasks, "async_task", ring_twice(django_q.tasks.async_task))
    cluster = clusters.start(launcher=RING_TWICE_LAUNCHER)
    [run] = start_runs(harbor=1, northwind=0)
    wait_until_all([run], Run.Status.WAITING_APPROVAL, cluster)
    wait_for(
        lambda: tasks_done("approvals.tasks.notify_reviewers") == 2,
        what="both deliveries of the reviewers' notification to be done",
        timeout=TIMEOUT,
        process=cluster.process,
    )
    assert_nothing_lost_or_doubled([run], clusters)
    assert clusters.notifications(run) == 1


# --- 5. the cluster as the application role ----------------------------------------------------


def app_role_url() -> str:
    parts = urlsplit(database_url_of_this_process())
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"agentdesk_app@{host}"))


def test_cluster_as_application_role_sets_tenant_context(clusters):
    cluster = clusters.start(DATABASE_URL=app_role_url())
    runs = start_runs(harbor=1, northwind=1)

    wait_until_all(runs, Run.Status.WAITING_APPROVAL, cluster)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
        assert {row[0] for row in cursor.fetchall()} == {"agentdesk_app"}
    # Under row-level security a query outside the tenant's context finds nothing and
    # sends nothing, silently: the reviewers' notifications prove their queries saw rows.
    wait_for(
        lambda: all(clusters.notifications(run) == 1 for run in runs),
        what="the reviewers to be notified",
        timeout=TIMEOUT,
        process=cluster.process,
    )
    approve_and_wait_until_sent(runs, cluster)
    # The scheduled jobs, as the same role.
    scheduled = ["desk.tasks.reap_expired_leases", "approvals.tasks.process_overdue_requests"]
    for func in scheduled:
        async_task(func)
    wait_for(
        lambda: Task.objects.filter(func__in=scheduled, success=True).count() == len(scheduled),
        what="the reaper and the overdue-approvals job to succeed",
        timeout=TIMEOUT,
        process=cluster.process,
    )

    assert_nothing_lost_or_doubled(runs, clusters)
    assert set(StepRun.objects.filter(run__in=runs).values_list("attempts", flat=True)) == {1}
    assert not Task.objects.filter(success=False).exists()
    assert "Traceback" not in cluster.output()


# --- 4. PostgreSQL restarted mid-run (last: it cuts every session on the server) -----------------


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


def test_postgresql_restarted_mid_run(clusters, monkeypatch):
    if reason := restart_unavailable():
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    monkeypatch.setattr(desk.services, "STALL_SECONDS", 0)
    cluster = clusters.start()
    runs = start_runs(harbor=3, northwind=2)
    wait_for(
        lambda: len(running_steps()) >= 2,
        what="steps to be in their model calls",
        timeout=TIMEOUT,
        process=cluster.process,
    )
    in_flight = running_steps()

    restart_postgresql(timeout=TIMEOUT)
    connection.close()  # this process's connection was cut too

    # The cluster reconnects by itself; the steps whose checkpoint failed wait for the reaper.
    wait_until_expired(in_flight, poll=wait_for_database)
    wait_for_database(reap, what="the reaper to run", timeout=TIMEOUT, process=cluster.process)
    wait_until_all(runs, Run.Status.WAITING_APPROVAL, cluster, poll=wait_for_database)
    assert_nothing_lost_or_doubled(runs, clusters)
    reaped = AuditEvent.objects.filter(action="step.lease_expired").count()
    attempts = collections.Counter(
        StepRun.objects.filter(run__in=runs).values_list("attempts", flat=True)
    )
    print(f"restart: {len(in_flight)} steps in flight, {reaped} reaped, attempts {attempts}")

    approve_all(runs)
    wait_until_all(runs, Run.Status.COMPLETED, cluster)
    wait_until_sent(runs, cluster)
    assert_nothing_lost_or_doubled(runs, clusters)
