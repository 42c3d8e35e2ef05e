"""The audit trail is append-only in PostgreSQL: the application and platform roles may
read and append, and nothing else; the triggers refuse even the tables' owner."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.models import AuditChain, AuditEvent
from audit.services import Actor, apply_retention, record
from audit.verification import verify_chain
from tenants import rls
from tests.audit.support import beneath_the_triggers, rehash_from

pytestmark = pytest.mark.postgres


def refused(sql: str, params=()) -> str:
    """Run `sql` in a savepoint; return the database's refusal (fail if it was allowed)."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
    except DatabaseError as exc:
        return str(exc)
    pytest.fail(f"allowed: {sql}")


def snapshot(tenant):
    events = AuditEvent.objects.filter(tenant=tenant).order_by("seq")
    chain = AuditChain.objects.get(tenant=tenant)
    return list(events.values_list("seq", "reason", "data", "hash")), (
        chain.last_seq,
        chain.last_hash,
    )


@pytest.fixture
def trail(harbor):
    record(tenant=harbor, actor=Actor.system(), action="test.one", reason="kept")
    record(tenant=harbor, actor=Actor.system(), action="test.two", data={"n": 2})
    return snapshot(harbor)


@pytest.mark.parametrize(
    ("context", "role"),
    [("app", rls.APP_ROLE), ("worker", rls.WORKER_ROLE), ("platform", rls.PLATFORM_ROLE)],
)
def test_no_role_can_update_delete_or_truncate_events(harbor, users, trail, context, role):
    scope = {
        "app": lambda: rls.tenant_context(harbor.pk, user_id=users["ops"].pk),
        "worker": lambda: rls.tenant_context(harbor.pk),
        "platform": rls.platform_context,
    }[context]()
    with scope:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone()[0] == role
        errors = [
            refused("UPDATE audit_auditevent SET reason = 'x' WHERE tenant_id = %s", [harbor.pk]),
            refused("UPDATE audit_auditevent SET action = 'x' WHERE tenant_id = %s", [harbor.pk]),
            refused("DELETE FROM audit_auditevent WHERE tenant_id = %s", [harbor.pk]),
            refused("TRUNCATE audit_auditevent"),
        ]
    assert "append-only" in errors[0]
    assert "permission denied" in errors[1]  # not a payload column: no grant at all
    assert "permission denied" in errors[2] and "permission denied" in errors[3]
    assert snapshot(harbor) == trail


@pytest.mark.parametrize("context", ["tenant", "platform"])
def test_the_roles_cannot_rewind_or_delete_the_chain_head(harbor, trail, context):
    scope = rls.tenant_context(harbor.pk) if context == "tenant" else rls.platform_context()
    first = AuditEvent.objects.filter(tenant=harbor).order_by("seq").first()
    with scope:
        errors = [
            refused(
                "UPDATE audit_auditchain SET last_seq = %s, last_hash = %s WHERE tenant_id = %s",
                [first.seq, first.hash, harbor.pk],
            ),
            refused(
                "UPDATE audit_auditchain SET last_seq = last_seq + 1 WHERE tenant_id = %s",
                [harbor.pk],
            ),
            refused("DELETE FROM audit_auditchain WHERE tenant_id = %s", [harbor.pk]),
            refused("TRUNCATE audit_auditchain"),
        ]
    assert "only moves forward" in errors[0] and "only moves forward" in errors[1]
    assert "permission denied" in errors[2] and "permission denied" in errors[3]
    assert snapshot(harbor) == trail


def test_appending_still_works_as_the_app_role(harbor, trail):
    with rls.tenant_context(harbor.pk):
        event = record(tenant=harbor.pk, actor=Actor.system(), action="test.three")

    assert event.seq == trail[1][0] + 1
    assert verify_chain(tenant_id=harbor.pk) == []


def test_the_triggers_refuse_the_tables_owner_too(harbor, trail):
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone()[0]  # the test database's owner, a superuser
    errors = [
        refused("UPDATE audit_auditevent SET reason = 'x' WHERE tenant_id = %s", [harbor.pk]),
        refused("DELETE FROM audit_auditevent WHERE tenant_id = %s", [harbor.pk]),
        refused("DELETE FROM audit_auditchain WHERE tenant_id = %s", [harbor.pk]),
    ]

    assert all("append-only" in e or "only moves forward" in e for e in errors)
    assert snapshot(harbor) == trail


def test_a_young_payload_cannot_be_removed_as_if_retention_were_due(harbor, trail):
    with rls.tenant_context(harbor.pk):
        error = refused(
            "UPDATE audit_auditevent SET data = '{}', reason = '', payload_redacted_at = now() "
            "WHERE tenant_id = %s",
            [harbor.pk],
        )

    assert "append-only" in error
    assert snapshot(harbor) == trail


def test_retention_removes_old_payloads_only_and_nothing_else(harbor, trail):
    old = AuditEvent.objects.filter(tenant=harbor).order_by("seq").first()
    with beneath_the_triggers():  # the chain as if its first event were two years old
        AuditEvent.objects.filter(pk=old.pk).update(created_at=old.created_at - timedelta(days=730))
        rehash_from(harbor.pk, old.seq)
    old.refresh_from_db()
    with rls.tenant_context(harbor.pk):
        smuggled = refused(
            "UPDATE audit_auditevent SET data = '{}', reason = '', payload_redacted_at = now(), "
            "hash = 'x' WHERE id = %s",
            [old.pk],
        )

    removed = apply_retention(now=timezone.now() + timedelta(seconds=1))

    assert "permission denied" in smuggled or "append-only" in smuggled
    assert removed["payloads_removed"] >= 1
    old_after = AuditEvent.objects.get(pk=old.pk)
    assert (old_after.data, old_after.reason, old_after.hash) == ({}, "", old.hash)
    assert old_after.payload_redacted_at is not None
    assert AuditEvent.objects.filter(tenant=harbor, payload_redacted_at__isnull=True).exists()
    # The chain still verifies: the payload digest stays in the hash.
    problems = verify_chain(tenant_id=harbor.pk)
    assert [p for p in problems if "seq" in p.where] == []
