"""Fixtures of the webhook tests: a verifying receiver on loopback, an endpoint of harbor-legal
pointing at it, and the outbox doorbells captured so a test runs what they would run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import TestCase

from audit.services import Actor
from desk import tasks
from tests.fakes.webhook_receiver import FakeWebhookReceiver
from webhooks.models import EVENT_TYPES, WebhookEndpoint
from webhooks.services import create_webhook_endpoint


@pytest.fixture(autouse=True)
def webhook_settings(settings):
    """A receiver on loopback over plain http, answering within a short timeout."""
    settings.DESK_WEBHOOK_ALLOW_HTTP = True
    settings.DESK_WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    settings.DESK_WEBHOOK_TIMEOUT_SECONDS = 2
    return settings


@pytest.fixture
def receiver() -> Iterator[FakeWebhookReceiver]:
    with FakeWebhookReceiver() as running:
        yield running


@pytest.fixture
def make_endpoint(users):
    def make(tenant, receiver: FakeWebhookReceiver, event_types=tuple(EVENT_TYPES), **extra):
        endpoint, secret = create_webhook_endpoint(
            tenant=tenant,
            url=receiver.url,
            event_types=list(event_types),
            actor=Actor.for_user(users["ops"]),
            **extra,
        )
        receiver.secret = secret
        return endpoint

    return make


@pytest.fixture
def endpoint(harbor, receiver, make_endpoint) -> WebhookEndpoint:
    """Harbor-legal's endpoint, subscribed to every event, at the receiver."""
    return make_endpoint(harbor, receiver, description="Harbor CRM")


class Doorbells:
    """The outbox doorbells rung after commit, and what their tasks do when run."""

    def __init__(self):
        self.outbox: list[int] = []

    def commit(self):
        """Around work that commits: the doorbells it rings after commit are rung at the end
        (inside the test's transaction nothing commits for real)."""
        return TestCase.captureOnCommitCallbacks(execute=True)

    def ring(self, func, **kwargs):
        if func == "desk.tasks.deliver_outbox":
            self.outbox.append(kwargs["message_id"])

    def deliver(self) -> int:
        """Run every rung delivery task (as a worker of the cluster would); return how many."""
        rung, self.outbox = self.outbox, []
        for message_id in rung:
            tasks.deliver_outbox(message_id=message_id)
        return len(rung)


@pytest.fixture
def doorbells(monkeypatch) -> Doorbells:
    bells = Doorbells()
    monkeypatch.setattr("desk.doorbell.async_task", bells.ring)
    return bells
