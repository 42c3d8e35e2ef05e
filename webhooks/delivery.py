"""Handing a webhook over: the outbox's `webhook` channel (settings.DESK_OUTBOX_CHANNELS).

Each attempt POSTs the event's body, serialized once when it was queued, with the Standard
Webhooks headers: `webhook-id` (the event's id, the same on every attempt and for every
endpoint, so receivers dedupe on it), `webhook-timestamp` (this attempt's time, which
receivers check against replays) and `webhook-signature` (HMAC-SHA256 of id, timestamp and
body with the endpoint's current secret, by the `standardwebhooks` package). A 2xx answer is
a delivery; any other status, a timeout or a connection error is a failed attempt, retried by
the outbox with exponential backoff. Redirects are not followed (a 3xx is a failure).

Why this channel is at least once, unlike e-mail: the scheme makes receivers idempotent on
`webhook-id`, so when a worker dies mid-hand-over the outbox counts the claim as a failed
attempt and hands the message over again, instead of settling it `uncertain` for a person
to check. Nor does a message out of attempts open an escalation on its run: a receiver that
is down would open one per event (and an `escalation.opened` event would feed the loop); its
failures are on the endpoint's page and in the outbox, where "Send again" retries them.

The endpoint is read at each attempt: a rotated secret signs retries too, and a message to an
endpoint deactivated (or gone) meanwhile is not sent but settled as failed, saying why. The
secret is decrypted for the attempt only; without a key that opens it nothing is sent (the
attempt fails, saying so, and is retried).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone
from standardwebhooks import Webhook

from desk.models import OutboxMessage
from desk.services.outbox import (
    EXCERPT_CHARS,
    DeliveryFailed,
    HandedOver,
    Undeliverable,
    outbox_channel,
)
from tenants import encryption, rls
from tenants.scoping import scope_to_tenant
from webhooks.models import WebhookEndpoint
from webhooks.services import validate_url

USER_AGENT = "AgentDesk-Webhooks/1.0"


def timeout_seconds() -> float:
    return float(settings.DESK_WEBHOOK_TIMEOUT_SECONDS)


def hand_over_seconds() -> float:
    """How long an attempt can take: httpx's timeout bounds each phase (connect, write, read,
    a pooled connection), plus name resolution and some slack."""
    return 4 * timeout_seconds() + 20


def _endpoint(message: OutboxMessage) -> WebhookEndpoint:
    with rls.tenant_context(message.tenant_id):
        endpoint = (
            scope_to_tenant(WebhookEndpoint.objects.all(), message.tenant_id)
            .filter(pk=message.payload.get("endpoint_id"))
            .first()
        )
    if endpoint is None:
        raise Undeliverable("The webhook endpoint no longer exists; not sent.")
    if not endpoint.is_active:
        at = endpoint.deactivated_at
        when = f" on {at:%Y-%m-%d %H:%M} UTC" if at else ""
        raise Undeliverable(f"The webhook endpoint was deactivated{when}; not sent.")
    try:
        validate_url(endpoint.url)
    except ValidationError as exc:
        raise Undeliverable(
            f"The endpoint's URL may not receive deliveries: {exc.messages[0]}"
        ) from None
    return endpoint


def _check_addresses(url: str) -> None:
    """Refuse a host that resolves to a private, loopback or link-local address (unless
    settings allow them), so that an endpoint cannot reach into our own network."""
    if settings.DESK_WEBHOOK_ALLOW_PRIVATE_NETWORKS:
        return
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DeliveryFailed(f"Could not resolve {parts.hostname}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise DeliveryFailed(
                f"{parts.hostname} resolves to {address}, a private or local address; not sent."
            )


def _excerpt(response: httpx.Response) -> str:
    """The start of the answer, without reading more of it than that."""
    taken = b""
    try:
        for chunk in response.iter_bytes():
            taken += chunk
            if len(taken) >= EXCERPT_CHARS * 4:
                break
    except httpx.HTTPError:
        pass  # the status decides; an answer cut short is still an answer
    return taken.decode("utf-8", errors="replace")[:EXCERPT_CHARS]


def signed_headers(*, secret: str, event_id: str, body: str, now=None) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    now = now or timezone.now()
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, now, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


@outbox_channel(at_least_once=True, escalates=False, hand_over_seconds=hand_over_seconds)
def send(message: OutboxMessage) -> HandedOver:
    """POST one webhook message, signed; raise DeliveryFailed unless the receiver says 2xx
    (Undeliverable when its endpoint is deactivated or gone)."""
    endpoint = _endpoint(message)
    _check_addresses(endpoint.url)
    try:
        secret = endpoint.signing_secret()
    except encryption.SecretsError as exc:  # never sent unsigned
        raise DeliveryFailed(f"Not sent: {exc}") from None
    payload = message.payload
    body = payload["body"]
    headers = signed_headers(secret=secret, event_id=payload["event_id"], body=body)
    timeout = timeout_seconds()
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream("POST", endpoint.url, content=body.encode(), headers=headers) as answer,
        ):
            excerpt = _excerpt(answer)
    except httpx.TimeoutException:
        raise DeliveryFailed(f"The receiver did not answer within {timeout:g} s.") from None
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"Could not reach the receiver: {type(exc).__name__}: {exc}") from None
    if not answer.is_success:
        raise DeliveryFailed(
            f"The receiver answered HTTP {answer.status_code}.",
            status_code=answer.status_code,
            response_excerpt=excerpt,
        )
    return HandedOver(status_code=answer.status_code, response_excerpt=excerpt)
