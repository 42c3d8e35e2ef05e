from django.conf import settings
from django.db import models

from tenants.ids import RandomIdField


class AuditChain(models.Model):
    """The head of one tenant's hash chain; locked to append the next event in order."""

    id = RandomIdField(primary_key=True)

    tenant = models.OneToOneField(
        "tenants.Tenant", on_delete=models.CASCADE, null=True, related_name="audit_chain"
    )
    last_seq = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="")

    def __str__(self):
        return f"chain of tenant {self.tenant_id} at #{self.last_seq}"


class AuditEvent(models.Model):
    """One append-only entry: who did what to which object, when, why, under which version.

    Events of a tenant form a hash chain: `hash` covers the event's fields (audit.proof
    HASHED_FIELDS) and the previous event's hash, so any edit or deletion breaks
    `audit_verify`; signed checkpoints outside the database catch a cut tail or a re-hashed
    chain. The payload (`data`, `reason`) is hashed separately into `payload_digest`: the
    tenant's retention may empty it (`payload_redacted_at`) and the chain still verifies.
    On PostgreSQL a trigger refuses every UPDATE, DELETE and TRUNCATE but that redaction.
    References to users, runs, steps and role versions are plain ids (no database
    constraint): the audit log outlives what it describes and depends on tenants only.
    """

    id = RandomIdField(primary_key=True)

    class ActorType(models.TextChoices):
        USER = "user", "User"
        AI = "ai", "AI employee"
        SYSTEM = "system", "System"
        API_KEY = "api_key", "API key"

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.PROTECT, null=True, related_name="audit_events"
    )
    seq = models.PositiveBigIntegerField()
    created_at = models.DateTimeField()
    actor_type = models.CharField(max_length=20, choices=ActorType.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=80)
    object_type = models.CharField(max_length=80, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    run_id = models.BigIntegerField(null=True, blank=True)
    step_id = models.BigIntegerField(null=True, blank=True)
    role_version_id = models.BigIntegerField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    payload_digest = models.CharField(max_length=64, default="")
    payload_redacted_at = models.DateTimeField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "seq"], name="auditevent_unique_tenant_seq"),
            models.UniqueConstraint(
                fields=["seq"],
                condition=models.Q(tenant__isnull=True),
                name="auditevent_unique_platform_seq",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "created_at"]),
            models.Index(fields=["run_id"]),
            models.Index(fields=["action"]),
            models.Index(
                fields=["tenant", "created_at"],
                condition=models.Q(payload_redacted_at__isnull=True),
                name="auditevent_payload_kept",
            ),
        ]

    def __str__(self):
        return f"#{self.seq} {self.action}"
