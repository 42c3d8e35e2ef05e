from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone
from simple_history.models import HistoricalRecords

from desk.transitions import HasTransitions, TransitionQuerySet
from tenants.ids import RandomIdField
from tenants.locking import Level


class RunQuerySet(TransitionQuerySet):
    def for_tenant(self, tenant):
        return self.filter(tenant=tenant)

    def open(self):
        return self.filter(status__in=Run.OPEN_STATUSES)


class Run(HasTransitions, models.Model):
    """One piece of work for one tenant, pinned to one role version."""

    id = RandomIdField(primary_key=True)

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

    # Every status change of a run, by verb: (from, to).
    TRANSITIONS = {
        "admit": ({Status.QUEUED}, Status.RUNNING),
        "park": ({Status.RUNNING}, Status.WAITING_APPROVAL),
        "resume": ({Status.WAITING_APPROVAL}, Status.RUNNING),
        "hold": ({Status.RUNNING}, Status.ON_HOLD),
        "release": ({Status.ON_HOLD}, Status.RUNNING),
        "complete": ({Status.RUNNING}, Status.COMPLETED),
        "fail": ({Status.RUNNING}, Status.FAILED),
        "reject": ({Status.WAITING_APPROVAL}, Status.REJECTED),
        "cancel": (set(OPEN_STATUSES), Status.CANCELLED),
        # A person acts on a failed run's escalation: retry its step, or take it over.
        "retry": ({Status.FAILED}, Status.QUEUED),
        "reopen_for_review": ({Status.FAILED}, Status.WAITING_APPROVAL),
    }
    LOCK_LEVEL = Level.RUN

    class Via(models.TextChoices):
        ADMIN = "admin", "Admin"
        API = "api", "API"
        COMMAND = "command", "Command"
        SCHEDULE = "schedule", "Schedule"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="runs")
    # No index led by the role: given one, the planner (which cannot tell how many runs row-
    # level security lets through, nor how many a big role has) starts a page of runs from
    # the role and reads all of a big tenant's runs to keep a hundred. A role's runs are
    # found through the tenant's index (run_tenant_created).
    role = models.ForeignKey(
        "roles.Role", on_delete=models.PROTECT, related_name="runs", db_index=False
    )
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
    # Given by start_run, from the same clock reading as the deadline below.
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    sla_due_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the run misses its pinned version's target turnaround (created_at +"
        " the target); set once, when the run is started.",
    )
    # What the runs list's search looks in (desk.search), written when the run starts.
    search_text = models.TextField(blank=True, default="", editable=False)
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
            # The runs list: a tenant's runs, newest first (the admin's order, its key last).
            models.Index(fields=["tenant", "-created_at", "-id"], name="run_tenant_created"),
            # What the service-level sweep reads each minute: the open runs not escalated
            # yet, by deadline, so that it reads only those past it (OPEN_STATUSES).
            models.Index(
                fields=["sla_due_at"],
                condition=models.Q(
                    status__in=["queued", "running", "waiting_approval", "on_hold"],
                    sla_escalated_at__isnull=True,
                ),
                name="run_sla_due",
            ),
            # Queued runs by tenant, oldest first: which tenants the reaper admits for, and
            # the order admit_runs takes them in.
            models.Index(
                fields=["tenant", "created_at"],
                condition=models.Q(status="queued"),
                name="run_queued",
            ),
        ]

    def __str__(self):
        return f"Run #{self.pk} · {self.role.slug}"

    @property
    def is_open(self) -> bool:
        return self.status in self.OPEN_STATUSES

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StepRunQuerySet(TransitionQuerySet):
    pass


class StepRun(HasTransitions, models.Model):
    """One step of a run: the unit a worker leases, executes and checkpoints.

    A step is `ready` when a worker may take it now (the run's next step, admitted); while a
    worker executes it, it is `running` under a lease the worker renews by heartbeat.
    """

    id = RandomIdField(primary_key=True)

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        READY = "ready", "Ready"
        RUNNING = "running", "Running"
        WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    # Every status change of a step, by verb: (from, to).
    TRANSITIONS = {
        "ready": ({Status.PENDING}, Status.READY),
        "lease": ({Status.READY}, Status.RUNNING),
        "retry": ({Status.RUNNING}, Status.READY),
        "expire": ({Status.RUNNING}, Status.READY),
        # A draft waits for review before anything uses it...
        "propose": ({Status.RUNNING}, Status.WAITING_APPROVAL),
        # ...a tool call or a checkpoint before it runs.
        "gate": ({Status.READY}, Status.WAITING_APPROVAL),
        "complete": ({Status.RUNNING}, Status.COMPLETED),
        "approve": ({Status.WAITING_APPROVAL}, Status.READY),  # the approved call runs next
        "accept": ({Status.WAITING_APPROVAL}, Status.COMPLETED),  # the approved draft stands
        "send_back": ({Status.WAITING_APPROVAL}, Status.READY),
        "fail": ({Status.READY, Status.RUNNING}, Status.FAILED),
        "reject": ({Status.WAITING_APPROVAL}, Status.CANCELLED),
        "cancel": (
            {Status.PENDING, Status.READY, Status.RUNNING, Status.WAITING_APPROVAL},
            Status.CANCELLED,
        ),
        # A person acts on a failed step: it runs again, or their output stands (reviewed
        # first when its category is gated); the steps after it wait again.
        "retry_failed": ({Status.FAILED}, Status.READY),
        "take_over": ({Status.FAILED}, Status.COMPLETED),
        "take_over_for_review": ({Status.FAILED}, Status.WAITING_APPROVAL),
        "restore": ({Status.CANCELLED}, Status.PENDING),
    }
    LOCK_LEVEL = Level.STEP

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    index = models.PositiveIntegerField()
    key = models.CharField(max_length=40)
    kind = models.CharField(max_length=20)
    category = models.CharField(max_length=40)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    lost_leases = models.PositiveIntegerField(
        default=0, help_text="Attempts whose worker vanished (the reaper handed the step on)."
    )
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
    ready_at = models.DateTimeField(
        null=True, blank=True, help_text="When the step last became ready for a worker."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = StepRunQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="steprun_unique_run_index"),
            models.UniqueConstraint(fields=["run", "key"], name="steprun_unique_run_key"),
        ]
        indexes = [
            models.Index(fields=["status", "lease_expires_at"]),
            # The work a worker may take now: small, and read in tenant then run order.
            models.Index(
                fields=["tenant", "run"],
                condition=models.Q(status="ready"),
                name="steprun_ready",
            ),
            # Ready steps by how long they have waited: the reaper re-rings those that
            # waited too long (lost doorbells).
            models.Index(
                fields=["ready_at"],
                condition=models.Q(status="ready"),
                name="steprun_ready_since",
            ),
            # A tenant's steps done lately (the tenants page's throughput, the fair share).
            models.Index(fields=["tenant", "finished_at"], name="steprun_tenant_finished"),
        ]

    def __str__(self):
        return f"{self.key} ({self.get_status_display()})"


class OutboxMessage(models.Model):
    """A side effect to deliver, keyed by (run, step) or by what it announces: retries find
    the row and stop.

    Delivery claims the row (`sending`, committed) before handing the message over. On a
    channel delivered at most once (e-mail), a worker that dies mid-hand-over leaves it
    `uncertain` for a person to check, never sent a second time on its own; a channel
    whose receivers dedupe (webhooks) hands it over again (desk.services.outbox).
    """

    id = RandomIdField(primary_key=True)

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        UNCERTAIN = "uncertain", "Uncertain (check delivery)"
        FAILED = "failed", "Failed"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    # Empty for a message no run caused (a webhook endpoint's test event).
    run = models.ForeignKey(
        Run, on_delete=models.PROTECT, null=True, blank=True, related_name="outbox"
    )
    step = models.ForeignKey(
        StepRun, on_delete=models.PROTECT, null=True, blank=True, related_name="outbox"
    )
    idempotency_key = models.CharField(max_length=120, unique=True)
    channel = models.CharField(max_length=40)
    payload = models.JSONField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sending_at = models.DateTimeField(null=True, blank=True)
    sending_by = models.CharField(
        max_length=100, blank=True, help_text="host:pid of the process handing it over."
    )
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at"],
                condition=models.Q(status__in=["pending", "sending"]),
                name="outbox_undelivered",
            ),
        ]

    def __str__(self):
        return f"{self.channel} · {self.idempotency_key}"


class OutboxAttempt(models.Model):
    """One hand-over of an outbox message, whatever its channel and outcome: started when
    the message is claimed, finished when the outcome is recorded. One left unfinished is a
    hand-over whose worker stopped first."""

    id = RandomIdField(primary_key=True)

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    message = models.ForeignKey(
        OutboxMessage, on_delete=models.CASCADE, related_name="delivery_attempts"
    )
    number = models.PositiveIntegerField()
    worker = models.CharField(max_length=100, blank=True, help_text="host:pid handing it over.")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The receiver's HTTP status, when it answered."
    )
    error = models.TextField(blank=True)
    response_excerpt = models.TextField(blank=True, help_text="The start of the receiver's answer.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["message", "number"], name="outboxattempt_unique_message_number"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "started_at"])]

    def __str__(self):
        return f"attempt {self.number} of {self.message_id}"


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

    id = RandomIdField(primary_key=True)

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


class Sweep(models.Model):
    """A periodic maintenance job (the reaper, the approvals sweep, service levels): when it
    last ran, where, and how it went. Every worker's sweeper may run a due sweep; claiming
    this row first makes it one at a time across machines."""

    name = models.CharField(max_length=60, primary_key=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=120, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_result = models.JSONField(default=dict, blank=True)
    rounds = models.PositiveBigIntegerField(default=0)

    def __str__(self):
        return self.name


class WorkerHeartbeat(models.Model):
    """One `desk_worker` (by name, one per machine unless named otherwise): its own heartbeat
    and the last time a probe went through its django-q2 cluster."""

    name = models.CharField(max_length=100, unique=True)
    host = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    cluster_pid = models.PositiveIntegerField(null=True, blank=True)
    cluster_started_at = models.DateTimeField(null=True, blank=True)
    cluster_restarts = models.PositiveIntegerField(default=0)
    probe_ok_at = models.DateTimeField(
        null=True, blank=True, help_text="When a probe last went all the way through the cluster."
    )
    last_restart_reason = models.TextField(blank=True)

    class Meta:
        verbose_name = "worker"

    def __str__(self):
        return self.name
