"""Delivering the outbox: each message handed over by its channel, every attempt recorded.

A delivery first claims its message (`sending`, committed, with an OutboxAttempt row), then
hands it to its channel with no transaction open, then records the outcome. The worker that
wrote a message delivers it once its step commits; one it could not deliver (it died first,
or the channel failed and the retry is due) is delivered by the reaper itself, so that
recovery does not wait in a queue behind other work. A failed hand-over is retried with
exponential backoff (RETRY_BASE_SECONDS, doubled per attempt) up to OUTBOX_MAX_ATTEMPTS.

Channels are named in settings.DESK_OUTBOX_CHANNELS ({"email": "desk.services.outbox.
send_email", ...}): each handler takes the OutboxMessage and raises on failure (a
`DeliveryFailed` carries the receiver's status and answer; an `Undeliverable` one is not
retried). desk never imports the apps that add channels. What a worker that dies mid-hand-
over leaves behind is decided per channel (`outbox_channel`):

- at most once (e-mail, the default): once the hand-over could no longer be running, the
  sweep marks the message `uncertain` and escalates: a person checks whether it arrived (the
  mail carries `X-AgentDesk-Key`) and then marks it delivered or sends it again. Nothing is
  re-sent blindly, because a mail server cannot tell a second copy from a new mail.
- at least once (webhooks): the receiver dedupes on the message's id (Standard Webhooks'
  `webhook-id`), so a second copy is harmless and the abandoned claim simply counts as a
  failed attempt and is retried with the same backoff.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMessage
from django.utils import timezone
from django.utils.module_loading import import_string

from audit.services import Actor, record
from desk import doorbell
from desk.gates import get_gate
from desk.models import OutboxAttempt, OutboxMessage, Run
from desk.services.runs import RunError
from tenants import locking, rls
from tenants.locking import Level, lock

OUTBOX_MAX_ATTEMPTS = 5
# Seconds before a failed delivery is tried again, doubled with each attempt.
RETRY_BASE_SECONDS = 30
# How much of an answer an attempt keeps.
EXCERPT_CHARS = 500


def send_timeout_seconds() -> int:
    """How long a hand-over to the mail server may take before it cannot still be running."""
    return int(settings.EMAIL_TIMEOUT or 30) + 20


# --- channels -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HandedOver:
    """What a channel's receiver answered to a hand-over that worked."""

    status_code: int | None = None
    response_excerpt: str = ""


class DeliveryFailed(Exception):
    """A hand-over that did not work; retried with backoff while attempts remain."""

    def __init__(self, message: str, *, status_code: int | None = None, response_excerpt=""):
        super().__init__(message)
        self.status_code = status_code
        self.response_excerpt = response_excerpt


class Undeliverable(DeliveryFailed):
    """A message that must not be handed over at all (its destination is gone): it fails
    at once, without retries."""


@dataclass(frozen=True)
class Channel:
    """How the outbox treats one channel's messages (see the module docstring)."""

    send: Callable[[OutboxMessage], HandedOver | None]
    at_least_once: bool = False
    # A message out of attempts opens a delivery escalation on its run.
    escalates: bool = True
    # How long one hand-over may take before a claim older than that is abandoned.
    hand_over_seconds: Callable[[], float] = send_timeout_seconds


def outbox_channel(
    *,
    at_least_once: bool = False,
    escalates: bool = True,
    hand_over_seconds: Callable[[], float] = send_timeout_seconds,
):
    """Declare how the outbox treats the messages of the channel this handler delivers."""

    def declare(handler):
        handler.outbox_channel = Channel(
            send=handler,
            at_least_once=at_least_once,
            escalates=escalates,
            hand_over_seconds=hand_over_seconds,
        )
        return handler

    return declare


def get_channel(name: str) -> Channel:
    """The channel named in settings.DESK_OUTBOX_CHANNELS.

    Raises Undeliverable for a channel nobody delivers.
    """
    path = settings.DESK_OUTBOX_CHANNELS.get(name)
    if not path:
        raise Undeliverable(f"no delivery for channel '{name}'")
    handler = import_string(path)
    return getattr(handler, "outbox_channel", None) or Channel(send=handler)


@outbox_channel()
def send_email(message: OutboxMessage) -> None:
    """Hand an e-mail to the mail server (settings.EMAIL_BACKEND)."""
    payload = message.payload
    EmailMessage(
        subject=payload["subject"],
        body=payload["body"],
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[payload["to"]],
        headers={"X-AgentDesk-Key": message.idempotency_key},
    ).send()


def _hand_over(message: OutboxMessage) -> HandedOver | None:
    return get_channel(message.channel).send(message)


def _text(value, limit: int | None = None) -> str:
    """Text a database column can hold (PostgreSQL refuses NUL), at most `limit` long."""
    text = str(value or "").replace("\x00", "\ufffd")
    return text[:limit] if limit else text


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
        attempt = OutboxAttempt.objects.create(
            tenant_id=tenant_id,
            message=message,
            number=message.attempts,
            worker=message.sending_by,
            started_at=message.sending_at,
        )
    error, permanent, answer = "", False, None
    try:
        answer = _hand_over(message)
    except DeliveryFailed as exc:
        error, permanent = str(exc), isinstance(exc, Undeliverable)
        answer = HandedOver(exc.status_code, exc.response_excerpt)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    with locking.tracked(), rls.tenant_context(tenant_id):
        message = _locked(message_id)  # the message before its attempt: the sweep's order
        _finish_attempt(attempt, error=error, answer=answer)
        if message.status not in (OutboxMessage.Status.SENDING, OutboxMessage.Status.UNCERTAIN):
            return message  # a person settled it meanwhile
        if error:
            _record_failure(message, error, permanent=permanent)
        else:
            _record_sent(message, actor=Actor.system("outbox"))
    return message


def _finish_attempt(attempt: OutboxAttempt, *, error: str, answer: HandedOver | None) -> None:
    attempt.finished_at = timezone.now()
    attempt.succeeded = not error
    attempt.error = _text(error)
    if answer is not None:
        attempt.status_code = answer.status_code
        attempt.response_excerpt = _text(answer.response_excerpt, EXCERPT_CHARS)
    attempt.save(
        update_fields=["finished_at", "succeeded", "error", "status_code", "response_excerpt"]
    )


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


def _record_failure(message: OutboxMessage, error: str, *, permanent: bool = False) -> None:
    error = _text(error)
    message.last_error = error
    gives_up = permanent or message.attempts >= OUTBOX_MAX_ATTEMPTS
    if gives_up:
        message.status = OutboxMessage.Status.FAILED
        if message.run_id is not None and _escalates(message.channel):
            get_gate().open_escalation(
                run=Run.objects.get(pk=message.run_id),
                step=message.step,
                reason=f"Delivery failed: {error}",
                kind="delivery",
            )
    else:
        message.status = OutboxMessage.Status.PENDING
    message.save(update_fields=["last_error", "status"])
    data = {"error": error, "attempts": message.attempts, "channel": message.channel}
    if not gives_up:
        data["retry_at"] = next_attempt_at(message)
    record(
        tenant=message.tenant_id,
        actor=Actor.system("outbox"),
        action="outbox.failed",
        obj=message,
        run_id=message.run_id,
        step_id=message.step_id,
        data=data,
    )


def _escalates(channel: str) -> bool:
    try:
        return get_channel(channel).escalates
    except Undeliverable:
        return True  # nobody delivers it: a person must hear of it


def next_attempt_at(message: OutboxMessage) -> datetime | None:
    """When a pending message is (or was) due: now for one never tried, else its last claim
    plus the backoff, doubled with each attempt; None for a message not pending."""
    if message.status != OutboxMessage.Status.PENDING:
        return None
    if message.sending_at is None:
        return message.created_at
    backoff = RETRY_BASE_SECONDS * 2 ** max(0, message.attempts - 1)
    return message.sending_at + timedelta(seconds=backoff)


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
    with rls.tenant_context(tenant_id):
        undelivered = OutboxMessage.objects.filter(
            tenant_id=tenant_id,
            status__in=(OutboxMessage.Status.PENDING, OutboxMessage.Status.SENDING),
            created_at__lt=now - timedelta(seconds=stall_seconds),
        ).order_by("created_at")
        for message in undelivered[:500]:
            if message.status == OutboxMessage.Status.PENDING:
                due += _due(message, now)
                continue
            channel = _channel_or_default(message.channel)
            if message.sending_at >= now - timedelta(seconds=channel.hand_over_seconds()):
                continue  # the hand-over may still be running
            if channel.at_least_once:
                due += release_abandoned(message.pk)
            elif mark_uncertain(message.pk):
                uncertain += 1
    return {"outbox_due": due, "outbox_uncertain": uncertain}


def _channel_or_default(name: str) -> Channel:
    try:
        return get_channel(name)
    except Undeliverable:
        return Channel(send=_hand_over)  # at most once: a person looks at it


def release_abandoned(message_id: int) -> bool:
    """Count an abandoned claim on an at-least-once channel as a failed attempt (retried
    with backoff, or failed when out of attempts); False when its delivery is settling it
    right now."""
    with locking.atomic():
        message = lock(OutboxMessage.objects.filter(pk=message_id), Level.ROW, skip_locked=True)
        message = message.filter(status=OutboxMessage.Status.SENDING).first()
        if message is None:
            return False
        error = (
            f"The worker {message.sending_by or ''} handing it over stopped before it could "
            "record the outcome; it is handed over again (receivers dedupe on its id)."
        )
        OutboxAttempt.objects.filter(
            message=message, number=message.attempts, finished_at__isnull=True
        ).update(error=error)
        _record_failure(message, error)
    return True


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
        OutboxAttempt.objects.filter(
            message=message, number=message.attempts, finished_at__isnull=True
        ).update(error="Its worker stopped before it could record the outcome.")
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
        if message.run_id is not None:
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
        settled = f"Outbox message {message.idempotency_key}: {verdict} ({reason})"
        if verdict == "delivered":
            _record_sent(message, actor=actor, reason=reason)
            _resolve_delivery_escalations(message, actor=actor, resolution=settled)
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
        _resolve_delivery_escalations(message, actor=actor, resolution=settled)
        doorbell.ring_outbox(message.pk)
    return message


def _resolve_delivery_escalations(message: OutboxMessage, *, actor: Actor, resolution: str):
    if message.run_id is None:
        return
    get_gate().resolve_escalations(
        run=Run.objects.get(pk=message.run_id),
        step=message.step,
        kind="delivery",
        user=actor.user,
        resolution=resolution,
    )
