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

    # The bundle: everything that decides behaviour lives in `definition` (README, "The
    # bundle"). These read it; a run pinned to this version reads nothing else.

    @property
    def input_schema(self) -> dict:
        return self.definition.get("input_schema") or {}

    @property
    def allowed_tools(self) -> list[str]:
        return list(self.definition.get("allowed_tools") or [])

    @property
    def allowed_data_kinds(self) -> list[str]:
        return list(self.definition.get("allowed_data_kinds") or [])

    @property
    def target_turnaround_minutes(self) -> int:
        return int(self.definition.get("target_turnaround_minutes") or 240)

    @property
    def approval_rules(self) -> list[dict]:
        return list(self.definition.get("approval_rules") or [])
