"""Retention removes old payloads and keeps the proof; a tenant cannot ask for less than the
minimum."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit import checkpoints
from audit.models import AuditEvent
from audit.services import Actor, apply_retention, record
from audit.verification import verify_chain
from tenants.models import MIN_RETENTION_DAYS, Tenant
from tests.audit.support import beneath_the_triggers, rehash_from


def test_old_payloads_go_and_the_chain_and_an_export_still_verify(harbor, tmp_path):
    kept = record(tenant=harbor, actor=Actor.system(), action="test.kept", reason="old")
    with beneath_the_triggers():  # as if written longer ago than the retention
        AuditEvent.objects.filter(pk=kept.pk).update(
            created_at=kept.created_at - timedelta(days=harbor.retention_days + 1)
        )
        rehash_from(harbor.pk, kept.seq)
    checkpoints.checkpoint(harbor.pk)
    now = timezone.now()

    result = apply_retention(now=now)

    kept.refresh_from_db()
    assert result["payloads_removed"] == 1
    assert (kept.data, kept.reason) == ({}, "")
    assert kept.payload_redacted_at == now
    assert AuditEvent.objects.filter(tenant=harbor, action="audit.payloads_removed").exists()
    assert [p for p in verify_chain(tenant_id=harbor.pk) if p.where.startswith("seq")] == []
    path = tmp_path / "export.jsonl"
    call_command(
        "audit_export", tenant="harbor-legal", format="jsonl", out=str(path), stdout=StringIO()
    )
    out = StringIO()
    call_command("audit_verify", export=str(path), stdout=out)
    assert "with their payload removed by retention" in out.getvalue()


def test_payloads_younger_than_the_retention_are_kept(harbor):
    event = record(tenant=harbor, actor=Actor.system(), action="test.young", reason="keep me")

    apply_retention(now=timezone.now())

    event.refresh_from_db()
    assert (event.reason, event.payload_redacted_at) == ("keep me", None)


def test_a_retention_below_the_minimum_is_refused_by_the_database(harbor):
    with pytest.raises(IntegrityError), transaction.atomic():
        Tenant.objects.filter(pk=harbor.pk).update(retention_days=MIN_RETENTION_DAYS - 1)

    harbor.refresh_from_db()
    assert harbor.retention_days >= MIN_RETENTION_DAYS
