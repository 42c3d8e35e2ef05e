"""Webhook endpoints in the admin: created by a tenant's operators with the secret shown once,
bad URLs refused on the form, test events, rotation and deactivation behind confirmation
pages; every delivery attempt on the outbox message's page."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.services import Actor
from desk.models import OutboxMessage
from tests.queries import page_statements
from webhooks.models import WebhookEndpoint
from webhooks.services import create_webhook_endpoint

ADD_URL = reverse("admin:webhooks_webhookendpoint_add")
CHANGELIST_URL = reverse("admin:webhooks_webhookendpoint_changelist")


def endpoint_form(tenant, **overrides) -> dict:
    return {
        "tenant": tenant.pk,
        "url": "https://crm.example.com/hooks/agentdesk",
        "description": "Harbor CRM",
        "event_types": ["run.completed", "approval.requested"],
        **overrides,
    }


def test_an_operator_creates_an_endpoint_and_sees_its_secret_only_once(client, users, harbor):
    client.force_login(users["ops"])

    created = client.post(ADD_URL, endpoint_form(harbor))

    endpoint = WebhookEndpoint.objects.get(tenant=harbor)
    secret = created.context["secret"]
    assert created.status_code == 200
    assert secret == endpoint.signing_secret() and secret.startswith("whsec_")
    assert secret in created.content.decode()
    assert "no-store" in created["Cache-Control"]
    assert endpoint.event_types == ["approval.requested", "run.completed"]
    assert endpoint.created_by == users["ops"]
    later_pages = [
        CHANGELIST_URL,
        reverse("admin:webhooks_webhookendpoint_change", args=[endpoint.pk]),
        reverse("admin:webhooks_webhookendpoint_history", args=[endpoint.pk]),
        reverse(
            "admin:webhooks_webhookendpoint_simple_history",
            args=[endpoint.pk, endpoint.history.get().history_id],
        ),
    ]
    for page in later_pages:
        response = client.get(page)
        assert response.status_code == 200, page
        assert secret not in response.content.decode(), page


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://crm.example.com/hooks", "Use an https:// URL"),
        ("ftp://crm.example.com/hooks", "Use an https:// URL (not ftp:)."),
        ("https://me:pw@crm.example.com/hooks", "must not carry a user name or password"),
        ("https://crm.example.com/\x00hooks", "Null characters are not allowed."),
    ],
)
def test_a_bad_url_is_a_form_error_and_writes_nothing(client, users, harbor, settings, url, error):
    settings.DESK_WEBHOOK_ALLOW_HTTP = False
    client.force_login(users["ops"])

    response = client.post(ADD_URL, endpoint_form(harbor, url=url))

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert any(error in message for message in form.errors["url"])
    assert not WebhookEndpoint.objects.exists()


def test_the_service_refusal_of_a_url_is_shown_on_the_change_form(client, users, harbor, settings):
    settings.DESK_WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    endpoint, _ = create_webhook_endpoint(
        tenant=harbor,
        url="https://crm.example.com/hooks",
        event_types=["run.completed"],
        actor=Actor.for_user(users["ops"]),
    )
    client.force_login(users["ops"])
    page = reverse("admin:webhooks_webhookendpoint_change", args=[endpoint.pk])

    refused = client.post(page, {"url": "https://10.1.2.3/x", "event_types": ["run.failed"]})
    changed = client.post(page, {"url": endpoint.url, "event_types": ["run.failed"]})

    assert refused.status_code == 200
    assert "private, loopback or link-local" in str(refused.context["adminform"].form.errors)
    assert changed.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.event_types == ["run.failed"]


@pytest.fixture
def harbor_endpoint(harbor, users) -> WebhookEndpoint:
    endpoint, _ = create_webhook_endpoint(
        tenant=harbor,
        url="https://crm.example.com/hooks",
        event_types=[],
        actor=Actor.for_user(users["ops"]),
    )
    return endpoint


def post_action(client, action, endpoint, **extra):
    base = {"action": action, "_selected_action": [endpoint.pk]}
    confirm = client.post(CHANGELIST_URL, {**base, "index": "0"})
    done = client.post(CHANGELIST_URL, {**base, "confirm": "yes", **extra})
    return confirm, done


def test_an_operator_sends_a_test_event_after_confirming(client, users, harbor_endpoint):
    client.force_login(users["ops"])
    base = {"action": "send_test_events", "_selected_action": [harbor_endpoint.pk]}

    confirm = client.post(CHANGELIST_URL, {**base, "index": "0"})
    queued_before = OutboxMessage.objects.filter(channel="webhook").count()
    done = client.post(CHANGELIST_URL, {**base, "confirm": "yes"})

    assert confirm.status_code == 200
    assert b"webhook.test" in confirm.content
    assert queued_before == 0
    assert done.status_code == 302
    [message] = OutboxMessage.objects.filter(channel="webhook")
    assert message.payload["type"] == "webhook.test"  # though it subscribes to nothing
    assert message.run_id is None
    assert message.payload["endpoint_id"] == harbor_endpoint.pk


def test_an_operator_rotates_the_secret_and_sees_the_new_one_once(client, users, harbor_endpoint):
    old = harbor_endpoint.signing_secret()
    client.force_login(users["ops"])

    confirm, shown = post_action(client, "rotate_secret", harbor_endpoint)

    harbor_endpoint.refresh_from_db()
    assert confirm.status_code == 200
    assert old not in confirm.content.decode()
    assert shown.status_code == 200
    assert shown.context["secret"] == harbor_endpoint.signing_secret() != old
    assert "no-store" in shown["Cache-Control"]


def test_an_operator_deactivates_an_endpoint_saying_why(client, users, harbor_endpoint):
    client.force_login(users["ops"])

    confirm, done = post_action(
        client, "deactivate_endpoints", harbor_endpoint, reason="CRM replaced"
    )

    harbor_endpoint.refresh_from_db()
    assert b"Why are they deactivated?" in confirm.content
    assert done.status_code == 302
    assert not harbor_endpoint.is_active
    page = client.get(reverse("admin:webhooks_webhookendpoint_change", args=[harbor_endpoint.pk]))
    assert page.status_code == 200
    assert "adminform" in page.context and not page.context["has_change_permission"]


def test_reviewers_and_auditors_cannot_reach_endpoints(client, users, harbor_endpoint):
    for username in ("reviewer.harbor", "auditor"):
        client.force_login(users[username])

        listed = client.get(CHANGELIST_URL)
        client.post(
            CHANGELIST_URL,
            {
                "action": "rotate_secret",
                "_selected_action": [harbor_endpoint.pk],
                "confirm": "yes",
            },
        )

        assert listed.status_code == 403
    old = harbor_endpoint.signing_secret()
    harbor_endpoint.refresh_from_db()
    assert harbor_endpoint.signing_secret() == old


def test_the_changelist_reads_a_fixed_number_of_queries(client, users, harbor, northwind):
    client.force_login(users["ops"])

    def queries_for_listing() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(CHANGELIST_URL).status_code == 200
        return len(page_statements(queries))

    def add(tenant, n):
        for i in range(n):
            create_webhook_endpoint(
                tenant=tenant,
                url=f"https://crm.example.com/hooks/{tenant.pk}/{i}",
                event_types=["run.completed"],
                actor=Actor.for_user(users["ops"]),
            )

    add(harbor, 1)
    one = queries_for_listing()
    add(harbor, 3)
    add(northwind, 3)
    seven = queries_for_listing()

    assert one == seven  # not one more per endpoint listed
    assert one <= 15


def test_the_outbox_message_page_shows_every_attempt(client, users, parked_intake):
    from approvals.models import ApprovalRequest
    from approvals.services import decide
    from tests.runtime import advance

    decide(
        request=ApprovalRequest.objects.get(run=parked_intake),
        reviewer=users["reviewer.harbor"],
        verdict="approve",
    )
    advance(parked_intake)
    message = OutboxMessage.objects.get(run=parked_intake)
    client.force_login(users["auditor"])

    page = client.get(reverse("admin:desk_outboxmessage_change", args=[message.pk]))

    assert page.status_code == 200
    [inline] = page.context["inline_admin_formsets"]
    assert [form.original.number for form in inline] == [1]
    assert "delivery attempt" in page.content.decode().lower()
