import hashlib
import json

from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords

from roles.workflow import BUNDLE_DEFAULTS
from tenants.ids import RandomIdField


class Role(models.Model):
    """An AI employee's job within one tenant: its name, and which of its versions new runs
    use. Everything that decides behaviour is in the versions (RoleVersion.definition)."""

    id = RandomIdField(primary_key=True)

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="roles")
    slug = models.SlugField(max_length=60)
    name = models.CharField(max_length=200)
    purpose = models.TextField(blank=True)
    active_version = models.ForeignKey(
        "roles.RoleVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    canary_version = models.ForeignKey(
        "roles.RoleVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    canary_percent = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords(history_id_field=RandomIdField())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "slug"], name="role_unique_tenant_slug"),
            models.CheckConstraint(
                condition=models.Q(canary_percent__lte=100), name="role_canary_percent_lte_100"
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.tenant.slug})"

    @property
    def active_input_schema(self) -> dict:
        """The input schema of the active version (what API clients are told to send)."""
        return self.active_version.input_schema if self.active_version_id else {}


class RoleVersion(models.Model):
    """A numbered snapshot of a role's whole bundle (roles.workflow); a draft is edited
    freely, a published version never changes."""

    id = RandomIdField(primary_key=True)

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"

    role = models.ForeignKey(Role, on_delete=models.CASCADE, related_name="versions")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)
    definition = models.JSONField(
        help_text="The bundle: workflow, prompts, model, tools, schemas, SLA, approval rules."
    )
    change_note = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    published_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords(history_id_field=RandomIdField())

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

    @property
    def digest(self) -> str:
        """SHA-256 of the bundle as it is now: what a review or a suite run is for."""
        return bundle_digest(self.definition)

    def _bundled(self, key: str):
        return self.definition.get(key, BUNDLE_DEFAULTS[key])

    @property
    def input_schema(self) -> dict:
        return self._bundled("input_schema") or {}

    @property
    def allowed_tools(self) -> list[str]:
        return list(self._bundled("allowed_tools") or [])

    @property
    def allowed_data_kinds(self) -> list[str]:
        return list(self._bundled("allowed_data_kinds") or [])

    @property
    def target_turnaround_minutes(self) -> int:
        return int(self._bundled("target_turnaround_minutes"))

    @property
    def approval_rules(self) -> list[dict]:
        return list(self._bundled("approval_rules") or [])


def bundle_digest(definition: dict) -> str:
    """SHA-256 of a bundle's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class Publication(models.Model):
    """A request to publish a draft: the bundle (by digest) and the regression gate's report
    as they were when asked; decided by a second operator of the tenant who did not write
    the draft. An approved publication makes the version published (ready); putting it in
    front of runs (activate, canary) is a separate, confirmed step."""

    id = RandomIdField(primary_key=True)

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for a second operator"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        WITHDRAWN = "withdrawn", "Withdrawn"
        LAPSED = "lapsed", "Lapsed (the draft changed)"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(RoleVersion, on_delete=models.CASCADE, related_name="publications")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    digest = models.CharField(max_length=64, help_text="SHA-256 of the bundle under review.")
    gate = models.JSONField(default=dict, help_text="The regression gate's report when asked.")
    override_reason = models.TextField(
        blank=True, help_text="Why it may be published although the regression gate refused."
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    requested_at = models.DateTimeField(auto_now_add=True)
    note = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "status", "requested_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["version"],
                condition=models.Q(status="pending"),
                name="publication_one_pending_per_version",
            ),
        ]

    def __str__(self):
        return f"Publication #{self.pk} · {self.version} · {self.get_status_display()}"

    @property
    def is_override(self) -> bool:
        return bool(self.override_reason)


# --- golden cases: the role's regression suite ----------------------------------------------


class GoldenCase(models.Model):
    """An input and what a good answer to it looks like; every version of the role must keep
    passing it. Retired, never deleted, so a case that disappears is seen by the gate."""

    id = RandomIdField(primary_key=True)

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

    history = HistoricalRecords(history_id_field=RandomIdField())

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

    id = RandomIdField(primary_key=True)

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

    id = RandomIdField(primary_key=True)

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
