"""Golden cases and suite runs in the admin: write, edit and retire cases, make one from a
reviewer's edit or a completed run in one click, run a version's cases and read the results.
Thin: every write is a call into roles.golden."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from audit.services import Actor
from roles import golden
from roles.evaluation import validate_expectations
from roles.models import CaseResult, GoldenCase, RoleVersion, SuiteRun
from tenants.admin_scoping import (
    PrettyJSONField,
    TenantScopedAdmin,
    TenantScopedHistoryAdmin,
    confirm_with_reason,
    username_of,
)
from tenants.permissions import can_operate_tenant
from tenants.scoping import scope_to_user

OPERATORS = ("operator",)


def golden_from_decision_button(decision) -> str:
    """A button for the review page (one form posted back to itself): it posts that form
    to the one-click view instead. Empty unless the decision can make a case."""
    if decision.verdict != "edit" or decision.edited_payload is None or decision.dismissed_at:
        return ""
    url = reverse("admin:roles_goldencase_from_decision", args=[decision.pk])
    return format_html(
        '<button type="submit" formaction="{}" formmethod="post" name="golden" value="1">'
        "Make a golden case</button>",
        url,
    )


class ActiveFilter(admin.SimpleListFilter):
    title = "in the suite"
    parameter_name = "active"

    def lookups(self, request, model_admin):
        return [("yes", "Active"), ("no", "Retired")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(retired_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(retired_at__isnull=False)
        return queryset


class GoldenCaseForm(forms.ModelForm):
    input = PrettyJSONField(help_text="The run input, as a run of the role receives it.")
    expectations = PrettyJSONField(
        required=False,
        help_text="output_schema, fields [{path, op: equals|contains|matches, value}], "
        "tools_called, tools_not_called, gates_hit, max_tokens, max_cost (text), rubric.",
    )

    class Meta:
        model = GoldenCase
        fields = ("role", "name", "input", "expectations")

    def clean_expectations(self):
        expectations = self.cleaned_data.get("expectations")
        if expectations in (None, ""):
            expectations = {}
        validate_expectations(expectations)
        return expectations

    def clean(self):
        cleaned = super().clean()
        role = cleaned.get("role") or getattr(self.instance, "role", None)
        if role is not None:
            self.instance.tenant_id = role.tenant_id
        return cleaned


@admin.register(GoldenCase)
class GoldenCaseAdmin(TenantScopedHistoryAdmin):
    form = GoldenCaseForm
    delete_access = None  # retired, never deleted: the gate must see a case go away
    actions = ("retire_cases",)
    list_display = ("name", "role", "tenant", "source", "state", "created_by_name", "created_at")
    list_filter = (ActiveFilter, "source", "role", "tenant")
    list_select_related = ("role", "tenant", "created_by")
    search_fields = ("name", "role__name", "role__slug")
    ordering = ("role__name", "name")

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": ("role", "name", "input", "expectations")})]
        return [
            (None, {"fields": ("role", "tenant", "name", "state")}),
            ("The case", {"fields": ("input", "expectations")}),
            ("Where it came from", {"fields": ("source", "provenance", "created_by_name")}),
            ("Latest results", {"fields": ("latest_results",)}),
        ]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        fields = ["role", "tenant", "state", "source", "provenance", "created_by_name"]
        fields.append("latest_results")
        if not self.has_change_permission(request, obj):
            fields += ["name", "input", "expectations"]
        return fields

    def has_change_permission(self, request, obj=None):
        if obj is not None and not obj.is_active:
            return False  # a retired case is read-only
        return super().has_change_permission(request, obj)

    @admin.display(description="state")
    def state(self, obj):
        if obj.is_active:
            return "Active"
        return f"Retired {obj.retired_at:%Y-%m-%d %H:%M} by {username_of(obj.retired_by)}"

    @admin.display(description="created by")
    def created_by_name(self, obj):
        return username_of(obj.created_by)

    @admin.display(description="provenance")
    def provenance(self, obj):
        parts = []
        if obj.source_decision_id:
            request_id = obj.source_decision.request_id
            url = reverse("admin:approvals_approvalrequest_change", args=[request_id])
            parts.append(format_html('<a href="{}">decision on approval #{}</a>', url, request_id))
        if obj.source_run_id:
            url = reverse("admin:desk_run_change", args=[obj.source_run_id])
            parts.append(format_html('<a href="{}">run #{}</a>', url, obj.source_run_id))
        return format_html_join(" · ", "{}", ((p,) for p in parts)) if parts else "—"

    @admin.display(description="results")
    def latest_results(self, obj):
        results = obj.results.select_related("suite_run__version").order_by("-created_at", "-pk")[
            :10
        ]
        if not results:
            return "No suite run has evaluated this case yet."
        return format_html(
            '<table class="desk-table"><thead><tr><th>suite run</th><th>version</th>'
            "<th>status</th><th>failed checks</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join(
                "",
                '<tr><td><a href="{}">#{}</a></td><td>v{}</td><td>{}</td><td>{}</td></tr>',
                (
                    (
                        reverse("admin:roles_suiterun_change", args=[r.suite_run_id]),
                        r.suite_run_id,
                        r.suite_run.version.number,
                        r.get_status_display(),
                        failed_checks(r),
                    )
                    for r in results
                ),
            ),
        )

    def save_model(self, request, obj, form, change):
        actor = Actor.for_user(request.user)
        if change:
            changes = {name: form.cleaned_data[name] for name in form.changed_data}
            changes.pop("role", None)
            self.call_service(
                form, lambda: golden.update_case(case=obj, actor=actor, changes=changes)
            )
            return
        case = self.call_service(
            form,
            lambda: golden.create_case(
                role=form.cleaned_data["role"],
                name=form.cleaned_data["name"],
                input=form.cleaned_data["input"],
                expectations=form.cleaned_data["expectations"],
                actor=actor,
            ),
        )
        obj.pk, obj.created_at = case.pk, case.created_at

    # --- retire -----------------------------------------------------------------------

    @admin.action(description="Retire the selected golden cases…", permissions=["operate"])
    def retire_cases(self, request, queryset):
        queryset = scope_to_user(
            queryset.filter(retired_at__isnull=True), request.user, kinds=OPERATORS
        )

        def apply(case, reason):
            golden.retire_case(case=case, actor=Actor.for_user(request.user), reason=reason)
            self.message_user(request, f"Retired {case.name}.", messages.SUCCESS)

        return confirm_with_reason(
            self,
            request,
            queryset,
            action="retire_cases",
            title="Retire golden cases",
            question="Retired cases leave the suite; a baseline that had them shows them as "
            "missing until the role's active version passes without them.",
            label="Why",
            submit="Retire",
            apply=apply,
        )

    # --- one click from a decision or a run ---------------------------------------------

    def get_urls(self):
        views = [
            path(
                "from-decision/<int:decision_id>/",
                self.admin_site.admin_view(require_POST(self.from_decision_view)),
                name="roles_goldencase_from_decision",
            ),
            path(
                "from-run/<int:run_id>/",
                self.admin_site.admin_view(require_POST(self.from_run_view)),
                name="roles_goldencase_from_run",
            ),
        ]
        return [*views, *super().get_urls()]

    def _made(self, request, make, back: str):
        try:
            case = make(Actor.for_user(request.user))
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
            return redirect(back)
        self.message_user(
            request,
            f"Made the golden case “{case.name}”; check its expectations.",
            messages.SUCCESS,
        )
        return redirect("admin:roles_goldencase_change", case.pk)

    def from_decision_view(self, request, decision_id):
        from approvals.models import Decision

        decisions = scope_to_user(Decision.objects.all(), request.user)
        decision = decisions.select_related("request").filter(pk=decision_id).first()
        if decision is None:
            raise Http404("No decision with this id.")
        if not can_operate_tenant(request.user, decision.tenant):
            raise PermissionDenied
        back = reverse("admin:approvals_approvalrequest_change", args=[decision.request_id])
        return self._made(request, lambda actor: golden.case_from_decision(decision, actor), back)

    def from_run_view(self, request, run_id):
        from desk.models import Run

        run = scope_to_user(Run.objects.all(), request.user).filter(pk=run_id).first()
        if run is None:
            raise Http404("No run with this id.")
        if not can_operate_tenant(request.user, run.tenant):
            raise PermissionDenied
        back = reverse("admin:desk_run_change", args=[run.pk])
        return self._made(request, lambda actor: golden.case_from_run(run, actor), back)


def failed_checks(result: CaseResult) -> str:
    failed = [c["check"] for c in result.checks if not c["ok"]]
    return "; ".join(failed) or (result.error or "—")


class CaseResultInline(TenantScopedAdmin, admin.TabularInline):
    model = CaseResult
    add_access = change_access = delete_access = None
    fields = (
        "case_link",
        "status",
        "checks_table",
        "tools",
        "gates_hit",
        "tokens",
        "cost",
        "error",
    )
    readonly_fields = fields
    ordering = ("case__name",)
    extra = 0
    can_delete = False
    verbose_name_plural = "results"

    @admin.display(description="case")
    def case_link(self, obj):
        url = reverse("admin:roles_goldencase_change", args=[obj.case_id])
        return format_html('<a href="{}">{}</a>', url, obj.case.name)

    @admin.display(description="checks")
    def checks_table(self, obj):
        return format_html_join(
            "",
            '<div class="{}">{} {}{}</div>',
            (
                (
                    "" if c["ok"] else "desk-error",
                    "✓" if c["ok"] else "✗",
                    c["check"],
                    f" — {c['detail']}" if c.get("detail") else "",
                )
                for c in obj.checks
            ),
        )

    @admin.display(description="tools called")
    def tools(self, obj):
        return ", ".join(
            f"{c['tool']}{'' if c.get('executed') else ' (simulated)'}" for c in obj.tools_called
        )


@admin.register(SuiteRun)
class SuiteRunAdmin(TenantScopedAdmin, admin.ModelAdmin):
    add_access = change_access = delete_access = None  # started from a version, read here
    inlines = (CaseResultInline,)
    list_display = (
        "__str__",
        "role",
        "tenant",
        "status",
        "progress",
        "is_baseline",
        "provider",
        "started_by_name",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "is_baseline", "role", "tenant")
    list_select_related = ("role", "tenant", "version", "started_by")
    ordering = ("-created_at",)
    fields = (
        "role",
        "version_link",
        "tenant",
        "status",
        "progress",
        "is_baseline",
        "bundle_digest",
        "provider",
        "error",
        "started_by_name",
        "created_at",
        "finished_at",
        "gate",
    )
    readonly_fields = fields

    @admin.display(description="progress")
    def progress(self, obj):
        return f"{obj.cases_done} of {obj.cases_total}"

    @admin.display(description="started by")
    def started_by_name(self, obj):
        return username_of(obj.started_by)

    @admin.display(description="version")
    def version_link(self, obj):
        url = reverse("admin:roles_roleversion_change", args=[obj.version_id])
        return format_html('<a href="{}">{}</a>', url, obj.version)

    @admin.display(description="regression gate of this version now")
    def gate(self, obj):
        report = golden.regression_gate(obj.version)
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r.case, r.baseline or "—", r.draft or "—", r.verdict) for r in report.rows),
        )
        problems = format_html_join("", "<li>{}</li>", ((p,) for p in report.problems))
        return format_html(
            "<p><strong>{}</strong></p><ul>{}</ul>"
            '<table class="desk-table"><thead><tr><th>case</th><th>baseline</th><th>this run</th>'
            "<th>verdict</th></tr></thead><tbody>{}</tbody></table>",
            "Passes" if report.ok else "Refuses publication",
            problems,
            rows,
        )

    # --- "Run the golden cases" on a version ---------------------------------------------

    def get_urls(self):
        start = path(
            "start/<int:version_id>/",
            self.admin_site.admin_view(self.start_view),
            name="roles_suiterun_start",
        )
        return [start, *super().get_urls()]

    def start_view(self, request, version_id):
        versions = scope_to_user(RoleVersion.objects.select_related("role"), request.user)
        version = versions.filter(pk=version_id).first()
        if version is None:
            raise Http404("No role version with this id.")
        if not can_operate_tenant(request.user, version.tenant):
            raise PermissionDenied
        back = reverse("admin:roles_roleversion_change", args=[version.pk])
        if request.method == "POST":
            try:
                suite = golden.start_suite(version, Actor.for_user(request.user))
            except ValidationError as exc:
                self.message_user(request, " ".join(exc.messages), messages.ERROR)
                return redirect(back)
            self.message_user(
                request,
                f"Suite run #{suite.pk} of {version} is queued: {suite.cases_total} case(s).",
                messages.SUCCESS,
            )
            return redirect("admin:roles_suiterun_change", suite.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Run the golden cases of {version}",
            "opts": self.opts,
            "version": version,
            "cases": golden.active_cases(version.role_id),
            "back": back,
        }
        return TemplateResponse(request, "admin/roles/suiterun/start.html", context)
