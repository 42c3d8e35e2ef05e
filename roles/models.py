from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords


class Role(models.Model):
    """An AI employee's job description within one tenant."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="roles")
    slug = models.SlugField(max_length=60)
    name = models.CharField(max_length=200)
    purpose = models.TextField(blank=True)
    input_schema = models.JSONField(
        default=dict, blank=True, help_text="JSON Schema that every run's input must satisfy."
    )
    outputs = models.TextField(blank=True, help_text="What the AI employee delivers.")
    target_turnaround_minutes = models.PositiveIntegerField(
        default=240, help_text="Service level: a run should finish within this time."
    )
    escalation_conditions = models.TextField(
        blank=True, help_text="When a person must take over, in plain words."
    )
    allowed_tools = models.JSONField(default=list, blank=True)
    allowed_data_kinds = models.JSONField(default=list, blank=True)
    active_version = models.ForeignKey(
        "roles.RoleVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    canary_version = models.ForeignKey(
        "roles.RoleVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    canary_percent = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "slug"], name="role_unique_tenant_slug"),
            models.CheckConstraint(
                condition=models.Q(canary_percent__lte=100), name="role_canary_percent_lte_100"
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.tenant.slug})"


class RoleVersion(models.Model):
    """A numbered snapshot of a role's workflow; immutable once published."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"

    role = models.ForeignKey(Role, on_delete=models.CASCADE, related_name="versions")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)
    definition = models.JSONField(help_text="Workflow: model settings and steps (see README).")
    change_note = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    published_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["role", "number"], name="roleversion_unique_number"),
        ]

    def __str__(self):
        return f"{self.role.slug} v{self.number}"

    @property
    def is_published(self) -> bool:
        return self.status == self.Status.PUBLISHED

    @property
    def steps(self) -> list[dict]:
        return self.definition.get("steps", [])

    # The bundle: what decides behaviour. Until the role's own fields move into the version
    # (issue 10), a definition without a key falls back to the role's field, which is what
    # the runtime reads, so a golden case judges the behaviour runs have.

    def _bundled(self, key: str, fallback):
        return self.definition.get(key, fallback)

    @property
    def input_schema(self) -> dict:
        return self._bundled("input_schema", self.role.input_schema) or {}

    @property
    def allowed_tools(self) -> list[str]:
        return list(self._bundled("allowed_tools", self.role.allowed_tools) or [])

    @property
    def allowed_data_kinds(self) -> list[str]:
        return list(self._bundled("allowed_data_kinds", self.role.allowed_data_kinds) or [])

    @property
    def target_turnaround_minutes(self) -> int:
        return int(self._bundled("target_turnaround_minutes", self.role.target_turnaround_minutes))

    @property
    def approval_rules(self) -> list[dict]:
        return list(self.definition.get("approval_rules") or [])


# --- golden cases: the role's regression suite ----------------------------------------------


class GoldenCase(models.Model):
    """An input and what a good answer to it looks like; every version of the role must keep
    passing it. Retired, never deleted, so a case that disappears is seen by the gate."""

    class Source(models.TextChoices):
        MANUAL = "manual", "Written by hand"
        DECISION = "decision", "A reviewer's edit"
        RUN = "run", "A completed run"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    role = models.ForeignKey(Role, on_delete=models.CASCADE, related_name="golden_cases")
    name = models.CharField(max_length=200)
    input = models.JSONField(help_text="The run input (checked against the role's schema).")
    expectations = models.JSONField(
        default=dict, help_text="What the result must satisfy (see roles/golden.py)."
    )
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.MANUAL)
    source_decision = models.ForeignKey(
        "approvals.Decision", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    source_run = models.ForeignKey(
        "desk.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    retired_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["role", "name"], name="goldencase_unique_role_name"),
        ]

    def __str__(self):
        return f"{self.name} ({self.role.slug})"

    @property
    def is_active(self) -> bool:
        return self.retired_at is None


class SuiteRun(models.Model):
    """One run of a role's golden cases against one version's bundle, as it was at start."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        ERROR = "error", "Error"

    FINISHED = (Status.PASSED, Status.FAILED, Status.ERROR)

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    role = models.ForeignKey(Role, on_delete=models.CASCADE, related_name="suite_runs")
    version = models.ForeignKey(RoleVersion, on_delete=models.CASCADE, related_name="suite_runs")
    bundle_digest = models.CharField(
        max_length=64, help_text="SHA-256 of the version's definition when the suite started."
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    cases_total = models.PositiveIntegerField(default=0)
    cases_done = models.PositiveIntegerField(default=0)
    provider = models.CharField(max_length=100, blank=True)
    error = models.TextField(blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    is_baseline = models.BooleanField(default=False)

    class Meta:
        indexes = [models.Index(fields=["version", "created_at"])]
        constraints = [
            # A baseline is a suite run that passed, and a role has one at most.
            models.CheckConstraint(
                condition=models.Q(is_baseline=False) | models.Q(status="passed"),
                name="suiterun_baseline_passed",
            ),
            models.UniqueConstraint(
                fields=["role"], condition=models.Q(is_baseline=True), name="suiterun_one_baseline"
            ),
        ]

    def __str__(self):
        return f"Suite #{self.pk} · {self.version} · {self.get_status_display()}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class CaseResult(models.Model):
    """What one golden case gave on one suite run."""

    class Status(models.TextChoices):
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        ERROR = "error", "Error"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    suite_run = models.ForeignKey(SuiteRun, on_delete=models.CASCADE, related_name="results")
    case = models.ForeignKey(GoldenCase, on_delete=models.CASCADE, related_name="results")
    case_digest = models.CharField(
        max_length=64, help_text="SHA-256 of the case's input and expectations when evaluated."
    )
    status = models.CharField(max_length=20, choices=Status.choices)
    checks = models.JSONField(default=list, help_text="[{check, ok, detail}]")
    output = models.JSONField(default=dict, help_text="Outputs by step key.")
    tools_called = models.JSONField(default=list)
    gates_hit = models.JSONField(default=list)
    tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["suite_run", "case"], name="caseresult_unique_suite_case"
            ),
        ]

    def __str__(self):
        return f"{self.case.name}: {self.get_status_display()}"
