from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords

from tenants.ids import RandomIdField


class ReviewerGroup(models.Model):
    """A named set of a tenant's reviewers (partners, senior reviewers): requests are
    assigned to it, and a policy may require one approval from each of several groups."""

    id = RandomIdField(primary_key=True)

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.CASCADE, related_name="reviewer_groups"
    )
    name = models.CharField(max_length=100)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="GroupMember", related_name="reviewer_groups"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="reviewergroup_unique_name"),
        ]

    def __str__(self):
        return self.name


class GroupMember(models.Model):
    id = RandomIdField(primary_key=True)

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    group = models.ForeignKey(ReviewerGroup, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "user"], name="groupmember_unique"),
        ]

    def __str__(self):
        return f"{self.user} in {self.group}"


class ApprovalPolicy(models.Model):
    """Whether steps of a category run on their own or wait for people, tenant-wide.

    It is a floor: a role version's own approval rules (in its bundle) may tighten it, never
    loosen it (approvals.gate.effective_rule). A category without a policy is gated."""

    id = RandomIdField(primary_key=True)

    class Mode(models.TextChoices):
        AUTO = "auto", "Run automatically"
        REVIEW = "review", "Require review"

    class FinalAction(models.TextChoices):
        HOLD = "hold", "Hold for a person (stays pending)"
        REJECT = "reject", "Reject"

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.CASCADE, related_name="approval_policies"
    )
    category = models.CharField(max_length=40)
    mode = models.CharField(max_length=20, choices=Mode.choices, default=Mode.REVIEW)
    required_approvals = models.PositiveSmallIntegerField(default=1)
    due_minutes = models.PositiveIntegerField(default=240)
    approver_groups = models.ManyToManyField(
        ReviewerGroup,
        blank=True,
        related_name="+",
        help_text="Approvers must include a different person from each of these groups.",
    )
    # The timeout ladder: remind every X minutes up to N times, then escalate, then the
    # final action.
    remind_every_minutes = models.PositiveIntegerField(default=60)
    max_reminders = models.PositiveSmallIntegerField(default=2)
    escalate_to_group = models.ForeignKey(
        ReviewerGroup, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    escalate_to_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    final_action = models.CharField(
        max_length=20, choices=FinalAction.choices, default=FinalAction.HOLD
    )
    max_rounds = models.PositiveSmallIntegerField(
        default=3, help_text="How many times a draft may be sent back before it escalates."
    )
    allow_bulk = models.BooleanField(
        default=False, help_text="Reviewers may approve several requests at once from the queue."
    )
    email_links = models.BooleanField(
        default=False,
        help_text="Notification e-mails carry signed approve/reject links (each opens a "
        "confirmation page; single use, expiring).",
    )

    # Approver groups change through PolicyChange, which keeps the before and after.
    history = HistoricalRecords(history_id_field=RandomIdField())

    class Meta:
        verbose_name_plural = "approval policies"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "category"], name="policy_unique_tenant_category"
            ),
            models.CheckConstraint(
                condition=models.Q(required_approvals__gte=1),
                name="policy_required_approvals_gte_1",
            ),
            models.CheckConstraint(
                condition=models.Q(remind_every_minutes__gte=1),
                name="policy_remind_every_gte_1",
            ),
            models.CheckConstraint(
                condition=models.Q(max_rounds__gte=1), name="policy_max_rounds_gte_1"
            ),
        ]

    def __str__(self):
        return f"{self.category} · {self.get_mode_display()}"


class ApprovalRequest(models.Model):
    """A gate on one step: what is proposed, how many approvals it needs, by when."""

    id = RandomIdField(primary_key=True)

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
    version = models.PositiveIntegerField(
        default=1, help_text="Goes up with every edit; approvals count for one version only."
    )
    proposal_author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Who wrote the current proposal by hand (an operator taking over).",
    )
    round = models.PositiveSmallIntegerField(
        default=1, help_text="1 for a first draft, 2 after one send-back, and so on."
    )
    previous = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The request this redraft answers.",
    )
    required_approvals = models.PositiveSmallIntegerField(default=1)
    # The policy as it stood when the request opened: groups, ladder, rounds, bulk.
    rule = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    due_at = models.DateTimeField()
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    assigned_group = models.ForeignKey(
        ReviewerGroup, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The timeout ladder: what it did so far, and when it acts next.
    next_action_at = models.DateTimeField(null=True, blank=True)
    reminders_sent = models.PositiveSmallIntegerField(default=0)
    escalated_at = models.DateTimeField(null=True, blank=True)
    held_at = models.DateTimeField(
        null=True, blank=True, help_text="The ladder ran out: the request waits for a person."
    )
    # Set when the e-mail went out, so a notification task delivered twice sends once.
    notified_at = models.DateTimeField(null=True, blank=True)
    reminders_notified = models.PositiveSmallIntegerField(default=0)
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
                fields=["next_action_at"],
                condition=models.Q(status="pending", next_action_at__isnull=False),
                name="approval_ladder_due",
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
        """Approvals of the current version, before authority is re-checked."""
        return self.decisions.current().approving().count()


class DecisionQuerySet(models.QuerySet):
    def current(self):
        """Decisions not dismissed by a later edit."""
        return self.filter(dismissed_at__isnull=True)

    def approving(self):
        return self.filter(verdict__in=(Decision.Verdict.APPROVE, Decision.Verdict.EDIT))


class Decision(models.Model):
    """One reviewer's verdict on one version of an approval request's proposal."""

    id = RandomIdField(primary_key=True)

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
    on_behalf_of = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The assignee whose delegate decided.",
    )
    verdict = models.CharField(max_length=20, choices=Verdict.choices)
    version = models.PositiveIntegerField(default=1, help_text="The proposal version decided.")
    comment = models.TextField(blank=True)
    edited_payload = models.JSONField(null=True, blank=True)
    diff = models.TextField(blank=True)
    via = models.CharField(max_length=20, default="admin")
    created_at = models.DateTimeField(auto_now_add=True)
    dismissed_at = models.DateTimeField(
        null=True, blank=True, help_text="A later edit made this approval stale."
    )

    objects = DecisionQuerySet.as_manager()

    class Meta:
        constraints = [
            # A person counts once: one standing decision per reviewer and request.
            models.UniqueConstraint(
                fields=["request", "reviewer"],
                condition=models.Q(dismissed_at__isnull=True),
                name="decision_one_current_per_reviewer",
            ),
        ]

    def __str__(self):
        return f"{self.get_verdict_display()} by {self.reviewer}"


class Escalation(models.Model):
    """Something a person must look at: a failed step, a missed due time."""

    id = RandomIdField(primary_key=True)

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Resolved"

    class Kind(models.TextChoices):
        STEP_FAILED = "step_failed", "A step failed"
        BUDGET = "budget", "Monthly budget reached"
        SLA = "sla", "Service level missed"
        DELIVERY = "delivery", "Delivery failed"
        APPROVAL_OVERDUE = "approval_overdue", "Approval overdue"
        APPROVAL_ROUNDS = "approval_rounds", "Sent back too often"

    class Outcome(models.TextChoices):
        RESOLVED = "resolved", "Resolved"
        RETRIED = "retried", "Step retried"
        TAKEN_OVER = "taken_over", "Taken over by a person"
        CANCELLED = "cancelled", "Run cancelled"
        LEFT_PENDING = "left_pending", "Left with the reviewers"

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
    outcome = models.CharField(max_length=20, choices=Outcome.choices, blank=True)

    def __str__(self):
        return f"Escalation #{self.pk} · run {self.run_id}"


class Delegation(models.Model):
    """Out of office: the requests assigned to `delegator` go to `delegate` until `ends_at`.

    The delegate decides as themselves (four eyes applies to them); the decision records
    the delegator it was made for."""

    id = RandomIdField(primary_key=True)

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    delegator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    delegate = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")),
                name="delegation_ends_after_start",
            ),
            models.CheckConstraint(
                condition=~models.Q(delegator=models.F("delegate")),
                name="delegation_not_to_oneself",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "delegate", "ends_at"])]

    def __str__(self):
        return f"{self.delegator} → {self.delegate} until {self.ends_at:%Y-%m-%d}"


class PolicyChange(models.Model):
    """A proposed change to an approval policy; it applies once a second operator approves."""

    id = RandomIdField(primary_key=True)

    class Action(models.TextChoices):
        CREATE = "create", "Create"
        UPDATE = "update", "Change"
        DELETE = "delete", "Delete"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for a second operator"
        APPLIED = "applied", "Applied"
        REJECTED = "rejected", "Rejected"
        WITHDRAWN = "withdrawn", "Withdrawn"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    policy = models.ForeignKey(
        ApprovalPolicy, on_delete=models.SET_NULL, null=True, blank=True, related_name="changes"
    )
    action = models.CharField(max_length=20, choices=Action.choices)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    proposed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField(blank=True)
    proposed_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "status", "proposed_at"])]

    def __str__(self):
        return f"Policy change #{self.pk} · {self.get_action_display()}"


class ApprovalLink(models.Model):
    """A signed approve or reject link e-mailed to one reviewer for one request.

    Only the SHA-256 of the token is stored; the token itself is only ever in the e-mail.
    Opening the link shows a confirmation page (mail scanners prefetch links); the decision
    is a POST, made once, for the proposal version the e-mail showed, before it expires."""

    id = RandomIdField(primary_key=True)

    class Action(models.TextChoices):
        APPROVE = "approve", "Approve"
        REJECT = "reject", "Reject"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    request = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="links")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    action = models.CharField(max_length=10, choices=Action.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    version = models.PositiveIntegerField(help_text="The proposal version the e-mail showed.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    proposal_hash = models.CharField(
        max_length=64, help_text="SHA-256 of the proposal (canonical JSON) the e-mail showed."
    )

    class Meta:
        constraints = [
            # One live token per person and action: a later e-mail replaces the earlier one.
            models.UniqueConstraint(
                fields=["request", "reviewer", "action"], name="approvallink_one_per_action"
            ),
        ]

    def __str__(self):
        return f"{self.get_action_display()} link for approval #{self.request_id}"
