"""The audit trail in the admin: read-only for everyone, platform staff included."""

from __future__ import annotations

from copy import copy

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.http import Http404, HttpResponseRedirect, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from audit import context
from audit.exports import (
    FORMATS,
    Export,
    ExportError,
    download,
    events_for_export,
    parse_bound,
    start,
)
from audit.models import AuditEvent
from tenants.admin_pagination import BigTableAdmin
from tenants.admin_scoping import pretty_json, username_of
from tenants.permissions import can_audit_tenant
from tenants.scoping import tenants_for_user, visible_tenants

# Changelist parameters that page or sort, and choose no events.
NOT_FILTERS = {"p", "o", "e", "_changelist_filters"}


def int_or_zero(text: str) -> int:
    return int(text) if text.isdigit() else 0


@admin.register(AuditEvent)
class AuditEventAdmin(BigTableAdmin, admin.ModelAdmin):
    view_access = "audit"
    # Append-only and hash-chained: no add, change or delete, whoever asks.
    add_access = change_access = delete_access = None
    list_display = (
        "seq",
        "when",
        "tenant",
        "actor",
        "action",
        "object",
        "run",
        "short_reason",
    )
    list_display_links = ("seq", "action")
    list_filter = ("action", "actor_type", "tenant", "created_at")
    list_select_related = ("tenant",)
    search_fields = ("action", "reason", "actor_label")
    ordering = ("-created_at", "-seq")
    fieldsets = (
        (None, {"fields": ("tenant", "seq", "when", "action", "reason")}),
        ("Who", {"fields": ("actor_type", "actor_label", "actor_username", "role_version_id")}),
        ("Request", {"fields": ("request_id", "client_ip", "user_agent")}),
        ("What", {"fields": ("object_type", "object_id", "run", "step_id", "data_pretty")}),
        ("Chain", {"fields": ("payload", "payload_digest", "prev_hash", "hash")}),
    )
    readonly_fields = (
        "tenant",
        "seq",
        "when",
        "request_id",
        "client_ip",
        "user_agent",
        "payload",
        "payload_digest",
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
        # The tenants of the page's tenant filter (read once), those the user may audit.
        visible = visible_tenants(request.user, kinds=self._visible_kinds())
        exportable = [t for t in visible if can_audit_tenant(request.user, t)]
        filters = [(k, v) for k, v in request.GET.items() if k not in NOT_FILTERS]
        extra_context = {
            "exportable_tenants": exportable,
            "export_formats": FORMATS,
            "export_filters": filters,
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context)

    def export_view(self, request):
        """A ZIP of the tenant's events in chain order (for the period and the changelist's
        filters) and their signed manifest, streamed as it is made; the export is audited."""
        params = request.GET.copy()
        fmt = params.pop("format", [""])[-1]
        tenant_pk = params.pop("tenant", [""])[-1]
        since_text, until_text = params.pop("since", [""])[-1], params.pop("until", [""])[-1]
        tenant = tenants_for_user(request.user).filter(pk=int_or_zero(tenant_pk)).first()
        if tenant is None or fmt not in FORMATS:
            raise Http404("No such export.")
        if not can_audit_tenant(request.user, tenant):
            raise PermissionDenied
        back = f"{reverse('admin:audit_auditevent_changelist')}?{params.urlencode()}"
        try:
            since = parse_bound(since_text, is_end=False) if since_text else None
            until = parse_bound(until_text, is_end=True) if until_text else None
            filtered = self._filtered(request, params)
            export = Export(
                tenant_id=tenant.pk,
                tenant_slug=tenant.slug,
                format=fmt,
                since=since,
                until=until,
                filters={k: v for k, v in params.items() if k not in NOT_FILTERS},
                exported_by=request.user.get_username(),
            )
            upto = start(export)
        except ExportError as exc:
            messages.error(request, f"Nothing was exported: {exc}")
            return HttpResponseRedirect(back)
        events = events_for_export(
            tenant_id=tenant.pk, since=since, until=until, upto_seq=upto, events=filtered
        )
        response = StreamingHttpResponse(
            download(export, events, user=request.user, request_info=context.current()),
            content_type="application/zip",
        )
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = (
            f'attachment; filename="audit-{tenant.slug}-{stamp}-{fmt}.zip"'
        )
        return response

    def _filtered(self, request, params):
        """The changelist's events for these filters (its own filtering, search and date
        drill-down); ExportError if the filters are not the changelist's."""
        changelist_request = copy(request)
        changelist_request.GET = params
        try:
            return self.get_changelist_instance(changelist_request).queryset
        except IncorrectLookupParameters:
            raise ExportError("the filters are not ones the audit trail offers.") from None

    @admin.display(description="time", ordering="created_at")
    def when(self, obj):
        moment = timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M:%S %Z")
        return format_html('<span class="desk-nowrap">{}</span>', moment)

    @admin.display(description="actor", ordering="actor_label")
    def actor(self, obj):
        return f"{obj.actor_label} ({obj.get_actor_type_display()})"

    @admin.display(description="user")
    def actor_username(self, obj):
        try:
            return username_of(obj.actor_user)
        except ObjectDoesNotExist:  # the trail outlives the user
            return f"deleted user #{obj.actor_user_id}"

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

    @admin.display(description="payload")
    def payload(self, obj):
        if obj.payload_redacted_at is None:
            return "kept"
        when = timezone.localtime(obj.payload_redacted_at).strftime("%Y-%m-%d %H:%M:%S %Z")
        return f"removed on {when} under the tenant's retention; its digest stays in the hash"

    @admin.display(description="data")
    def data_pretty(self, obj):
        return pretty_json(obj.data)
