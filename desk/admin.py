"""Runs and the outbox in the admin: start a run, follow its timeline and service level,
cancel it.

Also the platform's own tables, not a tenant's: model prices and django-q2's admin.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django_q.models import Failure, OrmQ, Schedule, Success
from simple_history.admin import SimpleHistoryAdmin

from audit.services import Actor
from desk import health, search
from desk.engine import step_definition
from desk.forms import StartRunForm
from desk.models import ModelPrice, OutboxAttempt, OutboxMessage, Run, Sweep, WorkerHeartbeat
from desk.selectors import SERVICE_LEVELS, run_audit_events, run_steps, runs_at_service_level
from desk.services import (
    RunError,
    cancel_run,
    forget_worker,
    set_model_price,
    settle_outbox_message,
    sla_state,
    start_run,
)
from desk.services.outbox import next_attempt_at
from roles.models import Role, RoleVersion
from tenants.admin_pagination import BigTableAdmin
from tenants.admin_scoping import (
    TenantScopedAdmin,
    confirm_with_reason,
    dump_json,
    pretty_json,
    render_form_page,
    scoped_choices,
)
from tenants.models import Tenant
from tenants.permissions import can_audit_tenant, can_operate_tenant
from tenants.scoping import is_platform_staff, scope_to_user


def human_duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s"


def run_link(run_id: int | None, label: str = ""):
    if not run_id:
        return "—"
    url = reverse("admin:desk_run_change", args=[run_id])
    return format_html('<a href="{}">{}</a>', url, label or f"Run #{run_id}")


SLA_LABELS = {"on_track": "On track", "at_risk": "At risk", "breached": "Breached"}


class ServiceLevelFilter(admin.SimpleListFilter):
    """Open runs at risk of missing, or past, their role's target turnaround."""

    title = "service level"
    parameter_name = "service_level"

    def lookups(self, request, model_admin):
        return [(level, SLA_LABELS[level]) for level in SERVICE_LEVELS]

    def queryset(self, request, queryset):
        if self.value() in SERVICE_LEVELS:
            return runs_at_service_level(queryset, self.value(), now=timezone.now())
        return queryset


class RoleVersionListFilter(admin.RelatedFieldListFilter):
    """Runs by role version: the versions of the roles the user can see (of the role chosen
    in the role filter, if any), newest first, named in one query; the value asked for
    always applies, even when it is not offered (another tenant's version shows nothing)."""

    max_choices = 100

    def field_choices(self, field, request, model_admin):
        versions = scope_to_user(RoleVersion.objects.all(), request.user).select_related("role")
        role_id = request.GET.get("role__id__exact", "")
        if role_id.isdigit():
            versions = versions.filter(role_id=role_id)
        versions = versions.order_by("role__name", "role_id", "-number")[: self.max_choices]
        return [(version.pk, f"{version.role.name} · v{version.number}") for version in versions]

    def has_output(self):
        return bool(self.used_parameters) or super().has_output()


@admin.register(Run)
class RunAdmin(BigTableAdmin, admin.ModelAdmin):
    change_access = delete_access = None  # a run changes through its steps, not by hand
    add_form_template = "admin/desk/run/start_run.html"
    actions = ("cancel_runs",)
    list_display = (
        "__str__",
        "tenant",
        "role",
        "version",
        "status_badge",
        "service_level",
        "via",
        "starter",
        "created_at",
        "finished_at",
        "tokens",
        "cost_display",
    )
    list_filter = (
        "status",
        ServiceLevelFilter,
        "role",
        ("role_version", RoleVersionListFilter),
        "tenant",
        "via",
        "created_at",
    )
    list_select_related = ("tenant", "role__tenant", "role_version")
    # One indexed text per run (desk.search): the client's e-mail and name, the subject,
    # the body, the role and who started it; searched by get_search_results.
    search_fields = ("search_text",)
    search_help_text = "A client's e-mail or name, a subject, a reference, a role, who started it."
    ordering = ("-created_at",)
    fieldsets = (
        (None, {"fields": ("tenant", "role", "version", "status", "error")}),
        ("Input", {"fields": ("input_pretty",)}),
        ("Started", {"fields": ("via", "starter", "api_key", "idempotency_key")}),
        (
            "Timing and usage",
            {
                "fields": (
                    "created_at",
                    "started_at",
                    "finished_at",
                    "prompt_tokens",
                    "completion_tokens",
                    "cost_display",
                )
            },
        ),
    )
    readonly_fields = (
        "tenant",
        "role",
        "version",
        "status",
        "error",
        "input_pretty",
        "via",
        "starter",
        "api_key",
        "idempotency_key",
        "created_at",
        "started_at",
        "finished_at",
        "prompt_tokens",
        "completion_tokens",
        "cost_display",
    )

    def get_search_results(self, request, queryset, search_term):
        return search.matching_runs(queryset, search_term), False

    def get_queryset(self, request):
        # The run's page reads its tenant, role (named with its tenant's slug) and version.
        return (
            super().get_queryset(request).select_related("tenant", "role__tenant", "role_version")
        )

    @admin.display(description="version", ordering="role_version__number")
    def version(self, obj):
        url = reverse("admin:roles_roleversion_change", args=[obj.role_version_id])
        return format_html('<a href="{}">v{}</a>', url, obj.role_version.number)

    @admin.display(description="started by", ordering="started_by_label")
    def starter(self, obj):
        return obj.started_by_label

    @admin.display(description="tokens")
    def tokens(self, obj):
        return obj.total_tokens

    @admin.display(description="cost", ordering="cost")
    def cost_display(self, obj):
        return f"{obj.cost:.4f}"

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return format_html(
            '<span class="desk-badge {}">{}</span>', obj.status, obj.get_status_display()
        )

    @admin.display(description="service level")
    def service_level(self, obj):
        state = sla_state(obj, now=timezone.now())
        if state not in SLA_LABELS:
            return "—"  # finished: no longer measured
        return format_html('<span class="desk-sla {}">{}</span>', state, SLA_LABELS[state])

    @admin.display(description="input")
    def input_pretty(self, obj):
        return pretty_json(obj.input)

    # --- the run's page -----------------------------------------------------------------

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context.update(self._timeline_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _timeline_context(self, request, run: Run) -> dict:
        steps = list(run_steps(run))
        for step in steps:
            step.definition = step_definition(run, step)
            step.args_json = dump_json(step.rendered.get("args")) if step.kind == "tool" else ""
            step.output_json = dump_json(step.output) if step.output is not None else ""
            step.approved_json = (
                dump_json(step.approved_payload) if step.approved_payload is not None else ""
            )
            if step.started_at and step.finished_at:
                step.duration = human_duration(step.finished_at - step.started_at)
        may_audit = can_audit_tenant(request.user, run.tenant)
        events = list(run_audit_events(run)) if may_audit else []
        for event in events:
            event.data_json = dump_json(event.data)
        return {
            "title": f"{run} · {run.get_status_display()}",
            "subtitle": None,
            "steps": steps,
            "approval_requests": run.approval_requests.select_related("step").order_by(
                "created_at"
            ),
            "may_audit": may_audit,
            "audit_events": events,
            "may_cancel": run.is_open and can_operate_tenant(request.user, run.tenant),
            "may_make_golden": run.status == Run.Status.COMPLETED
            and can_operate_tenant(request.user, run.tenant),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }

    # --- start a run --------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        tenants = scoped_choices(Tenant, request.user)
        roles = scoped_choices(Role, request.user)
        if request.method == "POST":
            form = StartRunForm(request.POST, tenants=tenants, roles=roles)
            if form.is_valid():
                tenant = form.cleaned_data["tenant"]
                if not can_operate_tenant(request.user, tenant):
                    raise PermissionDenied
                try:
                    run = start_run(
                        tenant=tenant,
                        role=form.cleaned_data["role"],
                        input=form.cleaned_data["input"],
                        actor=Actor.for_user(request.user),
                        via=Run.Via.ADMIN,
                    )
                except RunError as exc:
                    form.add_run_error(exc)
                else:
                    self.message_user(request, f"Started {run}.", messages.SUCCESS)
                    return redirect("admin:desk_run_change", run.pk)
            chosen_role = form.cleaned_data.get("role") if hasattr(form, "cleaned_data") else None
        else:
            chosen_role = roles.filter(pk=request.GET.get("role") or None).first()
            form = StartRunForm(initial=self._initial(chosen_role), tenants=tenants, roles=roles)
        return self._render_start_form(request, form, chosen_role)

    def _initial(self, role: Role | None) -> dict:
        if role is None:
            return {"input": {}}
        properties = role.active_input_schema.get("properties", {})
        return {"tenant": role.tenant, "role": role, "input": dict.fromkeys(properties, "")}

    def _render_start_form(self, request, form, role):
        return render_form_page(
            self,
            request,
            form,
            title="Start a run",
            fields=["tenant", "role", "input"],
            chosen_role=role,
            input_schema_json=dump_json(role.active_input_schema) if role else "",
        )

    # --- cancel -------------------------------------------------------------------------

    @admin.action(description="Cancel the selected runs…", permissions=["operate"])
    def cancel_runs(self, request, queryset):
        actor = Actor.for_user(request.user)

        def cancel(run: Run, reason: str) -> None:
            if not can_operate_tenant(request.user, run.tenant):
                self.message_user(request, f"{run}: you may not cancel its runs.", messages.ERROR)
                return
            try:
                cancel_run(run=run, actor=actor, reason=reason)
            except RunError as exc:
                self.message_user(request, f"{run} was not cancelled: {exc}", messages.WARNING)
            else:
                self.message_user(request, f"Cancelled {run}.", messages.SUCCESS)

        return confirm_with_reason(
            self,
            request,
            queryset.select_related("tenant", "role"),
            action="cancel_runs",
            title="Cancel runs",
            question="These runs will stop; their pending approval requests are closed.",
            label="Why are they cancelled?",
            submit="Cancel the runs",
            apply=cancel,
        )


class OutboxAttemptInline(TenantScopedAdmin, admin.TabularInline):
    """Every hand-over of the message: when, how it ended, what the receiver answered."""

    model = OutboxAttempt
    view_access = "audit"
    add_access = change_access = delete_access = None
    extra = 0
    can_delete = False
    ordering = ("number",)
    fields = (
        "number",
        "started_at",
        "finished_at",
        "succeeded",
        "status_code",
        "error",
        "response_excerpt",
        "worker",
    )
    readonly_fields = fields
    verbose_name = "delivery attempt"


@admin.register(OutboxMessage)
class OutboxMessageAdmin(BigTableAdmin, admin.ModelAdmin):
    """Side effects waiting to go out, sent, failed, or uncertain (the worker handing one to
    the mail server died before it could record the outcome: a person checks and decides);
    every attempt at handing each over, below it."""

    view_access = "audit"
    add_access = change_access = delete_access = None
    actions = ("mark_delivered", "send_again")
    inlines = (OutboxAttemptInline,)
    list_display = (
        "__str__",
        "tenant",
        "run",
        "step_key",
        "channel",
        "recipient",
        "subject",
        "status",
        "attempts",
        "created_at",
        "sent_at",
    )
    list_filter = ("status", "channel", "tenant")
    list_select_related = ("tenant", "run__role", "step")
    search_fields = ("idempotency_key", "channel", "last_error")
    ordering = ("-created_at",)
    fields = (
        "tenant",
        "run",
        "step_key",
        "channel",
        "idempotency_key",
        "status",
        "attempts",
        "payload_pretty",
        "last_error",
        "created_at",
        "sending_at",
        "sending_by",
        "next_attempt",
        "sent_at",
    )
    readonly_fields = fields

    @admin.display(description="step")
    def step_key(self, obj):
        return obj.step.key if obj.step_id else "—"

    @admin.display(description="to")
    def recipient(self, obj):
        if "endpoint_id" in obj.payload:
            return f"webhook endpoint #{obj.payload['endpoint_id']}"
        return obj.payload.get("to", "")

    @admin.display(description="subject")
    def subject(self, obj):
        return obj.payload.get("subject") or obj.payload.get("type", "")

    @admin.display(description="next attempt")
    def next_attempt(self, obj):
        return next_attempt_at(obj) or "—"

    @admin.display(description="payload")
    def payload_pretty(self, obj):
        return pretty_json(obj.payload)

    def _settle(self, request, queryset, *, verdict: str, action: str, **page):
        actor = Actor.for_user(request.user)

        def settle(message: OutboxMessage, reason: str) -> None:
            if not can_operate_tenant(request.user, message.tenant):
                self.message_user(request, f"{message}: you may not settle it.", messages.ERROR)
                return
            try:
                settle_outbox_message(message=message, actor=actor, verdict=verdict, reason=reason)
            except RunError as exc:
                self.message_user(request, f"{message} was not changed: {exc}", messages.WARNING)
            else:
                self.message_user(request, f"{message}: {page['done']}", messages.SUCCESS)

        return confirm_with_reason(
            self,
            request,
            queryset.select_related("tenant"),
            action=action,
            title=page["title"],
            question=page["question"],
            label="What did you check?",
            submit=page["submit"],
            apply=settle,
        )

    @admin.action(description="Mark as delivered (after checking)…", permissions=["operate"])
    def mark_delivered(self, request, queryset):
        return self._settle(
            request,
            queryset.filter(status=OutboxMessage.Status.UNCERTAIN),
            verdict="delivered",
            action="mark_delivered",
            title="Mark messages as delivered",
            question="You checked that these messages reached their recipients (each carries "
            "an X-AgentDesk-Key header); they are recorded as sent and not sent again.",
            submit="Mark as delivered",
            done="recorded as delivered.",
        )

    @admin.action(description="Send again…", permissions=["operate"])
    def send_again(self, request, queryset):
        return self._settle(
            request,
            queryset.filter(
                status__in=(OutboxMessage.Status.UNCERTAIN, OutboxMessage.Status.FAILED)
            ),
            verdict="resend",
            action="send_again",
            title="Send messages again",
            question="You checked that these messages did not arrive; they are handed over "
            "again (to the mail server, or to the webhook receiver).",
            submit="Send again",
            done="queued to be sent again.",
        )


# --- the platform's own tables ----------------------------------------------------------------


class PlatformStaffOnly:
    """Tables that span every tenant: platform staff only, never a tenant's people.

    django-q2's tasks, schedules and failures also admit superusers (as they always have);
    tables that only flagged platform staff reach set `admits_superusers = False`.
    """

    admits_superusers = True

    def is_platform(self, request) -> bool:
        user = request.user
        if not user.is_active:
            return False
        return is_platform_staff(user) or (self.admits_superusers and user.is_superuser)

    def has_module_permission(self, request):
        return self.is_platform(request)

    def has_view_permission(self, request, obj=None):
        return self.is_platform(request)

    def has_add_permission(self, request):
        # django-q2's own admins forbid adding tasks; keep whatever they decide.
        return self.is_platform(request) and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        return self.is_platform(request)

    def has_delete_permission(self, request, obj=None):
        return self.is_platform(request)


@admin.register(ModelPrice)
class ModelPriceAdmin(PlatformStaffOnly, SimpleHistoryAdmin):
    """What each model costs; every step's cost is computed from this table when it runs
    (a change applies to calls from then on, not to the usage already counted)."""

    admits_superusers = False
    list_display = ("model", "prompt_per_million", "completion_per_million", "updated_at")
    search_fields = ("model",)
    ordering = ("model",)
    fields = ("model", "prompt_per_million", "completion_per_million", "updated_at")

    def get_readonly_fields(self, request, obj=None):
        # A price belongs to a model name; another model is another row.
        return ("model", "updated_at") if obj else ("updated_at",)

    def has_add_permission(self, request):
        return self.is_platform(request)  # not Django's model permissions

    def save_model(self, request, obj, form, change):
        saved = set_model_price(
            model=obj.model,
            prompt_per_million=obj.prompt_per_million,
            completion_per_million=obj.completion_per_million,
            actor=Actor.for_user(request.user),
        )
        obj.pk, obj.updated_at = saved.pk, saved.updated_at


for _model in (Schedule, Success, Failure, OrmQ):
    if admin.site.is_registered(_model):
        _original = type(admin.site.get_model_admin(_model))
        admin.site.unregister(_model)
        admin.site.register(
            _model,
            type(
                f"PlatformOnly{_original.__name__}",
                (PlatformStaffOnly, _original),
                {"__module__": __name__},
            ),
        )


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(PlatformStaffOnly, admin.ModelAdmin):
    """Each machine's desk_worker: whether it beats and whether its cluster makes progress
    (a probe goes through it), and why it last replaced its cluster."""

    admits_superusers = False
    actions = ("forget_workers",)
    list_display = (
        "name",
        "state",
        "host",
        "pid",
        "beat_at",
        "probe_ok_at",
        "cluster_restarts",
        "last_restart_reason",
    )
    ordering = ("name",)
    readonly_fields = [f.name for f in WorkerHeartbeat._meta.fields]

    @admin.display(description="state")
    def state(self, obj):
        check = health.worker_check(obj, now=timezone.now(), max_age=health.MAX_AGE)
        return format_html('<span class="desk-health {}">{}</span>', check.state, check.detail)

    @admin.action(description="Forget the selected workers (gone for good)…")
    def forget_workers(self, request, queryset):
        actor = Actor.for_user(request.user)

        def forget(worker: WorkerHeartbeat, reason: str) -> None:
            forget_worker(worker=worker, actor=actor, reason=reason)
            self.message_user(request, f"Worker {worker} forgotten.", messages.SUCCESS)

        return confirm_with_reason(
            self,
            request,
            queryset.filter(stopped_at__isnull=True),
            action="forget_workers",
            title="Forget workers",
            question="The health check stops waiting for these workers' heartbeats. Do this "
            "only for a machine retired without a clean stop: a worker that is merely down "
            "should be restarted instead.",
            label="Why are they gone?",
            submit="Forget them",
            apply=forget,
        )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Sweep)
class SweepAdmin(PlatformStaffOnly, admin.ModelAdmin):
    """The runtime's periodic upkeep (the reaper, overdue approvals, service levels): when
    each last succeeded, on which worker, and what it did."""

    admits_superusers = False
    list_display = ("name", "state", "succeeded_at", "claimed_by", "rounds", "last_result")
    ordering = ("name",)
    readonly_fields = [f.name for f in Sweep._meta.fields]

    @admin.display(description="state")
    def state(self, obj):
        check = health.sweep_check(obj, now=timezone.now(), max_age=health.MAX_AGE)
        return format_html('<span class="desk-health {}">{}</span>', check.state, check.detail)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
