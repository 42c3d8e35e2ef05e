"""What an attacker with the database owner's access does: change rows beneath the triggers."""

from __future__ import annotations

from contextlib import contextmanager

from django.db import connection

from audit import proof
from audit.models import AuditChain, AuditEvent
from audit.services import seal


@contextmanager
def beneath_the_triggers():
    """Run as the database owner who switched triggers off for the transaction (on
    PostgreSQL `session_replication_role = replica`; SQLite has no such triggers)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
        else:
            cursor.execute("PRAGMA defer_foreign_keys = ON")
    try:
        yield
    finally:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL session_replication_role = origin")


def rehash_from(tenant_id, seq: int) -> None:
    """Re-seal every event from `seq` on and move the head: a chain consistent in itself."""
    events = list(AuditEvent.objects.filter(tenant_id=tenant_id, seq__gte=seq).order_by("seq"))
    prev = AuditEvent.objects.get(tenant_id=tenant_id, seq=seq - 1).hash if seq > 1 else ""
    for event in events:
        event.prev_hash = prev
        seal(event)
        AuditEvent.objects.filter(pk=event.pk).update(
            prev_hash=event.prev_hash, payload_digest=event.payload_digest, hash=event.hash
        )
        prev = event.hash
    AuditChain.objects.filter(tenant_id=tenant_id).update(
        last_seq=events[-1].seq if events else seq - 1, last_hash=prev
    )


def other_signer() -> proof.Signer:
    """A key of the attacker's, under the deployment's key name."""
    from django.conf import settings

    return proof.Signer.generate(settings.AUDIT_KEY_NAME)
