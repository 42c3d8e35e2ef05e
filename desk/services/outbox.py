"""Delivering the outbox: each message at most once on its own, never twice.

A delivery first claims its message (`sending`, committed), then hands it to the mail
server with no transaction open, then records the outcome. The worker that wrote a message
delivers it once its step commits; one it could not deliver (it died first, or the mail
server failed and the retry is due) is delivered by the reaper itself, so that recovery
does not wait in a queue behind other work. A worker that dies in between
leaves the claim behind; once the hand-over could no longer be running, the sweep marks the
message `uncertain` and escalates: a person checks whether it arrived (the mail carries
`X-AgentDesk-Key`) and then marks it delivered or sends it again. Nothing is re-sent blindly.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.utils import timezone

from audit.services import Actor, record
from desk import doorbell
from desk.gates import get_gate
from desk.models import OutboxMessage, Run
from desk.services.runs import RunError
from tenants import locking, rls
from tenants.locking import Level, lock

OUTBOX_MAX_ATTEMPTS = 5
# Seconds before a failed delivery is tried again, doubled with each attempt.
RETRY_BASE_SECONDS = 30


def send_timeout_seconds() -> int:
    """How long a hand-over to the mail server may take before it cannot still be running."""
    return int(settings.EMAIL_TIMEOUT or 30) + 20


def _hand_over(message: OutboxMessage) -> None:
    if message.channel != "email":
        raise ValueError(f"no delivery for channel '{message.channel}'")
    payload = message.payload
    EmailMessage(
        subject=payload["subject"],
        body=payload["body"],
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[payload["to"]],
        headers={"X-AgentDesk-Key": message.idempotency_key},
    ).send()


def _locked(message_id: int) -> OutboxMessage | None:
    return lock(OutboxMessage.objects.filter(pk=message_id), Level.ROW).first()


def deliver_outbox_message(*, message_id: int) -> OutboxMessage | None:
    """Deliver one pending outbox message; do nothing for one claimed, sent or settled."""
    tenant_id = rls.tenant_of("desk_outboxmessage", message_id)
    if tenant_id is None:
        return None
    with locking.tracked(), rls.tenant_context(tenant_id):
        message = _locked(message_id)
        if message is None or message.status != OutboxMessage.Status.PENDING:
            return message
        message.status = OutboxMessage.Status.SENDING
        message.attempts += 1
        message.sending_at = timezone.now()
        message.sending_by = f"{socket.gethostname()}:{os.getpid()}"
        message.save(update_fields=["status", "attempts", "sending_at", "sending_by"])
    error = ""
    try:
        _hand_over(message)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    with locking.tracked(), rls.tenant_context(tenant_id):
        message = _locked(message_id)
        if message.status not in (OutboxMessage.Status.SENDING, OutboxMessage.Status.UNCERTAIN):
            return message  # a person settled it meanwhile
        if error:
            _record_failure(message, error)
        else:
            _record_sent(message, actor=Actor.system("outbox"))
    return message


def _record_sent(message: OutboxMessage, *, actor: Actor, reason: str = "") -> None:
    message.status = OutboxMessage.Status.SENT
    message.sent_at = timezone.now()
    message.save(update_fields=["status", "sent_at"])
    record(
        tenant=message.tenant_id,
        actor=actor,
        action="outbox.sent",
        obj=message,
        run_id=message.run_id,
        step_id=message.step_id,
        reason=reason,
        data={"channel": message.channel, "to": message.payload.get("to", "")},
    )


def _record_failure(message: OutboxMessage, error: str) -> None:
    message.last_error = error
    if message.attempts >= OUTBOX_MAX_ATTEMPTS:
        message.status = OutboxMessage.Status.FAILED
        get_gate().open_escalation(
            run=Run.objects.get(pk=message.run_id),
            step=message.step,
            reason=f"Delivery failed: {error}",
            kind="delivery",
        )
    else:
        message.status = OutboxMessage.Status.PENDING
    message.save(update_fields=["last_error", "status"])
    record(
        tenant=message.tenant_id,
        actor=Actor.system("outbox"),
        action="outbox.failed",
        obj=message,
        run_id=message.run_id,
        step_id=message.step_id,
        data={"error": error, "attempts": message.attempts},
    )


def _due(message: OutboxMessage, now) -> bool:
    """A pending message never tried, or whose retry after a failure is due."""
    if message.sending_at is None:
        return True
    backoff = RETRY_BASE_SECONDS * 2 ** max(0, message.attempts - 1)
    return message.sending_at + timedelta(seconds=backoff) <= now


def sweep_outbox(*, tenant_id: int, now, stall_seconds: int) -> dict[str, int]:
    """Count the tenant's pending messages that are due (their doorbell lost, or their retry
    due) and mark claims that outlived any hand-over `uncertain` (with an escalation)."""
    due = uncertain = 0
    abandoned_before = now - timedelta(seconds=send_timeout_seconds())
    with rls.tenant_context(tenant_id):
        undelivered = OutboxMessage.objects.filter(
            tenant_id=tenant_id,
            status__in=(OutboxMessage.Status.PENDING, OutboxMessage.Status.SENDING),
            created_at__lt=now - timedelta(seconds=stall_seconds),
        ).order_by("created_at")
        for message in undelivered[:500]:
            if message.status == OutboxMessage.Status.PENDING:
                due += _due(message, now)
            elif message.sending_at < abandoned_before and mark_uncertain(message.pk):
                uncertain += 1
    return {"outbox_due": due, "outbox_uncertain": uncertain}


def deliver_due_outbox(*, now=None, seconds: float = 10) -> int:
    """Deliver pending messages that are due, oldest first, for at most `seconds` (the rest
    in a later round); return how many were handed over."""
    deadline = time.monotonic() + seconds
    now = now or timezone.now()
    with rls.platform_context():
        # Which messages wait is all this reads across tenants; each delivery is per tenant.
        pending = list(
            OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING)
            .order_by("created_at")
            .only("pk", "sending_at", "attempts")[:500]
        )
    delivered = 0
    for message in pending:
        if time.monotonic() > deadline:
            break
        if _due(message, now):
            deliver_outbox_message(message_id=message.pk)
            delivered += 1
    return delivered


def mark_uncertain(message_id: int) -> bool:
    """Settle an abandoned claim as uncertain, with an escalation; False when its delivery
    is settling it right now."""
    with locking.atomic():
        message = lock(OutboxMessage.objects.filter(pk=message_id), Level.ROW, skip_locked=True)
        message = message.filter(status=OutboxMessage.Status.SENDING).first()
        if message is None:
            return False  # its delivery is settling it right now
        message.status = OutboxMessage.Status.UNCERTAIN
        message.save(update_fields=["status"])
        reason = (
            f"The worker handing message {message.idempotency_key} to the mail server stopped "
            "before it could record the outcome: it may or may not have been sent. Check the "
            "recipient's mail server for X-AgentDesk-Key, then mark it delivered or send it again "
            "from the outbox."
        )
        record(
            tenant=message.tenant_id,
            actor=Actor.system("outbox"),
            action="outbox.uncertain",
            obj=message,
            run_id=message.run_id,
            step_id=message.step_id,
            reason=reason,
            data={"attempts": message.attempts, "claimed_at": message.sending_at},
        )
        get_gate().open_escalation(
            run=Run.objects.get(pk=message.run_id),
            step=message.step,
            reason=reason,
            kind="delivery",
        )
    return True


def settle_outbox_message(*, message: OutboxMessage, actor: Actor, verdict: str, reason: str):
    """A person's verdict on a message whose delivery is uncertain or failed: `delivered`
    (it arrived: record it sent) or `resend` (hand it over again).

    Raises RunError (codes: unknown_verdict, reason_required, not_settleable).
    """
    reason = (reason or "").strip()
    settleable = {
        "delivered": {OutboxMessage.Status.UNCERTAIN},
        "resend": {OutboxMessage.Status.UNCERTAIN, OutboxMessage.Status.FAILED},
    }
    if verdict not in settleable:
        raise RunError("unknown_verdict", f"Unknown verdict '{verdict}'.")
    if not reason:
        raise RunError("reason_required", "Say what you checked.")
    with locking.tracked(), rls.tenant_context(message.tenant_id):
        message = _locked(message.pk)
        allowed = settleable[verdict]
        if message.status not in allowed:
            raise RunError(
                "not_settleable", f"The message is {message.get_status_display().lower()}."
            )
        gate = get_gate()
        run = Run.objects.get(pk=message.run_id)
        settled = f"Outbox message {message.idempotency_key}: {verdict} ({reason})"
        if verdict == "delivered":
            _record_sent(message, actor=actor, reason=reason)
            gate.resolve_escalations(
                run=run, step=message.step, kind="delivery", user=actor.user, resolution=settled
            )
            return message
        message.status = OutboxMessage.Status.PENDING
        message.sending_at = None
        message.save(update_fields=["status", "sending_at"])
        record(
            tenant=message.tenant_id,
            actor=actor,
            action="outbox.resend",
            obj=message,
            run_id=message.run_id,
            step_id=message.step_id,
            reason=reason,
        )
        gate.resolve_escalations(
            run=run, step=message.step, kind="delivery", user=actor.user, resolution=settled
        )
        doorbell.ring_outbox(message.pk)
    return message
