from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords


class ApprovalPolicy(models.Model):
    """Whether steps of a category run on their own or wait for people, per tenant or role."""

    class Mode(models.TextChoices):
        AUTO = "auto", "Run automatically"
        REVIEW = "review", "Require review"

    class OnTimeout(models.TextChoices):
        REMIND = "remind", "Remind reviewers"
        ESCALATE = "escalate", "Escalate to operators"
        REJECT = "reject", "Reject"

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.CASCADE, related_name="approval_policies"
    )
    role = models.ForeignKey(
        "roles.Role",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="approval_policies",
        help_text="Blank: applies to every role of the tenant without its own policy.",
    )
    category = models.CharField(max_length=40)
    mode = models.CharField(max_length=20, choices=Mode.choices, default=Mode.REVIEW)
    required_approvals = models.PositiveSmallIntegerField(default=1)
    due_minutes = models.PositiveIntegerField(default=240)
    on_timeout = models.CharField(
        max_length=20, choices=OnTimeout.choices, default=OnTimeout.REMIND
    )

    history = HistoricalRecords()

    class Meta:
        verbose_name_plural = "approval policies"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "role", "category"], name="policy_unique_tenant_role_category"
            ),
            models.UniqueConstraint(
                fields=["tenant", "category"],
                condition=models.Q(role__isnull=True),
                name="policy_unique_tenant_default_category",
            ),
            models.CheckConstraint(
                condition=models.Q(required_approvals__gte=1),
                name="policy_required_approvals_gte_1",
            ),
        ]

    def __str__(self):
        scope = self.role.slug if self.role_id else "all roles"
        return f"{self.category} · {scope} · {self.get_mode_display()}"


class ApprovalRequest(models.Model):
    """A gate on one step: what is proposed, how many approvals it needs, by when."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        RETURNED = "returned", "Returned for revision"
        CANCELLED = "cancelled", "Cancelled"

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.PROTECT, related_name="approval_requests"
    )
    run = models.ForeignKey("desk.Run", on_delete=models.CASCADE, related_name="approval_requests")
    step = models.ForeignKey(
        "desk.StepRun", on_delete=models.CASCADE, related_name="approval_requests"
    )
    category = models.CharField(max_length=40)
    proposal = models.JSONField(help_text="The exact draft or tool call awaiting a decision.")
    required_approvals = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    due_at = models.DateTimeField()
    on_timeout = models.CharField(max_length=20, choices=ApprovalPolicy.OnTimeout.choices)
    reminded_at = models.DateTimeField(
        null=True, blank=True, help_text="When the due-time rule (remind/escalate/reject) ran."
    )
    # Set when the e-mail went out, so a notification task delivered twice sends once.
    notified_at = models.DateTimeField(null=True, blank=True)
    reminder_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # At most one open gate per step.
            models.UniqueConstraint(
                fields=["step"],
                condition=models.Q(status="pending"),
                name="approvalrequest_one_pending_per_step",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "status", "due_at"]),
            # What the approvals sweep looks for across tenants, every round.
            models.Index(
                fields=["due_at"],
                condition=models.Q(status="pending", reminded_at__isnull=True),
                name="approval_awaiting_timeout",
            ),
            models.Index(
                fields=["created_at"],
                condition=models.Q(status="pending", notified_at__isnull=True),
                name="approval_not_notified",
            ),
        ]

    def __str__(self):
        return f"Approval #{self.pk} · {self.step.key}"

    @property
    def is_pending(self) -> bool:
        return self.status == self.Status.PENDING

    def approvals_count(self) -> int:
        return self.decisions.filter(
            verdict__in=(Decision.Verdict.APPROVE, Decision.Verdict.EDIT)
        ).count()


class Decision(models.Model):
    """One reviewer's verdict on an approval request."""

    class Verdict(models.TextChoices):
        APPROVE = "approve", "Approve"
        EDIT = "edit", "Edit and approve"
        REJECT = "reject", "Reject"
        REVISE = "revise", "Send back for revision"

    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="decisions")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.PROTECT, related_name="+")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    verdict = models.CharField(max_length=20, choices=Verdict.choices)
    comment = models.TextField(blank=True)
    edited_payload = models.JSONField(null=True, blank=True)
    diff = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["request", "reviewer"], name="decision_one_per_reviewer"
            ),
        ]

    def __str__(self):
        return f"{self.get_verdict_display()} by {self.reviewer}"


class Escalation(models.Model):
    """Something a person must look at: a failed step, a missed due time."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Resolved"

    class Kind(models.TextChoices):
        STEP_FAILED = "step_failed", "A step failed"
        BUDGET = "budget", "Monthly budget reached"
        SLA = "sla", "Service level missed"
        DELIVERY = "delivery", "Delivery failed"
        APPROVAL_OVERDUE = "approval_overdue", "Approval overdue"

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.PROTECT, related_name="escalations"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.STEP_FAILED)
    run = models.ForeignKey("desk.Run", on_delete=models.CASCADE, related_name="escalations")
    step = models.ForeignKey(
        "desk.StepRun", on_delete=models.CASCADE, null=True, blank=True, related_name="escalations"
    )
    reason = models.TextField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    resolution = models.TextField(blank=True)

    def __str__(self):
        return f"Escalation #{self.pk} · run {self.run_id}"
