from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords

from tenants import encryption
from tenants.encryption import PREFIX as SEALED_PREFIX
from tenants.ids import RandomIdField

# What an endpoint may subscribe to, and what each means.
EVENT_TYPES = {
    "run.completed": "A run finished all its steps.",
    "run.failed": "A run stopped on a failed step (an escalation is opened too).",
    "approval.requested": "A step waits for a reviewer's decision.",
    "approval.decided": "A reviewer decided on a request.",
    "escalation.opened": "Something needs a person (a failed step, a missed due time, …).",
}
# Sent to one endpoint on an operator's request; never subscribed to.
TEST_EVENT = "webhook.test"
SECRET_PREFIX = "whsec_"
# What an endpoint's secret is sealed for (tenants.encryption binds it to the tenant).
SECRET_PURPOSE = "webhook_secret"


class WebhookEndpoint(models.Model):
    """Where a tenant wants to hear of events: a URL, the events it subscribes to (none: it
    hears of nothing) and the secret its deliveries are signed with (Standard Webhooks).

    The secret is shown once, when it is made (on creation and on rotation), and stored
    encrypted (tenants.encryption); history keeps every other field.
    """

    id = RandomIdField(primary_key=True)

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.PROTECT, related_name="webhook_endpoints"
    )
    url = models.CharField("URL", max_length=2000)
    description = models.CharField(max_length=200, blank=True)
    encrypted_secret = models.TextField()
    event_types = models.JSONField(
        default=list, blank=True, help_text="Events delivered here; none: nothing is delivered."
    )
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    secret_rotated_at = models.DateTimeField(null=True, blank=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords(
        history_id_field=RandomIdField(), excluded_fields=["encrypted_secret"]
    )

    class Meta:
        verbose_name = "webhook endpoint"
        constraints = [
            # Never a plain secret: the database refuses one written past the services.
            models.CheckConstraint(
                condition=models.Q(encrypted_secret__startswith=SEALED_PREFIX),
                name="webhookendpoint_secret_encrypted",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "is_active"])]

    def __str__(self):
        return self.description or self.url

    def signing_secret(self) -> str:
        """The secret deliveries are signed with (whsec_…).

        Raises tenants.encryption.SecretsError when it cannot be decrypted.
        """
        return encryption.open_sealed(
            self.encrypted_secret, tenant_id=self.tenant_id, purpose=SECRET_PURPOSE
        )
