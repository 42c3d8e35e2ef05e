from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords


class TenantQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status=Tenant.Status.ACTIVE)


class Tenant(models.Model):
    """A client firm. Everything an AI employee does belongs to exactly one tenant."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    max_concurrent_runs = models.PositiveIntegerField(default=10)
    reserved_steps_per_minute = models.PositiveIntegerField(default=60)
    priority_weight = models.PositiveIntegerField(default=1)
    monthly_token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Blank: no limit."
    )
    monthly_cost_budget = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="Blank: no limit."
    )
    retention_days = models.PositiveIntegerField(default=365)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()
    objects = TenantQuerySet.as_manager()

    class Meta:
        permissions = [
            ("operate_tenant", "Operate: manage roles and policies, start and cancel runs"),
            ("review_tenant", "Review: decide approval requests"),
            ("audit_tenant", "Audit: read runs and the audit trail, export"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(priority_weight__gte=1), name="tenant_priority_weight_gte_1"
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Membership(models.Model):
    """A user's part in one tenant; guardian permissions on the Tenant follow from these rows."""

    class Kind(models.TextChoices):
        OPERATOR = "operator", "Operator"
        REVIEWER = "reviewer", "Reviewer"
        AUDITOR = "auditor", "Auditor"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "tenant", "kind"], name="membership_unique_user_tenant_kind"
            ),
        ]

    def __str__(self):
        return f"{self.user} · {self.tenant} · {self.get_kind_display()}"


class ClientRecord(models.Model):
    """Tenant data that AI employees may read through tools (contacts, matters, figures)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="records")
    kind = models.SlugField(max_length=40, help_text="Data kind, e.g. contact, matter, ledger.")
    reference = models.CharField(max_length=80)
    name = models.CharField(max_length=200)
    email = models.EmailField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "reference"], name="clientrecord_unique_tenant_reference"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "kind", "email"])]

    def __str__(self):
        return f"{self.reference} · {self.name}"
