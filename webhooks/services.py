"""Writes to webhook endpoints, and `emit`, which turns an event into one outbox message per
subscribed endpoint. Each service is one transaction with its audit event."""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import uuid
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import URLValidator
from django.utils import timezone

from audit.services import Actor, apply_changes, record
from desk import doorbell
from desk.models import OutboxMessage
from tenants import encryption, locking
from tenants.locking import Level, lock
from tenants.models import Tenant
from tenants.scoping import scope_to_tenant
from webhooks.models import EVENT_TYPES, SECRET_PREFIX, SECRET_PURPOSE, TEST_EVENT, WebhookEndpoint

CHANNEL = "webhook"
SECRET_BYTES = 32
MAX_URL_LENGTH = 2000


# --- validation ---------------------------------------------------------------------------


def _refused(message: str) -> ValidationError:
    return ValidationError({"url": message})


def validate_url(url: str) -> str:
    """The URL deliveries may be posted to, cleaned: https (http only where
    settings.DESK_WEBHOOK_ALLOW_HTTP), a host, no credentials, no fragment.

    Raises ValidationError (on the field `url`) saying what is wrong.
    """
    url = (url or "").strip()
    if not url:
        raise _refused("Enter the URL deliveries are posted to.")
    if len(url) > MAX_URL_LENGTH:
        raise _refused(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise _refused("The URL must not contain spaces or control characters.")
    parts = urlsplit(url)
    schemes = ["https", "http"] if settings.DESK_WEBHOOK_ALLOW_HTTP else ["https"]
    if parts.scheme.lower() not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise _refused(f"Use an {allowed} URL (not {parts.scheme or 'a relative'}:).")
    if "@" in parts.netloc:
        raise _refused(
            "The URL must not carry a user name or password: receivers check the signature "
            "of each delivery instead."
        )
    if not parts.hostname:
        raise _refused("The URL has no host name.")
    if parts.fragment or url.endswith("#"):
        raise _refused("The URL must not have a #fragment (it is never sent).")
    try:
        parts.port  # noqa: B018 - a port out of range raises here
    except ValueError:
        raise _refused("The URL's port is not a number from 1 to 65535.") from None
    try:
        URLValidator(schemes=schemes)(url)
    except ValidationError:
        raise _refused("Enter a valid URL, e.g. https://example.com/hooks/agentdesk.") from None
    if not settings.DESK_WEBHOOK_ALLOW_PRIVATE_NETWORKS and is_private_host(parts.hostname):
        raise _refused("Receivers on private, loopback or link-local addresses are not allowed.")
    return url


def is_private_host(host: str) -> bool:
    """Whether a host name is an address (or name) outside the public internet."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: its addresses are checked when a delivery connects
    return not address.is_global or address.is_multicast


def validate_event_types(event_types: Any) -> list[str]:
    """The event types, known, each once, in order. An empty list is allowed: the endpoint
    then hears of nothing (fail closed).

    Raises ValidationError (on the field `event_types`).
    """
    if not isinstance(event_types, (list, tuple)) or not all(
        isinstance(t, str) for t in event_types
    ):
        raise ValidationError({"event_types": "Give the event types as a list of names."})
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown:
        raise ValidationError(
            {
                "event_types": f"Unknown event types: {', '.join(unknown)}. "
                f"Known: {', '.join(EVENT_TYPES)}."
            }
        )
    return sorted(set(event_types))


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: whsec_ and base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def seal_secret(secret: str, *, tenant_id: int) -> str:
    """An endpoint's secret as it is stored: encrypted, bound to its tenant.

    Raises ValidationError (nothing is saved) when there is no key to encrypt it with.
    """
    try:
        return encryption.seal(secret, tenant_id=tenant_id, purpose=SECRET_PURPOSE)
    except encryption.SecretsError as exc:
        raise ValidationError(str(exc)) from None


def _description(description: str) -> str:
    description = (description or "").strip()
    if len(description) > 200:
        raise ValidationError({"description": "Keep the description to 200 characters."})
    if "\x00" in description:
        raise ValidationError({"description": "The description must not contain NUL bytes."})
    return description


# --- endpoints ----------------------------------------------------------------------------


def create_webhook_endpoint(
    *, tenant: Tenant, url: str, event_types: list[str], actor: Actor, description: str = ""
) -> tuple[WebhookEndpoint, str]:
    """Create an endpoint and return it with its signing secret (shown to people only now;
    stored encrypted).

    Raises ValidationError for a URL that may not receive deliveries, unknown event types,
    a suspended tenant, or without a key to encrypt the secret with.
    """
    url = validate_url(url)
    event_types = validate_event_types(event_types)
    description = _description(description)
    if not tenant.is_active:
        raise ValidationError(f"Tenant '{tenant.slug}' is suspended.")
    secret = new_secret()
    encrypted = seal_secret(secret, tenant_id=tenant.pk)
    with locking.atomic():
        endpoint = WebhookEndpoint(
            tenant=tenant,
            url=url,
            description=description,
            encrypted_secret=encrypted,
            event_types=event_types,
            created_by=actor.user,
        )
        endpoint._history_user = actor.user
        endpoint.save()
        record(
            tenant=tenant,
            actor=actor,
            action="webhook.created",
            obj=endpoint,
            data={"url": url, "event_types": event_types, "description": description},
        )
    return endpoint, secret


def _locked(endpoint: WebhookEndpoint) -> WebhookEndpoint:
    return lock(WebhookEndpoint.objects.all(), Level.ROW).get(pk=endpoint.pk)


def update_webhook_endpoint(
    *,
    endpoint: WebhookEndpoint,
    actor: Actor,
    url: str,
    event_types: list[str],
    description: str = "",
) -> WebhookEndpoint:
    """Change where an endpoint is, what it subscribes to, or its description.

    Raises ValidationError as create_webhook_endpoint does, and for an inactive endpoint.
    """
    changes = {
        "url": validate_url(url),
        "event_types": validate_event_types(event_types),
        "description": _description(description),
    }
    with locking.atomic():
        endpoint = _locked(endpoint)
        if not endpoint.is_active:
            raise ValidationError("The endpoint is deactivated; create a new one instead.")
        diff = apply_changes(endpoint, changes, allowed=set(changes))
        if diff:
            endpoint._history_user = actor.user
            endpoint.save(update_fields=list(diff))
            record(
                tenant=endpoint.tenant_id,
                actor=actor,
                action="webhook.changed",
                obj=endpoint,
                data={"changes": diff},
            )
    return endpoint


def rotate_webhook_secret(
    *, endpoint: WebhookEndpoint, actor: Actor
) -> tuple[WebhookEndpoint, str]:
    """Give an endpoint a new signing secret and return it (shown to people only now); every
    delivery from now on, retries included, is signed with it.

    Raises ValidationError for an inactive endpoint, or without a key to encrypt it with.
    """
    secret = new_secret()
    encrypted = seal_secret(secret, tenant_id=endpoint.tenant_id)
    with locking.atomic():
        endpoint = _locked(endpoint)
        if not endpoint.is_active:
            raise ValidationError("The endpoint is deactivated.")
        endpoint.encrypted_secret = encrypted
        endpoint.secret_rotated_at = timezone.now()
        endpoint._history_user = actor.user
        endpoint.save(update_fields=["encrypted_secret", "secret_rotated_at"])
        record(
            tenant=endpoint.tenant_id, actor=actor, action="webhook.secret_rotated", obj=endpoint
        )
    return endpoint, secret


def deactivate_webhook_endpoint(
    *, endpoint: WebhookEndpoint, actor: Actor, reason: str = ""
) -> WebhookEndpoint:
    """Stop deliveries to an endpoint, those already queued included (idempotent)."""
    with locking.atomic():
        endpoint = _locked(endpoint)
        if endpoint.is_active:
            endpoint.is_active = False
            endpoint.deactivated_at = timezone.now()
            endpoint._history_user = actor.user
            endpoint.save(update_fields=["is_active", "deactivated_at"])
            record(
                tenant=endpoint.tenant_id,
                actor=actor,
                action="webhook.deactivated",
                obj=endpoint,
                reason=reason,
            )
    return endpoint


# --- events -------------------------------------------------------------------------------


def _summary(run, step) -> dict[str, Any]:
    about: dict[str, Any] = {}
    if run is not None:
        about["run"] = {
            "id": run.pk,
            "role": run.role.slug,
            "status": run.status,
            "created_at": run.created_at,
            "finished_at": run.finished_at,
        }
    if step is not None:
        about["step"] = {"id": step.pk, "key": step.key, "status": step.status}
    return about


def _queue(
    *, endpoint: WebhookEndpoint, event_type: str, data: dict, run, step, event_id: str, now
) -> OutboxMessage:
    timestamp = now.isoformat().replace("+00:00", "Z")
    # Serialized once: every attempt posts (and signs) exactly these bytes.
    body = json.dumps(
        {"type": event_type, "timestamp": timestamp, "data": data},
        cls=DjangoJSONEncoder,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    message = OutboxMessage.objects.create(
        tenant_id=endpoint.tenant_id,
        run=run,
        step=step,
        channel=CHANNEL,
        idempotency_key=f"webhook:{endpoint.pk}:{event_id}",
        payload={
            "endpoint_id": endpoint.pk,
            "event_id": event_id,
            "type": event_type,
            "timestamp": timestamp,
            "body": body,
        },
    )
    record(
        tenant=endpoint.tenant_id,
        actor=Actor.system("webhooks"),
        action="outbox.queued",
        obj=message,
        run_id=run.pk if run is not None else None,
        step_id=step.pk if step is not None else None,
        data={"channel": CHANNEL, "type": event_type, "endpoint": endpoint.pk, "event": event_id},
    )
    doorbell.ring_outbox(message.pk)
    return message


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def emit(
    *, tenant_id: int, event_type: str, data: dict[str, Any], run=None, step=None
) -> list[OutboxMessage]:
    """Queue an event for every active endpoint of the tenant subscribed to its type, inside
    the caller's transaction (delivered once it commits); return the messages written."""
    endpoints = [
        endpoint
        for endpoint in scope_to_tenant(WebhookEndpoint.objects.filter(is_active=True), tenant_id)
        .order_by("created_at", "pk")
        .only("pk", "tenant_id", "event_types")
        if event_type in (endpoint.event_types or [])
    ]
    if not endpoints:
        return []
    data = {**_summary(run, step), **data}
    event_id, now = new_event_id(), timezone.now()
    return [
        _queue(
            endpoint=endpoint,
            event_type=event_type,
            data=data,
            run=run,
            step=step,
            event_id=event_id,
            now=now,
        )
        for endpoint in endpoints
    ]


def send_test_event(*, endpoint: WebhookEndpoint, actor: Actor) -> OutboxMessage:
    """Queue a `webhook.test` event to this endpoint only, whatever it subscribes to.

    Raises ValidationError for an inactive endpoint.
    """
    with locking.atomic():
        endpoint = WebhookEndpoint.objects.get(pk=endpoint.pk)
        if not endpoint.is_active:
            raise ValidationError("The endpoint is deactivated.")
        message = _queue(
            endpoint=endpoint,
            event_type=TEST_EVENT,
            data={"endpoint_id": endpoint.pk, "message": "A test event from AgentDesk."},
            run=None,
            step=None,
            event_id=new_event_id(),
            now=timezone.now(),
        )
        record(
            tenant=endpoint.tenant_id,
            actor=actor,
            action="webhook.test_sent",
            obj=endpoint,
            data={"event": message.payload["event_id"]},
        )
    return message
