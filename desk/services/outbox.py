"""Delivering the outbox: each message at most once on its own, never twice.

A delivery first claims its message (`sending`, committed), then hands it to the mail
server with no transaction open, then records the outcome. A worker that dies in between
leaves the claim behind; once the hand-over could no longer be running, the sweep marks the
message `uncertain` and escalates: a person checks whether it arrived (the mail carries
`X-AgentDesk-Key`) and then marks it delivered or sends it again. Nothing is re-sent blindly.
"""

from __future__ import annotations

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
    with locking.atomic(), rls.tenant_context(tenant_id):
        message = _locked(message_id)
        if message is None or message.status != OutboxMessage.Status.PENDING:
            return message
        message.status = OutboxMessage.Status.SENDING
        message.attempts += 1
        message.sending_at = timezone.now()
        message.save(update_fields=["status", "attempts", "sending_at"])
    error = ""
    try:
        _hand_over(message)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    with locking.atomic(), rls.tenant_context(tenant_id):
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


def sweep_outbox(*, tenant_id: int, now, stall_seconds: int) -> dict[str, int]:
    """Re-ring pending messages whose doorbell was lost or whose retry is due, and mark
    claims that outlived any hand-over `uncertain` (with an escalation)."""
    rung = uncertain = 0
    abandoned_before = now - timedelta(seconds=send_timeout_seconds())
    with rls.tenant_context(tenant_id):
        undelivered = OutboxMessage.objects.filter(
            tenant_id=tenant_id,
            status__in=(OutboxMessage.Status.PENDING, OutboxMessage.Status.SENDING),
            created_at__lt=now - timedelta(seconds=stall_seconds),
        ).order_by("created_at")
        for message in undelivered[:500]:
            if message.status == OutboxMessage.Status.SENDING:
                if message.sending_at < abandoned_before and _mark_uncertain(message.pk):
                    uncertain += 1
                continue
            retry_at = message.sending_at and message.sending_at + timedelta(
                seconds=RETRY_BASE_SECONDS * 2 ** max(0, message.attempts - 1)
            )
            if retry_at is None or retry_at <= now:
                doorbell.ring_outbox(message.pk)
                rung += 1
    return {"outbox_rung": rung, "outbox_uncertain": uncertain}


def _mark_uncertain(message_id: int) -> bool:
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

    Raises RunError (codes: not_settleable, reason_required).
    """
    reason = (reason or "").strip()
    if not reason:
        raise RunError("reason_required", "Say what you checked.")
    with locking.atomic(), rls.tenant_context(message.tenant_id):
        message = _locked(message.pk)
        allowed = {
            "delivered": {OutboxMessage.Status.UNCERTAIN},
            "resend": {OutboxMessage.Status.UNCERTAIN, OutboxMessage.Status.FAILED},
        }[verdict]
        if message.status not in allowed:
            raise RunError(
                "not_settleable", f"The message is {message.get_status_display().lower()}."
            )
        if verdict == "delivered":
            _record_sent(message, actor=actor, reason=reason)
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
        doorbell.ring_outbox(message.pk)
    return message
