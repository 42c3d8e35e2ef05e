"""Real `manage.py desk_worker` processes for end-to-end and fault tests: starting them on the
test database, finding each process of their tree (supervisor, cluster main, sentinel,
workers, pusher, monitor, sweeper), and the stories and checks the tests share.

The test process plays intake and the reviewers (through the services, as the admin would);
the workers do the work. Both share pytest-django's test database, so these tests are
transactional (a worker sees only committed rows). django-q2 reads its configuration into
`django_q.conf.Conf` at import, so the `broker` fixture points this process at the broker
the workers use: doorbells rung here land where the workers read.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from approvals.models import ApprovalRequest, Decision
from approvals.services import decide
from audit.models import AuditEvent
from audit.services import Actor
from audit.verification import verify_chain
from desk.models import OutboxMessage, Run, StepRun
from desk.services import start_run
from roles.models import Role
from tenants.models import Tenant
from tests.conftest import INTAKE_INPUT
from tests.e2e.support import (
    _proc_field,
    kill_tagged,
    manage_command,
    process_env,
    stop_process,
    wait_for,
)

TIMEOUT = 60  # seconds any one wait may take
REVIEWERS = {"harbor-legal": "reviewer.harbor", "northwind-accounting": "reviewer.northwind"}
# Patient enough for a loaded test machine, quick enough to keep the tests short.
TEST_TIMING = {
    "probe_every": 1.0,
    "probe_timeout": 6.0,
    "busy_grace": 6.0,
    "sentinel_grace": 6.0,
    "startup_grace": 10.0,
    "heartbeat_every": 1.0,
    "stop_timeout": 10.0,
    "backoff_max": 2.0,
}
ROLES = ("supervisor", "cluster", "sentinel", "worker", "pusher", "monitor", "sweeper")


def children(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = _proc_field(entry, "stat").decode().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> str:
    try:
        return _proc_field(str(pid), "cmdline").replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def is_stopped(pid: int) -> bool:
    try:
        return _proc_field(str(pid), "stat").decode().rsplit(")", 1)[1].split()[0] == "T"
    except (FileNotFoundError, ProcessLookupError):
        return False


@dataclass
class Worker:
    """One `desk_worker` subprocess, in its own process group."""

    name: str
    process: subprocess.Popen
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def tree(self) -> dict[str, list[int]]:
        """pids by role, from /proc (parents) and the cluster's log (what each child is)."""
        roles: dict[str, list[int]] = {role: [] for role in ROLES}
        if self.process.poll() is not None:
            return roles
        roles["supervisor"] = [self.process.pid]
        log = self.output()
        kinds = {}
        for kind, pattern in (
            ("worker", r"ready for work at (\d+)"),
            ("monitor", r"monitoring at (\d+)"),
            ("pusher", r"pushing tasks at (\d+)"),
        ):
            kinds.update({int(pid): kind for pid in re.findall(pattern, log)})
        for child in children(self.process.pid):
            line = cmdline(child)
            if "desk_sweeper" in line:
                roles["sweeper"].append(child)
            elif "qcluster" in line:
                roles["cluster"].append(child)
                for sentinel in children(child):
                    roles["sentinel"].append(sentinel)
                    for member in children(sentinel):
                        if member in kinds:
                            roles[kinds[member]].append(member)
        return roles

    def ready(self) -> bool:
        """Every process of its tree runs (the cluster has started its workers)."""
        tree = self.tree()
        return all(tree[role] for role in ROLES)

    def restarts(self) -> int:
        return len(re.findall(r"replacing the cluster", self.output()))


@dataclass
class Workers:
    """Starts desk_worker subprocesses for one test; all stopped (then killed) afterwards."""

    var_dir: Path
    base_env: dict[str, str | None]
    started: list[Worker] = field(default_factory=list)

    def start(self, name: str = "w1", *, wait: bool = True, **env: str | None) -> Worker:
        log_path = self.var_dir.parent / f"desk_worker-{name}-{len(self.started) + 1}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                manage_command("desk_worker", f"--name={name}"),
                cwd=Path(__file__).resolve().parents[2],
                env=process_env(self.var_dir, **{**self.base_env, **env}),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        worker = Worker(name, process, log_path)
        self.started.append(worker)
        if wait:
            wait_for(worker.ready, what=f"worker {name} to start", timeout=TIMEOUT, process=process)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            tree = worker.tree()
            for pid in (p for pids in tree.values() for p in pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)  # a test may have stopped one
            stop_process(worker.process, sig=signal.SIGTERM, timeout=30)
            print(f"--- desk_worker {worker.name} output ---\n{worker.output()}")
        kill_tagged(self.var_dir)

    def mails(self) -> str:
        mail_dir = self.var_dir / "outbox-mail"
        return "".join(p.read_text() for p in mail_dir.iterdir()) if mail_dir.exists() else ""

    def notifications(self, run: Run) -> int:
        """How many reviewer notifications (not reminders) went out about the run's gate, as
        one reviewer of every demo tenant (`ops`) received them: each reviewer gets their own
        message."""
        messages = self.mails().split("-" * 79)  # Django's file backend separates messages
        return sum(
            f"of run #{run.pk} is waiting" in message
            and "To: ops@agentdesk.example" in message
            and "Subject: Reminder" not in message
            for message in messages
        )


def worker_env(database_url: str, broker_env: dict, **extra: str) -> dict[str, str | None]:
    return {
        "DATABASE_URL": database_url,
        "DESK_Q_POLL": "0.1",
        "DESK_Q_WORKERS": "2",
        "DESK_LOG_LEVEL": "INFO",
        "DESK_SUPERVISOR_TIMING": json.dumps(TEST_TIMING),
        **broker_env,
        **extra,
    }


# --- stories ------------------------------------------------------------------------------------


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


def running_steps() -> list[StepRun]:
    return list(StepRun.objects.filter(status=StepRun.Status.RUNNING).order_by("pk"))


def alive(*workers: Worker) -> Callable[[], None]:
    def check():
        for worker in workers:
            if worker.process.poll() is not None:
                pytest.fail(f"desk_worker {worker.name} exited with {worker.process.returncode}")

    return check


def wait_until_all(
    runs: list[Run], status: str, *, timeout: float = TIMEOUT, poll: Callable = wait_for
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
        poll(check, what=f"all {len(runs)} runs to be {status}", timeout=timeout)
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


def wait_until_sent(runs: list[Run], *, timeout: float = TIMEOUT, poll: Callable = wait_for):
    ids = [r.pk for r in runs]
    poll(
        lambda: (
            OutboxMessage.objects.filter(run_id__in=ids, status=OutboxMessage.Status.SENT).count()
            >= len(runs)
        ),
        what=f"the outbox of all {len(runs)} runs to be sent",
        timeout=timeout,
    )


def approve_and_wait_until_sent(runs: list[Run], *, timeout: float = TIMEOUT) -> None:
    wait_until_all(runs, Run.Status.WAITING_APPROVAL, timeout=timeout)
    approve_all(runs)
    wait_until_all(runs, Run.Status.COMPLETED, timeout=timeout)
    wait_until_sent(runs, timeout=timeout)


# Events a step may legitimately write more than once (an attempt lost to a kill or a retry).
REPEATABLE = {"data.read", "step.error", "step.lease_expired"}


def assert_nothing_lost_or_doubled(runs: list[Run], workers: Workers) -> None:
    """Each run parked at its gate or completed, its steps in order, each effect once."""
    mails = workers.mails()
    for run in runs:
        run.refresh_from_db()
        steps = list(run.steps.order_by("index"))
        states = [s.status for s in steps]
        where = f"run {run.pk} ({run.status}, steps {states})"
        events = list(AuditEvent.objects.filter(run_id=run.pk).values_list("action", "step_id"))
        once = collections.Counter(events)
        assert [e for e, n in once.items() if n > 1 and e[0] not in REPEATABLE] == [], where
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
