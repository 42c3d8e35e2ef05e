"""The order in which every service takes row locks, enforced.

Two transactions that lock the same rows in opposite orders can deadlock. Every app takes
its locks in one order: a record changed on its own (an escalation, an outbox message, a
role, an API key, a grant), then a run, then its steps, then approval requests, then the
tenant's audit chain, then the tenant row itself. `lock()` wraps `select_for_update` and
refuses, with LockOrderError, a lock that would wait on a row of an earlier level once a
later level is held in the same transaction. Taking more of a level already held is
allowed (a row locked twice, the steps of a run already locked), and so are SKIP LOCKED
and NOWAIT locks, which never wait (they count as held from then on).

The order is tracked per service: every function that takes locks opens its transaction
with `atomic()` (or `tracked()` around a row-level-security context, which is a
transaction already), which starts tracking when nothing is tracked yet; a service called
inside another continues its caller's order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum

from django.db import connections, transaction
from django.db.models import QuerySet

from tenants.rls import current_alias


class Level(IntEnum):
    ROW = 5
    RUN = 10
    STEP = 20
    APPROVAL = 30
    AUDIT_CHAIN = 40
    TENANT = 50


class LockOrderError(RuntimeError):
    """A lock was requested out of order: a programming error that could deadlock."""


_TRACKER = "_agentdesk_locks_held"


@contextmanager
def tracked() -> Iterator[None]:
    """Check the row locks taken inside against the lock order (opens no transaction)."""
    connection = connections[current_alias()]
    opened = getattr(connection, _TRACKER, None) is None
    if opened:
        setattr(connection, _TRACKER, set())
    try:
        yield
    finally:
        if opened:
            setattr(connection, _TRACKER, None)


@contextmanager
def atomic() -> Iterator[None]:
    """`transaction.atomic()` whose row locks are checked against the lock order."""
    with tracked(), transaction.atomic(using=current_alias()):
        yield


def note(level: Level) -> None:
    """Record that the current transaction takes (or is about to wait for) locks of `level`.

    Raises LockOrderError when a later level is already held and `level` is not.
    """
    held = getattr(connections[current_alias()], _TRACKER, None)
    if held is None:
        return  # outside a tracked transaction (a migration, a shell)
    if held and level not in held and level < max(held):
        later = ", ".join(Level(h).name for h in sorted(held) if h > level)
        raise LockOrderError(f"{level.name} lock taken while holding {later}")
    held.add(level)


def lock(
    queryset: QuerySet,
    level: Level,
    *,
    skip_locked: bool = False,
    nowait: bool = False,
    of: tuple[str, ...] = (),
) -> QuerySet:
    """`queryset.select_for_update(no_key=True, ...)`, in lock order.

    Raises LockOrderError when a blocking lock of `level` would come too late.
    """
    if skip_locked or nowait:
        held = getattr(connections[current_alias()], _TRACKER, None)
        if held is not None:
            held.add(level)
    else:
        note(level)
    return queryset.select_for_update(no_key=True, skip_locked=skip_locked, nowait=nowait, of=of)
