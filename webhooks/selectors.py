"""Reads of webhook endpoints and their deliveries, reused by the admin and tests."""

from __future__ import annotations

from django.db.models import QuerySet

from desk.models import OutboxMessage
from tenants.scoping import scope_to_tenant
from webhooks.models import WebhookEndpoint
from webhooks.services import CHANNEL


def endpoint_deliveries(endpoint: WebhookEndpoint) -> QuerySet[OutboxMessage]:
    """The outbox messages queued for an endpoint, newest first."""
    messages = OutboxMessage.objects.filter(
        channel=CHANNEL, payload__endpoint_id=endpoint.pk
    ).order_by("-created_at", "-pk")
    return scope_to_tenant(messages, endpoint.tenant)
