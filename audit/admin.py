"""The audit trail in the admin: read-only for everyone, platform staff included."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from audit.models import AuditEvent
from tenants.admin_scoping import TenantScopedAdmin, pretty_json, username_of


@admin.register(AuditEvent)
class AuditEventAdmin(TenantScopedAdmin, admin.ModelAdmin):
    view_access = "audit"
    # Append-only and hash-chained: no add, change or delete, whoever asks.
    add_access = change_access = delete_access = None
    list_display = (
        "seq",
        "created_at",
        "tenant",
        "actor",
        "action",
        "object",
        "run",
        "short_reason",
    )
    list_display_links = ("seq", "action")
    list_filter = ("action", "actor_type", "tenant")
    list_select_related = ("tenant",)
    search_fields = ("action", "reason", "actor_label")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-seq")
    fieldsets = (
        (None, {"fields": ("tenant", "seq", "created_at", "action", "reason")}),
        ("Who", {"fields": ("actor_type", "actor_label", "actor_username", "role_version_id")}),
        ("What", {"fields": ("object_type", "object_id", "run", "step_id", "data_pretty")}),
        ("Chain", {"fields": ("prev_hash", "hash")}),
    )
    readonly_fields = (
        "tenant",
        "seq",
        "created_at",
        "action",
        "reason",
        "actor_type",
        "actor_label",
        "actor_username",
        "role_version_id",
        "object_type",
        "object_id",
        "run",
        "step_id",
        "data_pretty",
        "prev_hash",
        "hash",
    )

    @admin.display(description="actor", ordering="actor_label")
    def actor(self, obj):
        return f"{obj.actor_label} ({obj.get_actor_type_display()})"

    @admin.display(description="user")
    def actor_username(self, obj):
        return username_of(obj.actor_user)

    @admin.display(description="object")
    def object(self, obj):
        if not obj.object_type:
            return "—"
        return f"{obj.object_type} #{obj.object_id}"

    @admin.display(description="run", ordering="run_id")
    def run(self, obj):
        # Runs are referenced by id: the trail outlives what it describes.
        if obj.run_id is None:
            return "—"
        url = reverse("admin:desk_run_change", args=[obj.run_id])
        return format_html('<a href="{}">Run #{}</a>', url, obj.run_id)

    @admin.display(description="reason")
    def short_reason(self, obj):
        return obj.reason if len(obj.reason) <= 80 else obj.reason[:79] + "…"

    @admin.display(description="data")
    def data_pretty(self, obj):
        return pretty_json(obj.data)
