"""Two decisions racing on one request, on PostgreSQL with real concurrent transactions:
exactly one outcome and one resume, whatever the interleaving."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from approvals.models import ApprovalRequest, Decision
from approvals.services import decide
from audit.services import Actor
from desk.models import Run
from desk.services import start_run
from roles.models import Role
from tenants.models import Tenant
from tests.conftest import on_postgres
from tests.tenants.test_locking import race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def world(transactional_db, monkeypatch):
    from desk.demo import seed_demo

    assert on_postgres()
    seed_demo()
    rung: list[int] = []
    monkeypatch.setattr("desk.doorbell.async_task", lambda func, **kw: rung.append(kw["run_id"]))
    return {u.username: u for u in get_user_model().objects.all()}, rung


def parked(slug: str, tenant_slug: str, input: dict) -> ApprovalRequest:
    from tests.runtime import advance

    tenant = Tenant.objects.get(slug=tenant_slug)
    run = start_run(
        tenant=tenant,
        role=Role.objects.get(tenant=tenant, slug=slug),
        input=input,
        actor=Actor.system("tests"),
        via="command",
    )
    advance(run)
    return ApprovalRequest.objects.get(run=run, status=ApprovalRequest.Status.PENDING)


FOLLOW_UP = {"client_email": "maya.chen@example.com", "meeting_topic": "Lease", "notes": "Friday."}
STATEMENT = {"period": "2026-11", "ledger_reference": "LED-2026-11"}


def test_approve_racing_reject_gives_one_outcome(world):
    users, rung = world
    for _ in range(3):
        request = parked("client-follow-up", "harbor-legal", FOLLOW_UP)
        rung.clear()

        errors = race(
            lambda r=request: decide(
                request=r, reviewer=users["reviewer.harbor"], verdict="approve"
            ),
            lambda r=request: decide(
                request=r, reviewer=users["ops"], verdict="reject", comment="No."
            ),
        )

        request.refresh_from_db()
        run = Run.objects.get(pk=request.run_id)
        assert errors == ["DecisionError"]
        assert request.decisions.count() == 1
        if request.status == ApprovalRequest.Status.APPROVED:
            assert run.status == Run.Status.RUNNING and rung == [run.pk]
        else:
            assert request.status == ApprovalRequest.Status.REJECTED
            assert run.status == Run.Status.REJECTED and rung == []


def test_two_approvals_completing_a_quorum_resume_once(world):
    users, _ = world  # the statement is the last step: the run completes in the decision
    for _ in range(3):
        request = parked("month-end-reporter", "northwind-accounting", STATEMENT)

        errors = race(
            lambda r=request: decide(
                request=r, reviewer=users["partner.northwind"], verdict="approve"
            ),
            lambda r=request: decide(
                request=r, reviewer=users["reviewer.northwind"], verdict="approve"
            ),
        )

        request.refresh_from_db()
        assert errors == []
        assert request.status == ApprovalRequest.Status.APPROVED
        assert request.decisions.count() == 2
        assert Run.objects.get(pk=request.run_id).status == Run.Status.COMPLETED


def test_a_double_click_records_one_decision_and_one_resume(world):
    users, rung = world
    request = parked("client-follow-up", "harbor-legal", FOLLOW_UP)
    rung.clear()

    errors = race(
        *[
            lambda: decide(request=request, reviewer=users["reviewer.harbor"], verdict="approve")
            for _ in range(2)
        ]
    )

    request.refresh_from_db()
    assert errors == ["DecisionError"]
    assert Decision.objects.filter(request=request).count() == 1
    assert rung == [request.run_id]
