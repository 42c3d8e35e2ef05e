"""The audit trail in the admin: read-only for everyone, platform staff included."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from audit.exports import FORMATS, events_for_export, iter_export
from audit.models import AuditEvent
from audit.services import Actor, record
from tenants.admin_scoping import TenantScopedAdmin, pretty_json, username_of
from tenants.permissions import can_audit_tenant
from tenants.scoping import tenants_for_user

CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


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

    change_list_template = "admin/audit/auditevent/change_list.html"

    def get_urls(self):
        export = self.admin_site.admin_view(self.export_view)
        return [path("export/", export, name="audit_auditevent_export"), *super().get_urls()]

    def changelist_view(self, request, extra_context=None):
        exportable = [
            t for t in tenants_for_user(request.user) if can_audit_tenant(request.user, t)
        ]
        extra_context = {"exportable_tenants": exportable, "export_formats": FORMATS}
        return super().changelist_view(request, {**extra_context, **(extra_context or {})})

    def export_view(self, request):
        """The tenant's whole trail in chain order, as a download; the export is audited."""
        fmt = request.GET.get("format", "")
        tenant = tenants_for_user(request.user).filter(pk=request.GET.get("tenant") or 0).first()
        if tenant is None or fmt not in FORMATS:
            raise Http404("No such export.")
        if not can_audit_tenant(request.user, tenant):
            raise PermissionDenied
        events = events_for_export(tenant_id=tenant.pk)
        body = "".join(iter_export(events.iterator(chunk_size=2000), format=fmt))
        record(
            tenant=tenant,
            actor=Actor.for_user(request.user),
            action="audit.exported",
            obj=tenant,
            data={"format": fmt, "events": events.count(), "via": "admin"},
        )
        response = HttpResponse(body, content_type=CONTENT_TYPES[fmt])
        stamp = timezone.now().strftime("%Y%m%d-%H%M")
        response["Content-Disposition"] = (
            f'attachment; filename="audit-{tenant.slug}-{stamp}.{fmt}"'
        )
        return response

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
