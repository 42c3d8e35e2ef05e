"""Runs end to end through a real `manage.py qcluster` process.

The test process plays intake and the reviewers (services, as the admin would call them);
the cluster subprocess does the work: it takes the doorbells from the broker, executes the
steps, parks runs at their gates and delivers the outbox. Both share pytest-django's test
database, so the tests are transactional (the subprocess sees only committed rows).

Brokers: the cluster picks its broker from its environment (REDIS_URL switches to Redis).
django-q2 reads its configuration into `django_q.conf.Conf` once, at import, and
`async_task` in this process asks `get_broker()`, which reads `Conf.ORM` / `Conf.REDIS`
on every call; so the `broker` fixture patches those two attributes for the test, and the
doorbells rung here (on commit) land on the same broker the cluster reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis
from django.contrib.auth import get_user_model
from django_q.brokers import get_broker
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis as RedisBroker
from django_q.conf import Conf

from approvals.models import ApprovalRequest, Decision
from approvals.services import decide
from audit.models import AuditEvent
from audit.services import Actor, verify_chain
from desk.demo import seed_demo
from desk.models import OutboxMessage, Run, StepRun
from desk.services import start_run
from roles.models import Role
from tenants.models import Tenant
from tests.conftest import INTAKE_INPUT
from tests.e2e.support import (
    database_url_of_this_process,
    kill_tagged,
    manage_command,
    process_env,
    stop_process,
    wait_for,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.cluster,
    pytest.mark.django_db(transaction=True),
]

REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")
RUN_TIMEOUT_SECONDS = 60
CLOSED = {Run.Status.COMPLETED, Run.Status.REJECTED, Run.Status.FAILED, Run.Status.CANCELLED}


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
def cluster(demo, broker, tmp_path):
    """A `manage.py qcluster` on the test database; stopped (then killed) afterwards."""
    log_path = tmp_path / "qcluster.log"
    env = process_env(
        tmp_path,
        DATABASE_URL=database_url_of_this_process(),
        DESK_Q_POLL="0.1",
        DESK_Q_WORKERS="2",
        DESK_LOG_LEVEL="INFO",
        **broker,
    )
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            manage_command("qcluster"),
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    yield process
    stop_process(process, sig=signal.SIGTERM, timeout=30)
    kill_tagged(tmp_path)
    print(f"--- qcluster output ---\n{log_path.read_text()}")  # shown when the test failed


def wait_for_run(run: Run, status: str, cluster: subprocess.Popen) -> Run:
    """Poll until the run reaches `status` (or closes otherwise, which fails at once)."""

    def settled():
        run.refresh_from_db()
        return run.status == status or run.status in CLOSED

    wait_for(
        settled,
        what=f"run {run.pk} to be {status}",
        timeout=RUN_TIMEOUT_SECONDS,
        process=cluster,
    )
    assert run.status == status, f"run {run.pk} is {run.status}: {run.error}"
    return run


def pending_request(run: Run) -> ApprovalRequest:
    return ApprovalRequest.objects.get(run=run, status=ApprovalRequest.Status.PENDING)


def start(tenant_slug: str, role_slug: str, run_input: dict) -> Run:
    tenant = Tenant.objects.get(slug=tenant_slug)
    return start_run(
        tenant=tenant,
        role=Role.objects.get(tenant=tenant, slug=role_slug),
        input=run_input,
        actor=Actor.system("tests"),
        via=Run.Via.COMMAND,
    )


def user(username: str):
    return get_user_model().objects.get(username=username)


@pytest.mark.parametrize("broker", ["orm", "redis"], indirect=True)
def test_approved_intake_reply_is_sent_once(cluster, tmp_path):
    run = start("harbor-legal", "intake-coordinator", INTAKE_INPUT)
    wait_for_run(run, Run.Status.WAITING_APPROVAL, cluster)
    request = pending_request(run)
    assert request.step.key == "draft"

    decide(request=request, reviewer=user("reviewer.harbor"), verdict=Decision.Verdict.APPROVE)

    wait_for_run(run, Run.Status.COMPLETED, cluster)
    send = StepRun.objects.get(run=run, key="send")
    assert send.status == StepRun.Status.COMPLETED
    wait_for(
        lambda: OutboxMessage.objects.filter(run=run, status=OutboxMessage.Status.SENT).exists(),
        what="the outbox message to be sent",
        timeout=RUN_TIMEOUT_SECONDS,
        process=cluster,
    )
    [message] = OutboxMessage.objects.filter(run=run)
    assert message.status == OutboxMessage.Status.SENT
    assert message.step_id == send.pk
    assert message.payload["to"] == INTAKE_INPUT["from_email"]
    assert message.attempts == 1
    # The cluster's file e-mail backend also holds the reviewers' notifications.
    mails = "".join(p.read_text() for p in (tmp_path / "outbox-mail").iterdir())
    assert mails.count(f"X-AgentDesk-Key: {message.idempotency_key}\n") == 1
    actions = list(
        AuditEvent.objects.filter(run_id=run.pk).order_by("seq").values_list("action", flat=True)
    )
    assert actions.count("outbox.sent") == 1
    assert actions.count("run.completed") == 1
    assert verify_chain(tenant_id=run.tenant_id) == []


def test_rejected_intake_reply_is_never_sent(cluster):
    run = start("harbor-legal", "intake-coordinator", INTAKE_INPUT)
    wait_for_run(run, Run.Status.WAITING_APPROVAL, cluster)

    decide(
        request=pending_request(run),
        reviewer=user("reviewer.harbor"),
        verdict=Decision.Verdict.REJECT,
        comment="Wrong tone for this client.",
    )

    run.refresh_from_db()
    assert run.status == Run.Status.REJECTED
    assert run.error == "Wrong tone for this client."
    assert StepRun.objects.get(run=run, key="send").status == StepRun.Status.CANCELLED
    assert not OutboxMessage.objects.filter(run=run).exists()
    assert verify_chain(tenant_id=run.tenant_id) == []


def test_month_end_statement_needs_two_approvals(cluster):
    run = start(
        "northwind-accounting",
        "month-end-reporter",
        {"period": "2025-11", "ledger_reference": "L-2025-11"},
    )
    wait_for_run(run, Run.Status.WAITING_APPROVAL, cluster)
    request = pending_request(run)
    assert request.step.key == "statement"
    assert request.required_approvals == 2

    decide(request=request, reviewer=user("reviewer.northwind"), verdict=Decision.Verdict.APPROVE)

    run.refresh_from_db()
    request.refresh_from_db()
    assert run.status == Run.Status.WAITING_APPROVAL
    assert request.status == ApprovalRequest.Status.PENDING

    decide(request=request, reviewer=user("ops"), verdict=Decision.Verdict.APPROVE)

    wait_for_run(run, Run.Status.COMPLETED, cluster)
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.APPROVED
    assert request.decisions.count() == 2
    statement = StepRun.objects.get(run=run, key="statement")
    assert statement.status == StepRun.Status.COMPLETED
    assert set(statement.output) >= {"revenue", "expenses", "cash", "summary"}
    assert not OutboxMessage.objects.filter(run=run).exists()
    assert verify_chain(tenant_id=run.tenant_id) == []
