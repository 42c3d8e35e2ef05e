"""The outbox sends each message at most once on its own: a worker that dies while handing a
message over leaves it uncertain for a person, never sent twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalRequest, Escalation
from approvals.services import decide
from audit.models import AuditEvent
from audit.services import Actor
from desk import services, worker
from desk.models import OutboxMessage
from desk.services import outbox
from tests.runtime import advance


class Killed(BaseException):
    """What a SIGKILL looks like from inside: nothing after it runs (not even except)."""


@pytest.fixture
def message(parked_intake, users, monkeypatch) -> OutboxMessage:
    """An approved reply written to the outbox by a worker that died before delivering it."""
    decide(
        request=ApprovalRequest.objects.get(run=parked_intake),
        reviewer=users["reviewer.harbor"],
        verdict="approve",
    )

    async def died_first(task, message_id):
        return None

    with monkeypatch.context() as patched:
        patched.setattr(worker.Task, "deliver", died_first)
        advance(parked_intake)
    message = OutboxMessage.objects.get(run=parked_intake)
    assert message.status == OutboxMessage.Status.PENDING
    return message


def test_the_worker_delivers_what_a_step_wrote_once_it_committed(parked_intake, users):
    decide(
        request=ApprovalRequest.objects.get(run=parked_intake),
        reviewer=users["reviewer.harbor"],
        verdict="approve",
    )

    advance(parked_intake)

    message = OutboxMessage.objects.get(run=parked_intake)
    assert message.status == OutboxMessage.Status.SENT
    assert message.attempts == 1
    assert mail.outbox[0].extra_headers["X-AgentDesk-Key"] == message.idempotency_key


def die_after_handing_over(monkeypatch):
    original = outbox._hand_over

    def hand_over_then_die(message):
        original(message)
        raise Killed

    monkeypatch.setattr(outbox, "_hand_over", hand_over_then_die)


def sweep_after_timeout(tenant_id: int) -> dict:
    later = timezone.now() + timedelta(seconds=outbox.send_timeout_seconds() + 1)
    return outbox.sweep_outbox(tenant_id=tenant_id, now=later, stall_seconds=0)


def test_a_worker_dying_mid_hand_over_never_sends_twice(message, monkeypatch):
    die_after_handing_over(monkeypatch)
    with pytest.raises(Killed):
        services.deliver_outbox_message(message_id=message.pk)
    monkeypatch.undo()

    services.deliver_outbox_message(message_id=message.pk)  # a retried doorbell
    swept = sweep_after_timeout(message.tenant_id)
    services.deliver_outbox_message(message_id=message.pk)  # and another

    message.refresh_from_db()
    assert len(mail.outbox) == 1
    assert message.status == OutboxMessage.Status.UNCERTAIN
    assert swept == {"outbox_due": 0, "outbox_uncertain": 1}
    escalation = Escalation.objects.get(run=message.run, kind=Escalation.Kind.DELIVERY)
    assert message.idempotency_key in escalation.reason
    assert AuditEvent.objects.filter(action="outbox.uncertain", run_id=message.run_id).count() == 1
    assert not AuditEvent.objects.filter(action="outbox.sent", run_id=message.run_id).exists()


def test_a_message_its_worker_never_delivered_is_delivered_by_the_reaper(message, monkeypatch):
    from desk.services import maintenance

    monkeypatch.setattr("desk.doorbell.any_waiting", lambda: True)  # a busy queue, even

    result = maintenance.reap(now=timezone.now() + timedelta(minutes=1))

    assert (result["outbox_due"], result["outbox_delivered"]) == (1, 1)
    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.SENT
    assert len(mail.outbox) == 1


def test_a_hand_over_still_in_time_is_not_called_uncertain(message, monkeypatch):
    die_after_handing_over(monkeypatch)
    with pytest.raises(Killed):
        services.deliver_outbox_message(message_id=message.pk)

    swept = outbox.sweep_outbox(tenant_id=message.tenant_id, now=timezone.now(), stall_seconds=0)

    message.refresh_from_db()
    assert swept["outbox_uncertain"] == 0
    assert message.status == OutboxMessage.Status.SENDING


@pytest.fixture
def uncertain(message, monkeypatch) -> OutboxMessage:
    die_after_handing_over(monkeypatch)
    with pytest.raises(Killed):
        services.deliver_outbox_message(message_id=message.pk)
    monkeypatch.undo()
    sweep_after_timeout(message.tenant_id)
    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.UNCERTAIN
    return message


def test_a_person_who_checked_records_it_delivered_without_sending(uncertain, users):
    services.settle_outbox_message(
        message=uncertain,
        actor=Actor.for_user(users["ops"]),
        verdict="delivered",
        reason="Client confirmed receipt",
    )

    uncertain.refresh_from_db()
    assert uncertain.status == OutboxMessage.Status.SENT
    assert len(mail.outbox) == 1
    [sent] = AuditEvent.objects.filter(action="outbox.sent", run_id=uncertain.run_id)
    assert sent.actor_label == "ops"
    assert sent.reason == "Client confirmed receipt"
    [escalation] = Escalation.objects.filter(run=uncertain.run, kind=Escalation.Kind.DELIVERY)
    assert escalation.status == Escalation.Status.RESOLVED
    assert escalation.resolved_by == users["ops"]


def test_a_person_who_checked_sends_it_again(uncertain, users):
    services.settle_outbox_message(
        message=uncertain,
        actor=Actor.for_user(users["ops"]),
        verdict="resend",
        reason="Not in the client's mailbox",
    )
    services.deliver_outbox_message(message_id=uncertain.pk)

    uncertain.refresh_from_db()
    assert uncertain.status == OutboxMessage.Status.SENT
    assert len(mail.outbox) == 2
    assert AuditEvent.objects.filter(action="outbox.resend", run_id=uncertain.run_id).count() == 1


@pytest.mark.parametrize(
    ("verdict", "reason", "code"),
    [
        ("delivered", "", "reason_required"),
        ("delivered", "   ", "reason_required"),
        ("shrug", "it is fine", "unknown_verdict"),
    ],
)
def test_settling_without_saying_why_changes_nothing(uncertain, users, verdict, reason, code):
    with pytest.raises(services.RunError) as caught:
        services.settle_outbox_message(
            message=uncertain, actor=Actor.for_user(users["ops"]), verdict=verdict, reason=reason
        )

    assert caught.value.code == code
    uncertain.refresh_from_db()
    assert uncertain.status == OutboxMessage.Status.UNCERTAIN


def test_a_sent_message_cannot_be_sent_again_by_hand(message, users):
    services.deliver_outbox_message(message_id=message.pk)

    with pytest.raises(services.RunError) as caught:
        services.settle_outbox_message(
            message=message, actor=Actor.for_user(users["ops"]), verdict="resend", reason="again"
        )

    assert caught.value.code == "not_settleable"
    assert len(mail.outbox) == 1


def test_a_failing_mail_server_is_retried_with_backoff_then_escalated(message, monkeypatch):
    def refuse(message):
        raise ConnectionRefusedError("mail server down")

    monkeypatch.setattr(outbox, "_hand_over", refuse)
    rung = []
    monkeypatch.setattr("desk.doorbell.async_task", lambda func, **kw: rung.append(kw))

    services.deliver_outbox_message(message_id=message.pk)
    message.refresh_from_db()
    assert (message.status, message.attempts) == (OutboxMessage.Status.PENDING, 1)
    soon = outbox.sweep_outbox(tenant_id=message.tenant_id, now=timezone.now(), stall_seconds=0)
    later = outbox.sweep_outbox(
        tenant_id=message.tenant_id,
        now=timezone.now() + timedelta(seconds=outbox.RETRY_BASE_SECONDS + 1),
        stall_seconds=0,
    )
    assert (soon["outbox_due"], later["outbox_due"]) == (0, 1)
    assert services.deliver_due_outbox() == 0  # not due yet: nothing handed over
    for _ in range(outbox.OUTBOX_MAX_ATTEMPTS - 1):
        services.deliver_outbox_message(message_id=message.pk)

    message.refresh_from_db()
    assert message.status == OutboxMessage.Status.FAILED
    assert "mail server down" in message.last_error
    assert Escalation.objects.filter(run=message.run, kind=Escalation.Kind.DELIVERY).count() == 1


class TestAdmin:
    def test_an_operator_marks_an_uncertain_message_delivered(self, client, users, uncertain):
        client.force_login(users["ops"])
        page = reverse("admin:desk_outboxmessage_changelist")
        base = {"action": "mark_delivered", "_selected_action": [uncertain.pk]}

        confirm = client.post(page, {**base, "index": "0"})
        done = client.post(page, {**base, "confirm": "yes", "reason": "Checked the mail log"})

        assert confirm.status_code == 200
        assert b"What did you check?" in confirm.content
        assert done.status_code == 302
        uncertain.refresh_from_db()
        assert uncertain.status == OutboxMessage.Status.SENT

    def test_an_auditor_may_look_but_not_settle(self, client, users, uncertain):
        client.force_login(users["auditor"])
        page = reverse("admin:desk_outboxmessage_changelist")

        client.post(
            page,
            {
                "action": "mark_delivered",
                "_selected_action": [uncertain.pk],
                "confirm": "yes",
                "reason": "I say so",
            },
        )

        assert client.get(page).status_code == 200
        uncertain.refresh_from_db()
        assert uncertain.status == OutboxMessage.Status.UNCERTAIN
