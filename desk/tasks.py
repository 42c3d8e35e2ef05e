"""django-q2 entry points: ids in, one service call each. Enqueue only after commit."""

from __future__ import annotations

from django.db import transaction
from django_q.tasks import async_task

from desk import services, worker

# Doorbells are rung after commit with robust=True: if the broker is down, the committed
# work stands (an API client must not see a 500 for a run that exists), the failure is
# logged, and the reaper re-rings stalled runs and pending outbox messages.


def enqueue_advance(run_id: int) -> None:
    """Ring the doorbell for a run once the current transaction commits."""
    transaction.on_commit(
        lambda: async_task("desk.tasks.advance_run", run_id=run_id, q_options={"group": "runs"}),
        robust=True,
    )


def enqueue_outbox_delivery(message_id: int) -> None:
    transaction.on_commit(
        lambda: async_task(
            "desk.tasks.deliver_outbox", message_id=message_id, q_options={"group": "outbox"}
        ),
        robust=True,
    )


def advance_run(*, run_id: int | None) -> dict[str, int]:
    return worker.work(run_id=run_id)


def deliver_outbox(*, message_id: int) -> None:
    services.deliver_outbox_message(message_id=message_id)


def reap_expired_leases() -> int:
    return services.reap_expired_leases()
