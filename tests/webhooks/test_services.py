"""Endpoints: created with a server-made secret, only at URLs deliveries may go to; events
reach only the tenant's own subscribed, active endpoints."""

from __future__ import annotations

import base64

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from audit.services import Actor
from desk.models import OutboxMessage
from webhooks.models import WebhookEndpoint
from webhooks.services import (
    create_webhook_endpoint,
    deactivate_webhook_endpoint,
    emit,
    rotate_webhook_secret,
    update_webhook_endpoint,
)
from webhooks.services import validate_url as clean_url


def create(tenant, users, url="https://crm.example.com/hooks", event_types=("run.completed",)):
    return create_webhook_endpoint(
        tenant=tenant, url=url, event_types=list(event_types), actor=Actor.for_user(users["ops"])
    )


def test_the_secret_is_made_by_the_server_in_the_whsec_form(harbor, users):
    endpoint, secret = create(harbor, users)

    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert endpoint.signing_secret() == secret
    assert endpoint.created_by == users["ops"]
    event = AuditEvent.objects.get(action="webhook.created", object_id=str(endpoint.pk))
    assert secret not in str(event.data)
    assert "encrypted_secret" not in {f.name for f in WebhookEndpoint.history.model._meta.fields}


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://crm.example.com/hooks", "Use an https:// URL (not http:)."),
        ("ftp://crm.example.com/hooks", "Use an https:// URL (not ftp:)."),
        ("crm.example.com/hooks", "Use an https:// URL (not a relative:)."),
        ("https://user:secret@crm.example.com/hooks", "must not carry a user name or password"),
        ("https://token@crm.example.com/hooks", "must not carry a user name or password"),
        ("https://crm.example.com/ho\x00oks", "must not contain spaces or control characters"),
        ("https://crm.example.com/hooks\nHost: evil", "spaces or control characters"),
        ("https://crm.example.com/hooks#frag", "must not have a #fragment"),
        ("https:///hooks", "The URL has no host name."),
        ("https://crm.example.com:99999/hooks", "port is not a number from 1 to 65535"),
        ("https://127.0.0.1/hooks", "private, loopback or link-local"),
        ("https://169.254.169.254/latest/meta-data", "private, loopback or link-local"),
        ("https://[::1]/hooks", "private, loopback or link-local"),
        ("https://localhost/hooks", "private, loopback or link-local"),
        ("https://10.0.0.7/hooks", "private, loopback or link-local"),
        ("", "Enter the URL"),
    ],
)
def test_a_url_deliveries_may_not_go_to_is_refused_and_nothing_is_written(
    harbor, users, settings, url, error
):
    settings.DESK_WEBHOOK_ALLOW_HTTP = False
    settings.DESK_WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    events_before = AuditEvent.objects.count()

    with pytest.raises(ValidationError) as refused:
        create(harbor, users, url=url)

    assert error in refused.value.message_dict["url"][0]
    assert not WebhookEndpoint.objects.exists()
    assert AuditEvent.objects.count() == events_before


def test_http_is_accepted_only_where_settings_allow_it(settings):
    settings.DESK_WEBHOOK_ALLOW_HTTP = True

    assert clean_url("  http://crm.example.com/hooks ") == "http://crm.example.com/hooks"


def test_unknown_event_types_are_refused(harbor, users):
    with pytest.raises(ValidationError) as refused:
        create(harbor, users, event_types=["run.completed", "run.exploded"])

    assert "Unknown event types: run.exploded" in refused.value.message_dict["event_types"][0]
    assert not WebhookEndpoint.objects.exists()


def test_an_endpoint_with_no_event_types_hears_of_nothing(harbor, users, start_intake):
    create(harbor, users, event_types=())
    run = start_intake()

    written = [
        emit(tenant_id=harbor.pk, event_type=event_type, data={}, run=run, step=None)
        for event_type in ("run.completed", "run.failed", "approval.requested")
    ]

    assert written == [[], [], []]
    assert not OutboxMessage.objects.filter(channel="webhook").exists()


def test_an_event_reaches_only_its_own_tenants_subscribed_active_endpoints(
    harbor, northwind, users, start_intake
):
    mine, _ = create(harbor, users, event_types=["run.completed", "run.failed"])
    create(harbor, users, event_types=["run.failed"])  # not subscribed
    switched_off, _ = create(harbor, users)
    deactivate_webhook_endpoint(endpoint=switched_off, actor=Actor.for_user(users["ops"]))
    create(northwind, users)  # another tenant's, subscribed
    run = start_intake()

    [message] = emit(
        tenant_id=harbor.pk, event_type="run.completed", data={"x": 1}, run=run, step=None
    )

    assert OutboxMessage.objects.filter(channel="webhook").count() == 1
    assert message.payload["endpoint_id"] == mine.pk
    assert message.tenant_id == harbor.pk
    assert message.payload["event_id"].startswith("evt_")
    assert message.idempotency_key == f"webhook:{mine.pk}:{message.payload['event_id']}"


def test_one_event_to_two_endpoints_shares_its_id_and_body(harbor, users, start_intake):
    create(harbor, users)
    create(harbor, users)
    run = start_intake()

    first, second = emit(
        tenant_id=harbor.pk, event_type="run.completed", data={}, run=run, step=None
    )

    assert first.payload["event_id"] == second.payload["event_id"]
    assert first.payload["body"] == second.payload["body"]
    assert first.idempotency_key != second.idempotency_key


def test_a_changed_endpoint_is_validated_and_audited(harbor, users):
    endpoint, _ = create(harbor, users)

    with pytest.raises(ValidationError):
        update_webhook_endpoint(
            endpoint=endpoint,
            actor=Actor.for_user(users["ops"]),
            url="ftp://crm.example.com/",
            event_types=[],
        )
    update_webhook_endpoint(
        endpoint=endpoint,
        actor=Actor.for_user(users["ops"]),
        url="https://crm2.example.com/hooks",
        event_types=["run.failed"],
        description="New CRM",
    )

    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.event_types) == (
        "https://crm2.example.com/hooks",
        ["run.failed"],
    )
    [changed] = AuditEvent.objects.filter(action="webhook.changed")
    assert changed.data["changes"]["url"] == [
        "https://crm.example.com/hooks",
        "https://crm2.example.com/hooks",
    ]


def test_rotating_and_deactivating_are_audited_and_a_deactivated_one_stays_so(harbor, users):
    endpoint, old = create(harbor, users)
    actor = Actor.for_user(users["ops"])

    _, new = rotate_webhook_secret(endpoint=endpoint, actor=actor)
    deactivate_webhook_endpoint(endpoint=endpoint, actor=actor, reason="Moved CRM")
    with pytest.raises(ValidationError):
        rotate_webhook_secret(endpoint=endpoint, actor=actor)

    endpoint.refresh_from_db()
    assert new != old and endpoint.signing_secret() == new
    assert not endpoint.is_active
    actions = list(
        AuditEvent.objects.filter(object_id=str(endpoint.pk), action__startswith="webhook.")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == ["webhook.created", "webhook.secret_rotated", "webhook.deactivated"]
