"""Runs end to end through a real `manage.py desk_worker` (a supervised django-q2 cluster and
the sweeper), on the ORM and on the Redis broker.

The test process plays intake and the reviewers (services, as the admin would call them);
the worker takes the doorbells from the broker, executes the steps, parks runs at their
gates and delivers the outbox (fixtures in tests/e2e/conftest.py).
"""

from __future__ import annotations

import subprocess

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
from tests.e2e.support import wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.cluster,
    pytest.mark.django_db(transaction=True),
]

RUN_TIMEOUT_SECONDS = 60
CLOSED = {Run.Status.COMPLETED, Run.Status.REJECTED, Run.Status.FAILED, Run.Status.CANCELLED}


@pytest.fixture
def worker_settings():
    return {"DESK_LLM_PROVIDER": "offline"}


@pytest.fixture
def cluster(workers):
    """One desk_worker, running."""
    return workers.start("w1").process


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
def test_approved_intake_reply_is_sent_once(cluster, workers):
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
    mails = workers.mails()
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
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.PENDING  # two Reviewers: no partner yet

    decide(request=request, reviewer=user("partner.northwind"), verdict=Decision.Verdict.APPROVE)

    wait_for_run(run, Run.Status.COMPLETED, cluster)
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.APPROVED
    assert request.decisions.count() == 3
    statement = StepRun.objects.get(run=run, key="statement")
    assert statement.status == StepRun.Status.COMPLETED
    assert set(statement.output) >= {"revenue", "expenses", "cash", "summary"}
    assert not OutboxMessage.objects.filter(run=run).exists()
    assert verify_chain(tenant_id=run.tenant_id) == []
