"""What the runtime tells the outside world happened (a run completed, an approval was
requested), without importing the app that delivers it (webhooks depends on desk).
settings.DESK_EVENT_SINK names the implementation; empty, events go nowhere.

`publish` is called inside the transaction that made the change: the sink writes its
deliveries there (an outbox), so an event exists exactly when its change committed.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string


class EventSink(Protocol):
    def __call__(self, *, tenant_id: int, event_type: str, data: dict[str, Any], run, step) -> Any:
        """Queue the event's deliveries (inside the caller's transaction)."""


@cache
def _sink(path: str) -> EventSink:
    return import_string(path)


def publish(*, run, step, event_type: str, data: dict[str, Any]) -> None:
    """Announce an event about a run (and one of its steps) to the tenant's subscribers."""
    path = getattr(settings, "DESK_EVENT_SINK", "")
    if path:
        _sink(path)(tenant_id=run.tenant_id, event_type=event_type, data=data, run=run, step=step)
