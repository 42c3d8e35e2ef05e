"""The lock order is code: a lock taken out of order is refused before it can deadlock."""

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections, connection

from approvals.models import ApprovalRequest
from approvals.services import DecisionError, decide
from audit.models import AuditEvent
from audit.services import Actor, lock_chain
from desk.models import Run
from desk.services import RunError, cancel_run, lock_run
from tenants import locking
from tenants.locking import Level, LockOrderError, lock
from tenants.models import Tenant
from tests.conftest import on_postgres


def test_locks_in_order_are_taken(parked_intake):
    with locking.atomic():
        run, steps = lock_run(parked_intake.pk)
        list(lock(ApprovalRequest.objects.filter(run=run), Level.APPROVAL))
        lock_chain(run.tenant_id)
        lock(Tenant.objects.filter(pk=run.tenant_id), Level.TENANT).get()

    assert len(steps) == 4


def test_a_run_locked_after_the_audit_chain_is_refused_and_nothing_is_written(parked_intake):
    events = AuditEvent.objects.count()

    refused = pytest.raises(LockOrderError, match="RUN lock taken while holding AUDIT_CHAIN")
    with refused, locking.atomic():
        lock_chain(parked_intake.tenant_id)
        Run.objects.filter(pk=parked_intake.pk).move("cancel")

    parked_intake.refresh_from_db()
    assert parked_intake.status == Run.Status.WAITING_APPROVAL
    assert AuditEvent.objects.count() == events


def test_steps_locked_after_approvals_are_refused(parked_intake):
    with pytest.raises(LockOrderError, match="STEP"), locking.atomic():
        lock(Run.objects.filter(pk=parked_intake.pk), Level.RUN).get()
        list(lock(ApprovalRequest.objects.filter(run=parked_intake), Level.APPROVAL))
        list(lock(parked_intake.steps.all(), Level.STEP))


def test_more_of_a_level_already_held_and_skip_locked_locks_are_allowed(parked_intake):
    with locking.atomic():
        lock_run(parked_intake.pk)
        lock_chain(parked_intake.tenant_id)
        lock_run(parked_intake.pk)  # the same run again: already held
        list(lock(Run.objects.all(), Level.RUN, skip_locked=True))  # never waits


def test_each_service_starts_its_own_order(parked_intake):
    # A test's outer transaction is not one service: two services in a row both pass.
    with locking.atomic():
        lock_chain(parked_intake.tenant_id)
    with locking.atomic():
        lock_run(parked_intake.pk)


def race(*works) -> list[str]:
    """Run each callable in its own thread and connection, released together; return the
    names of the expected errors they raised (and the repr of any other)."""
    barrier = threading.Barrier(len(works))
    errors: list[str] = []

    def target(work):
        close_old_connections()
        barrier.wait()
        try:
            work()
        except (RunError, DecisionError) as exc:
            errors.append(type(exc).__name__)
        except Exception as exc:  # a deadlock would land here
            errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(work,)) for work in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return errors


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_decision_racing_a_cancellation_never_deadlocks(transactional_db):
    """Cancel locks run, steps, then requests; decide must too (it used to lock the request
    first, then the run: a deadlock waiting to happen)."""
    from django.contrib.auth import get_user_model

    from desk.demo import seed_demo
    from desk.services import start_run
    from roles.models import Role
    from tests.conftest import INTAKE_INPUT
    from tests.runtime import advance

    assert on_postgres()
    seed_demo()
    harbor = Tenant.objects.get(slug="harbor-legal")
    role = Role.objects.get(tenant=harbor, slug="intake-coordinator")
    reviewer = get_user_model().objects.get(username="reviewer.harbor")
    operator = Actor.for_user(get_user_model().objects.get(username="ops"))
    for _ in range(5):
        run = start_run(
            tenant=harbor, role=role, input=INTAKE_INPUT, actor=Actor.system("t"), via="command"
        )
        advance(run)
        request = ApprovalRequest.objects.get(run=run)

        errors = race(
            lambda r=request: decide(request=r, reviewer=reviewer, verdict="approve"),
            lambda r=run: cancel_run(run=r, actor=operator, reason="stop"),
        )

        run.refresh_from_db()
        request.refresh_from_db()
        # Whichever went first, the other saw its result: decided then cancelled, or
        # cancelled (the request closed with it) and the decision refused.
        assert run.status == Run.Status.CANCELLED
        assert (request.status, request.decisions.count(), errors) in [
            (ApprovalRequest.Status.APPROVED, 1, []),
            (ApprovalRequest.Status.CANCELLED, 0, ["DecisionError"]),
        ]
