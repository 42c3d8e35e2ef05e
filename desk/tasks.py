"""django-q2 entry points: ids in, one call each. Enqueued by desk.doorbell after commit."""

from __future__ import annotations

from desk import services, worker


def advance_run(*, run_id: int | None, tenant_id: int | None = None) -> dict[str, int]:
    return worker.work(run_id=run_id, tenant_id=tenant_id)


def deliver_outbox(*, message_id: int) -> None:
    services.deliver_outbox_message(message_id=message_id)
