from decimal import Decimal

from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords


class RunQuerySet(models.QuerySet):
    def for_tenant(self, tenant):
        return self.filter(tenant=tenant)

    def open(self):
        return self.filter(status__in=Run.OPEN_STATUSES)


class Run(models.Model):
    """One piece of work for one tenant, pinned to one role version."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
        ON_HOLD = "on_hold", "On hold (escalated)"
        COMPLETED = "completed", "Completed"
        REJECTED = "rejected", "Rejected"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    OPEN_STATUSES = (Status.QUEUED, Status.RUNNING, Status.WAITING_APPROVAL, Status.ON_HOLD)

    class Via(models.TextChoices):
        ADMIN = "admin", "Admin"
        API = "api", "API"
        COMMAND = "command", "Command"
        SCHEDULE = "schedule", "Schedule"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="runs")
    role = models.ForeignKey("roles.Role", on_delete=models.PROTECT, related_name="runs")
    role_version = models.ForeignKey(
        "roles.RoleVersion", on_delete=models.PROTECT, related_name="runs"
    )
    input = models.JSONField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    via = models.CharField(max_length=20, choices=Via.choices)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    started_by_label = models.CharField(max_length=200)
    api_key = models.ForeignKey(
        "tenants.ApiKey", on_delete=models.PROTECT, null=True, blank=True, related_name="runs"
    )
    idempotency_key = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    sla_escalated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="run_unique_tenant_idempotency_key",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "status"]),
            models.Index(fields=["status", "created_at"]),
        ]

    def __str__(self):
        return f"Run #{self.pk} · {self.role.slug}"

    @property
    def is_open(self) -> bool:
        return self.status in self.OPEN_STATUSES

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StepRun(models.Model):
    """One step of a run: the unit a worker leases, executes and checkpoints."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        READY = "ready", "Ready"
        RUNNING = "running", "Running"
        WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    index = models.PositiveIntegerField()
    key = models.CharField(max_length=40)
    kind = models.CharField(max_length=20)
    category = models.CharField(max_length=40)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    rendered = models.JSONField(
        default=dict, blank=True, help_text="The rendered prompt or tool call."
    )
    approved_payload = models.JSONField(
        null=True, blank=True, help_text="What reviewers approved (possibly edited)."
    )
    feedback = models.TextField(blank=True, help_text="A reviewer's feedback for another attempt.")
    output = models.JSONField(null=True, blank=True)
    model = models.CharField(max_length=100, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    error = models.TextField(blank=True)
    idempotency_key = models.CharField(max_length=100, unique=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="steprun_unique_run_index"),
            models.UniqueConstraint(fields=["run", "key"], name="steprun_unique_run_key"),
        ]
        indexes = [models.Index(fields=["status", "lease_expires_at"])]

    def __str__(self):
        return f"{self.key} ({self.get_status_display()})"


class OutboxMessage(models.Model):
    """A side effect to deliver once, keyed by (run, step): retries find the row and stop."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="outbox")
    step = models.ForeignKey(StepRun, on_delete=models.PROTECT, related_name="outbox")
    idempotency_key = models.CharField(max_length=120, unique=True)
    channel = models.CharField(max_length=40)
    payload = models.JSONField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.channel} · {self.idempotency_key}"


class ModelPrice(models.Model):
    """What a model costs, per million tokens; the cost of every step is computed from it."""

    model = models.CharField(max_length=100, unique=True)
    prompt_per_million = models.DecimalField(max_digits=10, decimal_places=4)
    completion_per_million = models.DecimalField(max_digits=10, decimal_places=4)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        verbose_name = "model price"

    def __str__(self):
        return self.model

    def cost(self, *, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return (
            self.prompt_per_million * prompt_tokens
            + self.completion_per_million * completion_tokens
        ) / Decimal(1_000_000)


class TenantUsage(models.Model):
    """A tenant's model usage in one calendar month, kept current by every checkpoint."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="usage")
    month = models.DateField(help_text="The first day of the month.")
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    steps = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "month"], name="tenantusage_unique_month"),
        ]

    def __str__(self):
        return f"{self.tenant_id} {self.month:%Y-%m}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
