"""Roles and their versions in the admin: write drafts, ask for and decide publication,
activate, roll back, and send a share of new runs to a canary version."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from audit.services import Actor
from roles.comparison_views import comparison_urls
from roles.diff import diff_bundles, render_diff_html
from roles.models import Publication, Role, RoleVersion
from roles.services import create_role, create_role_version, set_canary, update_role
from roles.version_views import publication_view, version_urls
from roles.workflow import BUNDLE_DEFAULTS, CATEGORIES, STEP_KINDS
from tenants.admin_scoping import (
    PrettyJSONField,
    TenantScopedAdmin,
    TenantScopedHistoryAdmin,
    add_service_error,
    pretty_json,
    render_form_page,
    scoped_choices,
    username_of,
)
from tenants.permissions import can_operate_tenant


def version_link(version: RoleVersion | None):
    if version is None:
        return "—"
    url = reverse("admin:roles_roleversion_change", args=[version.pk])
    return format_html(
        '<a href="{}">v{} · {}</a>', url, version.number, version.get_status_display()
    )


class RoleForm(forms.ModelForm):
    class Meta:
        model = Role
        fields = ("tenant", "slug", "name", "purpose")


class RoleVersionInline(TenantScopedAdmin, admin.TabularInline):
    model = RoleVersion
    add_access = change_access = delete_access = None
    fields = ("version", "status", "change_note", "author", "created_at", "published_at")
    readonly_fields = fields
    ordering = ("-number",)
    extra = 0
    can_delete = False
    show_change_link = False
    verbose_name_plural = "versions"

    @admin.display(description="version")
    def version(self, obj):
        return version_link(obj)

    @admin.display(description="created by")
    def author(self, obj):
        return username_of(obj.created_by)


@admin.register(Role)
class RoleAdmin(TenantScopedHistoryAdmin):
    form = RoleForm
    delete_access = None  # runs keep their role; retire a role by leaving it without use
    inlines = (RoleVersionInline,)
    list_display = (
        "name",
        "slug",
        "tenant",
        "active",
        "canary",
        "created_at",
    )
    list_filter = ("tenant",)
    list_select_related = ("tenant", "active_version", "canary_version")
    search_fields = ("name", "slug", "purpose")
    ordering = ("tenant__name", "name")
    change_form_template = "admin/roles/role/change_form.html"

    @admin.display(description="active version", ordering="active_version__number")
    def active(self, obj):
        return version_link(obj.active_version)

    @admin.display(description="canary")
    def canary(self, obj):
        if obj.canary_version is None:
            return "—"
        return format_html("{} ({}%)", version_link(obj.canary_version), obj.canary_percent)

    def get_fieldsets(self, request, obj=None):
        first = ("tenant", "slug", "name") if obj is None else ("tenant", "slug", "name", "active")
        # Everything that decides behaviour (prompts, tools, schemas, service level,
        # approval rules) is in the versions: a change is a new draft, published by two.
        fieldsets = [(None, {"fields": (*first, "purpose")})]
        if obj is not None:
            fieldsets.append(("Canary", {"fields": ("canary", "created_at")}))
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        # Versions are activated through their own actions (audited); tenant and slug are
        # how runs and API clients name the role.
        return ("tenant", "slug", "active", "canary", "created_at")

    def save_model(self, request, obj, form, change):
        actor = Actor.for_user(request.user)
        if change:
            changes = {name: form.cleaned_data[name] for name in ("name", "purpose")}
            self.call_service(form, lambda: update_role(role=obj, actor=actor, changes=changes))
            return
        role = self.call_service(
            form,
            lambda: create_role(
                tenant=obj.tenant, slug=obj.slug, name=obj.name, purpose=obj.purpose, actor=actor
            ),
        )
        obj.pk, obj.created_at = role.pk, role.created_at

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["may_operate"] = can_operate_tenant(request.user, obj.tenant)
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- canary ---------------------------------------------------------------------------

    def get_urls(self):
        canary = path(
            "<path:object_id>/canary/",
            self.admin_site.admin_view(self.canary_view),
            name="roles_role_canary",
        )
        return [canary, *comparison_urls(self), *super().get_urls()]

    def canary_view(self, request, object_id):
        role = self.get_object(request, unquote(object_id))
        if role is None:
            raise Http404("No role with this id.")
        if not self.has_change_permission(request, role):
            raise PermissionDenied
        if not can_operate_tenant(request.user, role.tenant):
            raise PermissionDenied
        form = CanaryForm(
            request.POST if request.method == "POST" else None,
            role=role,
            version_pk=request.GET.get("version"),
        )
        confirming = False
        if form.is_bound and form.is_valid() and "_confirm" not in request.POST:
            confirming = True  # show what changes before anything reaches live runs
        elif form.is_bound and form.is_valid():
            version, percent = form.cleaned_data["version"], form.cleaned_data["percent"]
            try:
                role = set_canary(
                    role=role, version=version, percent=percent, actor=Actor.for_user(request.user)
                )
            except ValidationError as exc:
                add_service_error(form, exc)
            else:
                self.message_user(request, canary_message(role), messages.SUCCESS)
                return redirect("admin:roles_role_change", role.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Canary of {role.name}",
            "opts": self.opts,
            "original": role,
            "form": form,
            "confirming": confirming,
        }
        if confirming:
            chosen = form.cleaned_data["version"]
            context["chosen"] = chosen if form.cleaned_data["percent"] else None
            context["percent"] = form.cleaned_data["percent"]
            if context["chosen"] is not None and role.active_version is not None:
                context["diff"] = render_diff_html(
                    diff_bundles(role.active_version.definition, chosen.definition)
                )
        return TemplateResponse(request, "admin/roles/role/canary.html", context)


def canary_message(role: Role) -> str:
    if role.canary_version is None:
        return f"No canary: every new run of {role.name} uses the active version."
    return (
        f"{role.canary_percent}% of new runs of {role.name} now use "
        f"v{role.canary_version.number}; the rest use the active version."
    )


class CanaryForm(forms.Form):
    version = forms.ModelChoiceField(
        queryset=RoleVersion.objects.none(),
        required=False,
        empty_label="No canary",
        help_text="A published version other than the active one.",
    )
    percent = forms.IntegerField(
        min_value=0,
        max_value=100,
        help_text="The share of new runs that use it, from 1 to 100 (0 stops the canary).",
    )

    def __init__(self, *args, role: Role, version_pk=None, **kwargs):
        chosen = role.versions.filter(pk=version_pk).first() if str(version_pk).isdigit() else None
        kwargs.setdefault(
            "initial",
            {"version": chosen or role.canary_version, "percent": role.canary_percent or 10},
        )
        super().__init__(*args, **kwargs)
        self.fields["version"].queryset = (
            role.versions.filter(status=RoleVersion.Status.PUBLISHED)
            .exclude(pk=role.active_version_id)
            .order_by("-number")
        )
        self.fields["version"].label_from_instance = lambda version: (
            f"v{version.number} · {version.change_note or 'no note'}"
        )


class NewVersionForm(forms.Form):
    role = forms.ModelChoiceField(queryset=Role.objects.none())
    definition = PrettyJSONField(
        widget=forms.Textarea(attrs={"rows": 30, "class": "vLargeTextField desk-json"}),
        help_text="The whole bundle: model, prompts, steps, tools, schemas, service level, "
        "approval rules (see README).",
    )
    change_note = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField"}),
        help_text="What changed and why; reviewers of the publication read this.",
    )

    def __init__(self, *args, roles, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["role"].queryset = roles.select_related("tenant").order_by(
            "tenant__name", "name"
        )


@admin.register(RoleVersion)
class RoleVersionAdmin(TenantScopedHistoryAdmin):
    # Drafts change on their edit page; published versions never do.
    change_access = delete_access = None
    add_form_template = "admin/roles/roleversion/add_form.html"
    list_display = (
        "__str__",
        "role",
        "tenant",
        "status",
        "in_use",
        "change_note",
        "author",
        "created_at",
        "published_at",
    )
    list_filter = ("status", "role", "tenant")
    list_select_related = ("role", "tenant", "created_by")
    search_fields = ("role__slug", "role__name", "change_note")
    ordering = ("role__tenant__name", "role__name", "-number")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "role",
                    "number",
                    "status",
                    "in_use",
                    "tenant",
                    "change_note",
                )
            },
        ),
        ("Changes against the active version", {"fields": ("diff",)}),
        ("Bundle", {"fields": ("steps_table", "definition_pretty")}),
        ("History", {"fields": ("author", "created_at", "publisher", "published_at")}),
    )
    readonly_fields = (
        "role",
        "number",
        "status",
        "in_use",
        "tenant",
        "change_note",
        "diff",
        "steps_table",
        "definition_pretty",
        "author",
        "created_at",
        "publisher",
        "published_at",
    )

    @admin.display(description="created by", ordering="created_by__username")
    def author(self, obj):
        return username_of(obj.created_by)

    @admin.display(description="published by")
    def publisher(self, obj):
        return username_of(obj.published_by)

    @admin.display(description="in use")
    def in_use(self, obj):
        role = obj.role
        if role.active_version_id == obj.pk:
            return "Active"
        if role.canary_version_id == obj.pk:
            return f"Canary ({role.canary_percent}%)"
        return "—"

    @admin.display(description="steps")
    def steps_table(self, obj):
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    index,
                    step.get("key", "?"),
                    step.get("kind", "?"),
                    step.get("category", "?"),
                    step.get("tool", ""),
                    step.get("reason", ""),
                )
                for index, step in enumerate(obj.steps, start=1)
            ),
        )
        return format_html(
            '<table class="desk-table"><thead><tr><th>#</th><th>key</th><th>kind</th>'
            "<th>category</th><th>tool</th><th>reason</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="bundle")
    def definition_pretty(self, obj):
        return pretty_json(obj.definition)

    @admin.display(description="diff")
    def diff(self, obj):
        active = obj.role.active_version
        if active is None or active.pk == obj.pk:
            return "This is the active version." if active else "No version is active yet."
        return render_diff_html(diff_bundles(active.definition, obj.definition))

    def get_urls(self):
        return [*version_urls(self), *super().get_urls()]

    # --- a new draft --------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        roles = scoped_choices(Role, request.user)
        if request.method == "POST":
            form = NewVersionForm(request.POST, roles=roles)
            if form.is_valid():
                role = form.cleaned_data["role"]
                if not can_operate_tenant(request.user, role.tenant):
                    raise PermissionDenied
                try:
                    version = create_role_version(
                        role=role,
                        definition=form.cleaned_data["definition"],
                        change_note=form.cleaned_data["change_note"],
                        actor=Actor.for_user(request.user),
                    )
                except ValidationError as exc:
                    form.add_error("definition", exc)
                else:
                    self.message_user(
                        request,
                        f"Saved draft {version}. Run its golden cases, then ask for its "
                        "publication.",
                        messages.SUCCESS,
                    )
                    return redirect("admin:roles_roleversion_change", version.pk)
        else:
            form = NewVersionForm(initial=self._initial(request, roles), roles=roles)
        return self._render_add_form(request, form)

    def _initial(self, request, roles) -> dict:
        """Start from the role's latest version when the page is opened from a role."""
        role = roles.filter(pk=request.GET.get("role") or None).first()
        empty = {**BUNDLE_DEFAULTS, "steps": []}
        if role is None:
            return {"definition": empty}
        latest = role.versions.order_by("-number").first()
        return {"role": role, "definition": latest.definition if latest else empty}

    def _render_add_form(self, request, form):
        return render_form_page(
            self,
            request,
            form,
            title="New role version",
            fields=["role", "definition", "change_note"],
            tools=sorted(settings.DESK_TOOLS),
            step_kinds=STEP_KINDS,
            categories=CATEGORIES,
        )

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["may_operate"] = can_operate_tenant(request.user, obj.tenant)
            context["pending"] = obj.publications.filter(status="pending").first()
        return super().render_change_form(request, context, add, change, form_url, obj)


@admin.register(Publication)
class PublicationAdmin(TenantScopedAdmin, admin.ModelAdmin):
    """Publication requests; each one's page is where the second operator decides it."""

    add_access = change_access = delete_access = None
    list_display = ("__str__", "tenant", "status", "override", "requested_by", "requested_at")
    list_filter = ("status", "tenant")
    list_select_related = ("tenant", "version__role", "requested_by")
    ordering = ("-requested_at",)
    show_full_result_count = False

    @admin.display(description="override", boolean=True)
    def override(self, obj):
        return obj.is_override

    def change_view(self, request, object_id, form_url="", extra_context=None):
        publication = self.get_object(request, unquote(object_id))
        if publication is None:
            raise Http404("No publication with this id.")
        if not self.has_view_permission(request, publication):
            raise PermissionDenied
        return publication_view(self, request, publication)


# Golden cases and suite runs: their own module, registered with the site on import.
from roles import admin_golden  # noqa: E402, F401
