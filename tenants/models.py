from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

from tenants import encryption
from tenants.encryption import PREFIX as SEALED_PREFIX
from tenants.ids import RandomIdField

# What a tenant's provider key is sealed for (tenants.encryption binds it to the tenant).
PROVIDER_KEY_PURPOSE = "provider_api_key"

# Audit payloads are kept at least this long, whatever a tenant asks (a database constraint).
MIN_RETENTION_DAYS = 30


class TenantQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status=Tenant.Status.ACTIVE)


class Tenant(models.Model):
    """A client firm. Everything an AI employee does belongs to exactly one tenant."""

    id = RandomIdField(primary_key=True)

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
    budget_lifted_until = models.DateTimeField(
        null=True, blank=True, help_text="An operator let work go on past the budget until then."
    )
    retention_days = models.PositiveIntegerField(
        default=365,
        validators=[MinValueValidator(MIN_RETENTION_DAYS)],
        help_text=(
            "Audit event payloads (data and reason) older than this are removed; the events, "
            "their hash chain and its checkpoints stay."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # The tenant's own API key for the model provider, encrypted (tenants.encryption); set and
    # cleared only through tenants.services, never shown again, never in history.
    provider_api_key_encrypted = models.TextField(blank=True, default="", editable=False)
    provider_api_key_changed_at = models.DateTimeField(null=True, blank=True, editable=False)

    history = HistoricalRecords(
        history_id_field=RandomIdField(), excluded_fields=["provider_api_key_encrypted"]
    )
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
            models.CheckConstraint(
                condition=models.Q(retention_days__gte=MIN_RETENTION_DAYS),
                name="tenant_retention_days_gte_minimum",
            ),
            # Never a plain key: empty (none set) or a ciphertext.
            models.CheckConstraint(
                condition=models.Q(provider_api_key_encrypted="")
                | models.Q(provider_api_key_encrypted__startswith=SEALED_PREFIX),
                name="tenant_provider_api_key_encrypted",
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def has_provider_api_key(self) -> bool:
        return bool(self.provider_api_key_encrypted)

    def provider_api_key(self) -> str:
        """The tenant's model provider API key ("" when it has none).

        Raises tenants.encryption.SecretsError when it cannot be decrypted.
        """
        if not self.provider_api_key_encrypted:
            return ""
        return encryption.open_sealed(
            self.provider_api_key_encrypted, tenant_id=self.pk, purpose=PROVIDER_KEY_PURPOSE
        )


class Membership(models.Model):
    """A user's part in one tenant; guardian permissions on the Tenant follow from these rows."""

    id = RandomIdField(primary_key=True)

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

    history = HistoricalRecords(history_id_field=RandomIdField())

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

    id = RandomIdField(primary_key=True)

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


class ApiKey(models.Model):
    """A tenant's bearer key for the intake API. Only a hash is stored; the key is shown once."""

    id = RandomIdField(primary_key=True)

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, help_text="Identifies the key in logs.")
    key_hash = models.CharField(max_length=64)
    role_slugs = models.JSONField(
        default=list, blank=True, help_text="Roles this key may start; empty: every role."
    )
    rate_limit_per_minute = models.PositiveIntegerField(default=120)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords(
        history_id_field=RandomIdField(), excluded_fields=["last_used_at", "key_hash"]
    )

    class Meta:
        verbose_name = "API key"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def may_start(self, role_slug: str) -> bool:
        return not self.role_slugs or role_slug in self.role_slugs


class ApiRateWindow(models.Model):
    """Requests made with one key in one minute: the per-key rate limit's counter."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+")
    window_start = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "window_start"], name="ratewindow_unique"),
        ]

    def __str__(self):
        return f"{self.api_key_id} @ {self.window_start:%H:%M}: {self.count}"


class PlatformStaff(models.Model):
    """People who run AgentDesk itself. The flag alone shows no tenant's data: for that they
    open a break-glass grant, with a reason, which audits every page they view."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="platform_staff"
    )
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "platform staff"

    def __str__(self):
        return str(self.user)


class BreakGlassGrant(models.Model):
    """Time-boxed, read-only access of one platform-staff member to one tenant."""

    id = RandomIdField(primary_key=True)

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="break_glass_grants"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    reason = models.TextField()
    started_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "expires_at"])]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(expires_at__gt=models.F("started_at")),
                name="breakglass_expires_after_start",
            ),
        ]

    def __str__(self):
        return f"{self.user} → {self.tenant} until {self.expires_at:%Y-%m-%d %H:%M}"
