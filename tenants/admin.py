"""Tenants, memberships and client records in the admin; also the site's own header."""

from __future__ import annotations

from django.contrib import admin

from audit.services import Actor
from tenants.admin_scoping import TenantScopedAdmin, TenantScopedHistoryAdmin, username_of
from tenants.models import ClientRecord, Membership, Tenant
from tenants.services import (
    change_membership_kind,
    grant_membership,
    revoke_membership,
    upsert_client_record,
)

admin.site.site_header = "AgentDesk"
admin.site.site_title = "AgentDesk"
admin.site.index_title = "Your desk"
admin.site.index_template = "admin/agentdesk/index.html"


@admin.register(Tenant)
class TenantAdmin(TenantScopedHistoryAdmin):
    tenant_field = "id"
    # Tenants are created by platform staff outside any tenant (seed_demo, create_tenant):
    # an admin request runs inside its user's tenants, where a new tenant cannot be written.
    add_access = delete_access = None
    list_display = (
        "name",
        "slug",
        "status",
        "max_concurrent_runs",
        "reserved_steps_per_minute",
        "priority_weight",
        "monthly_token_budget",
        "monthly_cost_budget",
        "retention_days",
    )
    list_filter = ("status",)
    search_fields = ("name", "slug")
    ordering = ("name",)
    fieldsets = (
        (None, {"fields": ("name", "slug", "status", "created_at")}),
        (
            "Capacity",
            {
                "fields": ("max_concurrent_runs", "reserved_steps_per_minute", "priority_weight"),
                "description": "How much of the platform this client's AI employees may use.",
            },
        ),
        ("Budget", {"fields": ("monthly_token_budget", "monthly_cost_budget")}),
        ("Data", {"fields": ("retention_days",)}),
    )

    # Operators tune capacity, budget and retention; who the client is, and whether it is
    # suspended, is the platform's to change.
    readonly_fields = ("name", "slug", "status", "created_at")


@admin.register(Membership)
class MembershipAdmin(TenantScopedHistoryAdmin):
    view_access = "audit"
    list_display = ("member", "user_name", "tenant", "kind", "created_at")
    list_filter = ("kind", "tenant")
    list_select_related = ("user", "tenant")
    search_fields = ("user__username", "user__first_name", "user__last_name", "user__email")
    ordering = ("tenant__name", "user__username", "kind")

    @admin.display(description="user", ordering="user__username")
    def member(self, obj):
        return username_of(obj.user)

    @admin.display(description="name")
    def user_name(self, obj):
        return obj.user.get_full_name()

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("user", "tenant", "kind")
        return ("member", "user_name", "tenant", "kind", "created_at")

    def get_readonly_fields(self, request, obj=None):
        # Moving a membership to another person or tenant is a revoke and a grant.
        return ("member", "user_name", "tenant", "created_at") if obj else ()

    def save_model(self, request, obj, form, change):
        actor = Actor.for_user(request.user)
        if change:
            saved = Membership.objects.get(pk=obj.pk)
            change_membership_kind(membership=saved, kind=obj.kind, actor=actor)
        else:
            saved = grant_membership(user=obj.user, tenant=obj.tenant, kind=obj.kind, actor=actor)
            obj.pk, obj.created_at = saved.pk, saved.created_at

    def delete_model(self, request, obj):
        revoke_membership(membership=obj, actor=Actor.for_user(request.user))

    def delete_queryset(self, request, queryset):
        # delete_selected has checked each membership's permission on its confirmation page.
        for membership in queryset.select_related("user", "tenant"):
            revoke_membership(membership=membership, actor=Actor.for_user(request.user))


@admin.register(ClientRecord)
class ClientRecordAdmin(TenantScopedAdmin, admin.ModelAdmin):
    list_display = ("reference", "name", "kind", "email", "tenant", "updated_at")
    list_filter = ("kind", "tenant")
    list_select_related = ("tenant",)
    search_fields = ("reference", "name", "email")
    ordering = ("tenant__name", "reference")

    def get_fields(self, request, obj=None):
        fields = ("tenant", "reference", "kind", "name", "email", "data")
        return (*fields, "updated_at") if obj else fields

    def get_readonly_fields(self, request, obj=None):
        # The reference identifies the record to AI employees' tools: changing it would
        # make a new record, so it is fixed once created.
        return ("tenant", "reference", "updated_at") if obj else ()

    def save_model(self, request, obj, form, change):
        saved = upsert_client_record(
            tenant=obj.tenant,
            reference=obj.reference,
            kind=obj.kind,
            name=obj.name,
            email=obj.email,
            data=obj.data,
        )
        obj.pk, obj.updated_at = saved.pk, saved.updated_at
