"""Doorbells: django-q2 tasks that say "there is work", enqueued once the current
transaction commits, carrying ids only. The database is the truth; a lost doorbell is
re-rung by the reaper, a doubled one finds nothing to do.

Rung with robust=True: if the broker is down, the committed work stands (an API client must
not see a 500 for a run that exists), the failure is logged and the reaper re-rings.
Results are not saved (`save: False`): what a doorbell did is in the database already,
and saving it would cost the broker's result table a commit per task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.conf import settings
from django.db import transaction
from django_q.tasks import async_task

from tenants import rls

logger = logging.getLogger(__name__)

RUNS_GROUP = {"group": "runs", "save": False}


def any_waiting() -> bool:
    """Whether tasks wait on the broker already: then a worker will come anyway, and a
    re-ring of work whose doorbell might be lost would only add to the queue."""
    from django_q.brokers import get_broker

    try:
        return get_broker().queue_size() > 0
    except Exception:  # the broker is down: ring anyway (robust); the health check says why
        logger.warning("could not read the broker's queue size", exc_info=True)
        return False


def _ring_now(run_id: int | None, tenant_id: int | None) -> None:
    async_task("desk.tasks.advance_run", run_id=run_id, tenant_id=tenant_id, q_options=RUNS_GROUP)


def ring_run(run_id: int, tenant_id: int) -> None:
    """Wake a worker for this run once the current transaction commits."""
    transaction.on_commit(
        lambda: _ring_now(run_id, tenant_id), robust=True, using=rls.current_alias()
    )


def ring_runs(runs: Sequence[tuple[int, int]]) -> None:
    """Wake workers for many (run id, tenant id) at once: one doorbell per worker batch.

    A worker task takes every ready run it can see, DESK_WORKER_BATCH at a time, so a
    doorbell per batch keeps as many workers busy as the work needs, and no more.
    """
    batch = max(1, settings.DESK_WORKER_BATCH)
    for run_id, tenant_id in runs[::batch]:
        ring_run(run_id, tenant_id)


def ring_work_now() -> None:
    """Wake a worker for whatever is ready, at once (outside any transaction)."""
    _ring_now(None, None)


OUTBOX_GROUP = {"group": "outbox", "save": False}


def ring_outbox(message_id: int) -> None:
    """Deliver an outbox message once the current transaction commits."""
    transaction.on_commit(
        lambda: async_task(
            "desk.tasks.deliver_outbox", message_id=message_id, q_options=OUTBOX_GROUP
        ),
        robust=True,
        using=rls.current_alias(),
    )
