"""Writing and checking the audit trail. Services of every app call `record` inside their
own transaction, so an action and its audit event commit or roll back together."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from audit.models import AuditChain, AuditEvent
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


def _digest(event: AuditEvent) -> str:
    content = {
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
        "reason": event.reason,
        "data": event.data,
        "prev_hash": event.prev_hash,
    }
    payload = json.dumps(content, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)
    return hashlib.sha256(payload.encode()).hexdigest()


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
    with transaction.atomic(savepoint=False):
        chain = _locked_chain(tenant_id)
        # Round-trip through JSON so the stored value hashes exactly as it will be read back.
        clean_data = json.loads(json.dumps(data or {}, cls=DjangoJSONEncoder))
        event = AuditEvent(
            tenant_id=tenant_id,
            seq=chain.last_seq + 1,
            created_at=timezone.now(),
            actor_type=actor.type,
            actor_user=actor.user,
            actor_label=actor.label[:200],
            action=action,
            object_type=obj._meta.label if obj is not None else "",
            object_id=str(obj.pk) if obj is not None else "",
            run_id=run_id,
            step_id=step_id,
            role_version_id=actor.role_version_id,
            reason=reason,
            data=clean_data,
            prev_hash=chain.last_hash,
        )
        event.hash = _digest(event)
        event.save(force_insert=True)
        chain.last_seq = event.seq
        chain.last_hash = event.hash
        chain.save(update_fields=["last_seq", "last_hash"])
    return event


@dataclass(frozen=True)
class ChainProblem:
    tenant_id: int | None
    seq: int
    problem: str


def verify_chain(*, tenant_id: int | None) -> list[ChainProblem]:
    """Recompute one tenant's chain; return every break found (empty when intact)."""
    problems: list[ChainProblem] = []
    expected_seq = 1
    prev_hash = ""
    events = AuditEvent.objects.filter(tenant_id=tenant_id).order_by("seq")
    for event in events.iterator(chunk_size=2000):
        if event.seq != expected_seq:
            problems.append(
                ChainProblem(tenant_id, event.seq, f"sequence gap: expected {expected_seq}")
            )
        if event.prev_hash != prev_hash:
            problems.append(ChainProblem(tenant_id, event.seq, "previous hash does not match"))
        if _digest(event) != event.hash:
            problems.append(ChainProblem(tenant_id, event.seq, "content does not match its hash"))
        expected_seq = event.seq + 1
        prev_hash = event.hash
    chain = AuditChain.objects.filter(tenant_id=tenant_id).first()
    if chain is not None and chain.last_seq != expected_seq - 1:
        problems.append(
            ChainProblem(tenant_id, chain.last_seq, "events missing after the last one found")
        )
    return problems


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
