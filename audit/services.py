"""Writing and checking the audit trail. Services of every app call `record` inside their
own transaction, so an action and its audit event commit or roll back together."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from audit import context, proof
from audit.models import AuditChain, AuditEvent
from tenants import rls
from tenants.locking import Level, lock


@dataclass(frozen=True)
class Actor:
    """Who acted: a person, an AI employee (a role version), an API key or the system."""

    type: str
    label: str
    user: Any = None
    role_version_id: int | None = None

    @classmethod
    def for_user(cls, user) -> Actor:
        return cls(type=AuditEvent.ActorType.USER, label=user.get_username(), user=user)

    @classmethod
    def for_ai(cls, *, role_version_id: int, label: str) -> Actor:
        return cls(type=AuditEvent.ActorType.AI, label=label, role_version_id=role_version_id)

    @classmethod
    def for_api_key(cls, label: str) -> Actor:
        return cls(type=AuditEvent.ActorType.API_KEY, label=label)

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(type=AuditEvent.ActorType.SYSTEM, label=label)


def hashed_fields(event: AuditEvent) -> dict[str, Any]:
    """The event's fields its hash covers, as JSON values (audit.proof.HASHED_FIELDS)."""
    return {
        "tenant": event.tenant_id,
        "seq": event.seq,
        "created_at": event.created_at.isoformat(),
        "actor_type": event.actor_type,
        "actor_user": event.actor_user_id,
        "actor_label": event.actor_label,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "run_id": event.run_id,
        "step_id": event.step_id,
        "role_version_id": event.role_version_id,
        "request_id": event.request_id,
        "client_ip": event.client_ip,
        "user_agent": event.user_agent,
        "payload_digest": event.payload_digest,
        "prev_hash": event.prev_hash,
    }


def export_row(event: AuditEvent) -> dict[str, Any]:
    """Everything an export carries of one event: enough to recompute its hashes offline."""
    redacted = event.payload_redacted_at
    return {
        **hashed_fields(event),
        "reason": event.reason,
        "data": event.data,
        "payload_redacted_at": redacted.isoformat() if redacted else None,
        "hash": event.hash,
    }


def seal(event: AuditEvent) -> None:
    """Set the event's payload digest and hash from its content and `prev_hash`."""
    event.payload_digest = proof.payload_digest(data=event.data, reason=event.reason)
    event.hash = proof.event_hash(hashed_fields(event))


def _without_nul(value: Any) -> Any:
    """The value with every NUL character replaced: PostgreSQL stores none in text or JSON."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def lock_chain(tenant_id: int | None) -> AuditChain:
    """Lock a tenant's chain head for the rest of the transaction.

    The chain comes after runs, steps and approvals and before the tenant row in the lock
    order (tenants.locking): a service that locks the tenant row and also writes audit
    events takes the chain first.
    """
    return _locked_chain(tenant_id)


def _locked_chain(tenant_id: int | None) -> AuditChain:
    chains = AuditChain.objects.filter(tenant_id=tenant_id)
    chain = lock(chains, Level.AUDIT_CHAIN).first()
    if chain is None:
        AuditChain.objects.get_or_create(tenant_id=tenant_id)
        chain = lock(chains, Level.AUDIT_CHAIN).first()
    return chain


def record(
    *,
    tenant,
    actor: Actor,
    action: str,
    obj=None,
    run_id: int | None = None,
    step_id: int | None = None,
    reason: str = "",
    data: dict | None = None,
) -> AuditEvent:
    """Append one event to the tenant's hash chain (inside the caller's transaction)."""
    tenant_id = getattr(tenant, "pk", tenant)
    # No savepoint of its own: the event stands or falls with the caller's work.
    with transaction.atomic(using=rls.current_alias(), savepoint=False):
        chain = _locked_chain(tenant_id)
        # Round-trip through JSON so the stored value hashes exactly as it will be read back.
        clean_data = _without_nul(json.loads(json.dumps(data or {}, cls=DjangoJSONEncoder)))
        request = context.current()
        event = AuditEvent(
            tenant_id=tenant_id,
            seq=chain.last_seq + 1,
            created_at=timezone.now(),
            actor_type=actor.type,
            actor_user=actor.user,
            actor_label=_without_nul(actor.label[:200]),
            action=action,
            object_type=obj._meta.label if obj is not None else "",
            object_id=str(obj.pk) if obj is not None else "",
            run_id=run_id,
            step_id=step_id,
            role_version_id=actor.role_version_id,
            request_id=request.request_id,
            client_ip=request.client_ip,
            user_agent=request.user_agent,
            reason=_without_nul(reason),
            data=clean_data,
            prev_hash=chain.last_hash,
        )
        seal(event)
        event.save(force_insert=True)
        chain.last_seq = event.seq
        chain.last_hash = event.hash
        chain.save(update_fields=["last_seq", "last_hash"])
    return event


def apply_changes(obj, changes: dict[str, Any], *, allowed: set[str]) -> dict[str, list]:
    """Set `changes` on `obj` and return {field: [old, new]} for the audit event.

    Raises ValueError for a field outside `allowed` (a programming error, not user input).
    """
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"cannot change {', '.join(sorted(unknown))} this way")
    diff = {}
    for name, value in changes.items():
        old = getattr(obj, name)
        if old != value:
            diff[name] = [old, value]
            setattr(obj, name, value)
    return diff


RETENTION_BATCH = 5000


def apply_retention(*, now=None) -> dict[str, int]:
    """The sweep: empty the payload (data and reason) of every event older than its
    tenant's retention. The events stay, with their payload digest, so the chain and its
    checkpoints still verify; the removal itself is an audit event."""
    from tenants.models import Tenant

    now = now or timezone.now()
    with rls.platform_context():  # each tenant's period is all this reads across tenants
        periods = list(Tenant.objects.values_list("pk", "retention_days"))
    removed = 0
    for tenant_id, days in periods:
        cutoff = now - timedelta(days=days)
        while True:
            with rls.tenant_context(tenant_id):
                due = AuditEvent.objects.filter(
                    tenant_id=tenant_id, created_at__lt=cutoff, payload_redacted_at__isnull=True
                )
                batch = list(
                    due.order_by("created_at").values_list("pk", flat=True)[:RETENTION_BATCH]
                )
                if not batch:
                    break
                count = AuditEvent.objects.filter(pk__in=batch).update(
                    data={}, reason="", payload_redacted_at=now
                )
                record(
                    tenant=tenant_id,
                    actor=Actor.system("retention"),
                    action="audit.payloads_removed",
                    reason=f"older than the tenant's retention of {days} days",
                    data={"events": count, "before": cutoff},
                )
                removed += count
    return {"payloads_removed": removed}
