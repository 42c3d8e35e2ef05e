"""Webhooks arrive signed per Standard Webhooks, through the outbox, with every attempt
recorded: failures are retried with backoff, never sent to an endpoint that was switched off,
and a dead worker's hand-over is retried (receivers dedupe on webhook-id)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from approvals.models import ApprovalRequest, Escalation
from approvals.services import decide
from audit.models import AuditEvent
from audit.services import Actor
from desk import services
from desk.models import OutboxAttempt, OutboxMessage, Run
from desk.services import outbox
from tests.runtime import advance
from webhooks.services import (
    deactivate_webhook_endpoint,
    emit,
    rotate_webhook_secret,
    send_test_event,
)


def complete(run, users, doorbells) -> Run:
    """Approve the parked run's draft and let the worker finish it, doorbells rung."""
    with doorbells.commit():
        decide(
            request=ApprovalRequest.objects.get(run=run),
            reviewer=users["reviewer.harbor"],
            verdict="approve",
        )
    with doorbells.commit():
        advance(run)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    return run


def webhook_messages(**filters):
    return OutboxMessage.objects.filter(channel="webhook", **filters).order_by("created_at", "pk")


def test_a_completed_run_arrives_signed_through_the_outbox(
    endpoint, receiver, start_intake, users, doorbells
):
    with doorbells.commit():
        run = start_intake()
        advance(run)

    complete(run, users, doorbells)
    delivered = doorbells.deliver()

    types = [m.payload["type"] for m in webhook_messages(run=run)]
    assert types == ["approval.requested", "approval.decided", "run.completed"]
    assert delivered == 3
    assert [d.event["type"] for d in receiver.verified] == types
    completed = receiver.verified[-1]
    message = webhook_messages(run=run).get(payload__type="run.completed")
    assert completed.headers["webhook-id"] == message.payload["event_id"]
    assert completed.headers["content-type"] == "application/json"
    assert completed.event["data"]["run"] == {
        "id": run.pk,
        "role": "intake-coordinator",
        "status": "completed",
        "created_at": completed.event["data"]["run"]["created_at"],
        "finished_at": completed.event["data"]["run"]["finished_at"],
    }
    assert completed.event["timestamp"] == message.payload["timestamp"]
    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.SENT
    assert message.idempotency_key == f"webhook:{endpoint.pk}:{message.payload['event_id']}"
    [attempt] = message.delivery_attempts.all()
    assert (attempt.number, attempt.succeeded, attempt.status_code) == (1, True, 200)
    assert json.loads(attempt.response_excerpt) == {"received": True}


def test_a_failed_step_announces_the_failed_run_and_its_escalation(
    endpoint, receiver, start_intake, users, doorbells, monkeypatch
):
    from desk.tools.email import EmailSend

    def refuse(self, args, ctx):
        raise RuntimeError("tool exploded")

    monkeypatch.setattr(EmailSend, "run", refuse)
    with doorbells.commit():
        run = start_intake()
        advance(run)
    with doorbells.commit():
        decide(
            request=ApprovalRequest.objects.get(run=run),
            reviewer=users["reviewer.harbor"],
            verdict="approve",
        )
        advance(run)
    doorbells.deliver()

    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    types = [d.event["type"] for d in receiver.verified]
    assert types[-2:] == ["run.failed", "escalation.opened"]
    failed = receiver.verified[-2].event["data"]
    assert "tool exploded" in failed["error"]
    escalation = Escalation.objects.get(run=run)
    assert receiver.verified[-1].event["data"]["escalation_id"] == escalation.pk


def test_a_failing_receiver_is_retried_with_backoff_then_succeeds(
    endpoint, receiver, harbor, doorbells
):
    receiver.script(503)
    with doorbells.commit():
        send_test_event(endpoint=endpoint, actor=Actor.system("tests"))
    [message] = webhook_messages()

    doorbells.deliver()
    message.refresh_from_db()
    retry_at = outbox.next_attempt_at(message)
    not_yet = services.deliver_due_outbox(now=retry_at - timedelta(seconds=1))
    due = services.deliver_due_outbox(now=retry_at)

    message.refresh_from_db()
    assert (not_yet, due) == (0, 1)
    assert retry_at == message.delivery_attempts.get(number=1).started_at + timedelta(
        seconds=outbox.RETRY_BASE_SECONDS
    )
    assert message.status == OutboxMessage.Status.SENT
    attempts = list(message.delivery_attempts.order_by("number"))
    assert [(a.number, a.succeeded, a.status_code) for a in attempts] == [
        (1, False, 503),
        (2, True, 200),
    ]
    assert attempts[0].error == "The receiver answered HTTP 503."
    assert [d.headers["webhook-id"] for d in receiver.deliveries] == [
        message.payload["event_id"]
    ] * 2
    assert receiver.deliveries[0].body == receiver.deliveries[1].body  # the same bytes
    failed = AuditEvent.objects.get(action="outbox.failed", object_id=str(message.pk))
    assert failed.data["attempts"] == 1


def test_backoff_doubles_and_a_receiver_down_for_good_fails_without_escalating(
    endpoint, receiver, doorbells
):
    receiver.script(*[500] * outbox.OUTBOX_MAX_ATTEMPTS)
    with doorbells.commit():
        send_test_event(endpoint=endpoint, actor=Actor.system("tests"))
    [message] = webhook_messages()
    doorbells.deliver()

    waits = []
    for _ in range(outbox.OUTBOX_MAX_ATTEMPTS - 1):
        message.refresh_from_db()
        waits.append((outbox.next_attempt_at(message) - message.sending_at).total_seconds())
        services.deliver_due_outbox(now=outbox.next_attempt_at(message))

    message.refresh_from_db()
    base = outbox.RETRY_BASE_SECONDS
    assert waits == [base, base * 2, base * 4, base * 8]
    assert message.status == OutboxMessage.Status.FAILED
    assert message.delivery_attempts.filter(succeeded=False, status_code=500).count() == 5
    assert not Escalation.objects.filter(kind=Escalation.Kind.DELIVERY).exists()


def test_a_receiver_that_does_not_answer_in_time_is_a_failed_attempt(
    endpoint, receiver, doorbells, webhook_settings
):
    webhook_settings.DESK_WEBHOOK_TIMEOUT_SECONDS = 0.2
    receiver.hold()
    with doorbells.commit():
        send_test_event(endpoint=endpoint, actor=Actor.system("tests"))

    doorbells.deliver()
    receiver.release()

    [message] = webhook_messages()
    assert message.status == OutboxMessage.Status.PENDING
    [attempt] = message.delivery_attempts.all()
    assert (attempt.succeeded, attempt.status_code) == (False, None)
    assert attempt.error == "The receiver did not answer within 0.2 s."


def test_a_receiver_that_is_not_there_is_a_failed_attempt(endpoint, receiver, doorbells):
    receiver.__exit__(None, None, None)  # the receiver's server goes away
    with doorbells.commit():
        send_test_event(endpoint=endpoint, actor=Actor.system("tests"))

    doorbells.deliver()

    [attempt] = OutboxAttempt.objects.filter(message__channel="webhook")
    assert not attempt.succeeded
    assert attempt.error.startswith("Could not reach the receiver: ConnectError")


def test_a_tampered_body_fails_verification_at_the_receiver(endpoint, receiver, doorbells):
    receiver.tamper = True
    with doorbells.commit():
        send_test_event(endpoint=endpoint, actor=Actor.system("tests"))

    doorbells.deliver()

    [arrived] = receiver.deliveries
    assert not arrived.verified
    assert arrived.error == "No matching signature found"
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver.secret).verify(arrived.body.replace(b"test", b"tset"), arrived.headers)
    assert Webhook(receiver.secret).verify(arrived.body, arrived.headers)["type"] == "webhook.test"
    [message] = webhook_messages()
    assert message.status == OutboxMessage.Status.PENDING
    assert message.delivery_attempts.get().status_code == 400


def test_a_rotated_secret_signs_from_then_on_retries_included(endpoint, receiver, users, doorbells):
    old_secret = receiver.secret
    receiver.script(503)
    with doorbells.commit():
        send_test_event(endpoint=endpoint, actor=Actor.system("tests"))
    doorbells.deliver()

    _, new_secret = rotate_webhook_secret(endpoint=endpoint, actor=Actor.for_user(users["ops"]))
    receiver.secret = new_secret
    [message] = webhook_messages()
    message.refresh_from_db()
    services.deliver_due_outbox(now=outbox.next_attempt_at(message))

    first, retry = receiver.deliveries
    assert new_secret != old_secret
    assert new_secret.startswith("whsec_")
    assert Webhook(old_secret).verify(first.body, first.headers)
    assert retry.verified
    with pytest.raises(WebhookVerificationError):
        Webhook(old_secret).verify(retry.body, retry.headers)
    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.SENT


def test_a_message_to_an_endpoint_deactivated_meanwhile_is_not_sent(
    endpoint, receiver, users, doorbells
):
    with doorbells.commit():
        send_test_event(endpoint=endpoint, actor=Actor.system("tests"))
    deactivate_webhook_endpoint(
        endpoint=endpoint, actor=Actor.for_user(users["ops"]), reason="CRM retired"
    )

    doorbells.deliver()

    [message] = webhook_messages()
    assert receiver.deliveries == []
    assert message.status == OutboxMessage.Status.FAILED
    assert message.attempts == 1
    assert message.last_error.startswith("The webhook endpoint was deactivated on ")
    assert message.last_error.endswith("; not sent.")


def test_a_dead_workers_hand_over_is_retried_not_left_uncertain(
    endpoint, receiver, doorbells, monkeypatch
):
    class Killed(BaseException):
        pass

    original = outbox._hand_over

    def hand_over_then_die(message):
        original(message)
        raise Killed

    with doorbells.commit():
        send_test_event(endpoint=endpoint, actor=Actor.system("tests"))
    [message] = webhook_messages()
    monkeypatch.setattr(outbox, "_hand_over", hand_over_then_die)
    with pytest.raises(Killed):
        services.deliver_outbox_message(message_id=message.pk)
    monkeypatch.undo()

    from webhooks.delivery import hand_over_seconds

    later = timezone.now() + timedelta(seconds=hand_over_seconds() + 1)
    swept = outbox.sweep_outbox(tenant_id=message.tenant_id, now=later, stall_seconds=0)
    message.refresh_from_db()
    services.deliver_due_outbox(now=outbox.next_attempt_at(message))

    message.refresh_from_db()
    assert swept == {"outbox_due": 1, "outbox_uncertain": 0}
    assert message.status == OutboxMessage.Status.SENT
    assert len(receiver.verified) == 2
    assert len({d.headers["webhook-id"] for d in receiver.verified}) == 1  # the receiver dedupes
    first, second = message.delivery_attempts.order_by("number")
    assert first.finished_at is None
    assert "stopped before it could record the outcome" in first.error
    assert second.succeeded
    assert not Escalation.objects.filter(kind=Escalation.Kind.DELIVERY).exists()


def test_every_email_attempt_is_recorded_too(parked_intake, users):
    decide(
        request=ApprovalRequest.objects.get(run=parked_intake),
        reviewer=users["reviewer.harbor"],
        verdict="approve",
    )

    advance(parked_intake)

    message = OutboxMessage.objects.get(run=parked_intake, channel="email")
    [attempt] = message.delivery_attempts.all()
    assert (attempt.number, attempt.succeeded, attempt.status_code) == (1, True, None)
    assert attempt.tenant_id == message.tenant_id
    assert attempt.finished_at >= attempt.started_at


def test_emit_outside_a_subscription_writes_nothing(endpoint, harbor, start_intake):
    run = start_intake()

    written = emit(tenant_id=harbor.pk, event_type="no.such.event", data={}, run=run, step=None)

    assert written == []
    assert not webhook_messages().exists()
