"""The reviewer's queue and review page, escalations and approval policies."""

from __future__ import annotations

import copy

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timesince import timesince, timeuntil

from approvals.forms import ReviewForm
from approvals.models import (
    ApprovalPolicy,
    ApprovalRequest,
    Decision,
    Delegation,
    Escalation,
    PolicyChange,
    ReviewerGroup,
)
from approvals.permissions import barred_reason, can_resolve_escalation
from approvals.selectors import (
    decided_by,
    earlier_rounds,
    proposal_summary,
    quorum_missing,
    waiting_for,
)
from approvals.services import (
    POLICY_FIELDS,
    DecisionError,
    approve_policy_change,
    assign_request,
    create_delegation,
    decide,
    outcomes_for,
    propose_policy_change,
    reject_policy_change,
    resolve_escalation,
    revoke_delegation,
    save_reviewer_group,
)
from audit.services import Actor
from desk.engine import step_definition
from desk.selectors import steps_before
from roles.admin_golden import golden_from_decision_button
from roles.workflow import CATEGORIES
from tenants.admin_pagination import BigTableAdmin
from tenants.admin_scoping import (
    TenantScopedAdmin,
    TenantScopedHistoryAdmin,
    confirm_with_reason,
    dump_json,
    username_of,
)
from tenants.permissions import can_operate_tenant, can_review_tenant
from tenants.safe_json import SafeJSONField
from tenants.scoping import member_tenant_ids, scope_to_user, tenants_for_user

APPROVING = (Decision.Verdict.APPROVE, Decision.Verdict.EDIT)


def run_link(run):
    url = reverse("admin:desk_run_change", args=[run.pk])
    return format_html('<a href="{}">{}</a>', url, run)


def when(value) -> str:
    return formats.localize(timezone.localtime(value)) if value else "—"


def display_items(mapping) -> list[dict]:
    """A mapping as labelled items: text stays text (line breaks kept), the rest is JSON."""
    if not isinstance(mapping, dict):
        return [{"label": "value", "json": dump_json(mapping)}]
    items = []
    for key, value in mapping.items():
        label = str(key).replace("_", " ")
        if isinstance(value, str):
            items.append({"label": label, "text": value})
        else:
            items.append({"label": label, "json": dump_json(value)})
    return items


def proposal_display(proposal) -> dict:
    """What the reviewer reads: a draft, a tool call, a checkpoint, or plain JSON."""
    if isinstance(proposal, dict) and isinstance(proposal.get("draft"), dict):
        return {"kind": "draft", "items": display_items(proposal["draft"])}
    if isinstance(proposal, dict) and "tool" in proposal:
        return {
            "kind": "tool",
            "tool": proposal["tool"],
            "items": display_items(proposal.get("args") or {}),
        }
    if isinstance(proposal, dict) and "instructions" in proposal:
        return {
            "kind": "checkpoint",
            "instructions": proposal["instructions"],
            "items": display_items(proposal.get("outputs") or {}),
        }
    return {"kind": "json", "json": dump_json(proposal)}


def relative_due(approval: ApprovalRequest) -> str:
    """ "in 3 hours (14:05 UTC)" or "overdue by 2 hours (…)", in the reader's time zone."""
    local = timezone.localtime(approval.due_at)
    stamp = local.strftime("%d %b %H:%M %Z")
    if not approval.is_pending:
        return stamp
    now = timezone.now()
    if approval.due_at < now:
        return format_html(
            '<span class="desk-overdue">overdue by {} ({})</span>',
            timesince(approval.due_at, now, depth=1),
            stamp,
        )
    return f"in {timeuntil(approval.due_at, now, depth=1)} ({stamp})"


class InboxFilter(admin.SimpleListFilter):
    """The queue opens on what waits for me: assigned to me, my groups or whoever delegated
    to me, or to nobody; not decided by me yet."""

    title = "inbox"
    parameter_name = "inbox"
    MINE, DECIDED, ALL = "me", "decided", "all"

    def lookups(self, request, model_admin):
        return [
            (self.MINE, "Waiting for me"),
            (self.DECIDED, "I decided, still open"),
            (self.ALL, "Everything"),
        ]

    def current(self) -> str:
        return self.value() or self.MINE

    def queryset(self, request, queryset):
        if self.current() == self.MINE:
            return waiting_for(queryset, request.user)
        if self.current() == self.DECIDED:
            return decided_by(queryset, request.user)
        return queryset

    def choices(self, changelist):
        for value, label in self.lookup_choices:
            yield {
                "selected": self.current() == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }


class QueueStatusFilter(admin.SimpleListFilter):
    """The queue opens on what is waiting; other statuses are one click away."""

    title = "status"
    parameter_name = "status"
    ALL = "all"

    def lookups(self, request, model_admin):
        return [*ApprovalRequest.Status.choices, (self.ALL, "All")]

    def current(self) -> str:
        return self.value() or ApprovalRequest.Status.PENDING

    def queryset(self, request, queryset):
        if self.current() == self.ALL:
            return queryset
        return queryset.filter(status=self.current())

    def choices(self, changelist):
        for value, label in self.lookup_choices:
            yield {
                "selected": self.current() == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }


class CategoryFilter(admin.SimpleListFilter):
    """Requests by category: the categories the user's tenants have policies for (a small
    table), and the one asked for; not the distinct categories of every request ever made.
    A category without a policy (gated all the same) is one search away."""

    title = "category"
    parameter_name = "category"

    def lookups(self, request, model_admin):
        policies = scope_to_user(ApprovalPolicy.objects.all(), request.user)
        categories = set(policies.values_list("category", flat=True))
        if self.value():
            categories.add(self.value())
        return [(category, category) for category in sorted(categories)]

    def queryset(self, request, queryset):
        return queryset.filter(category=self.value()) if self.value() else queryset


class DecisionInline(TenantScopedAdmin, admin.TabularInline):
    model = Decision
    add_access = change_access = delete_access = None
    fields = ("reviewer_name", "verdict", "comment", "changes", "created_at")
    readonly_fields = fields
    ordering = ("created_at",)
    extra = 0
    can_delete = False
    verbose_name_plural = "decisions so far"

    @admin.display(description="reviewer")
    def reviewer_name(self, obj):
        return username_of(obj.reviewer)

    @admin.display(description="changes to the proposal")
    def changes(self, obj):
        if not obj.diff:
            return "—"
        return format_html('<pre class="desk-json">{}</pre>', obj.diff)

    def get_fields(self, request, obj=None):
        # Operators may turn a reviewer's edit into a golden case of the role, in one click.
        if obj is not None and can_operate_tenant(request.user, obj.tenant):
            return (*self.fields, "golden_case")
        return self.fields

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.display(description="golden case")
    def golden_case(self, obj):
        return golden_from_decision_button(obj) or "—"


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(BigTableAdmin, admin.ModelAdmin):
    change_access = "review"  # "changing" a request is deciding it, on the review page
    add_access = delete_access = None
    inlines = (DecisionInline,)
    actions = ("claim_requests", "approve_in_bulk")
    list_display = (
        "__str__",
        "what",
        "tenant",
        "run_column",
        "step_key",
        "approvals",
        "due",
        "assigned",
        "status",
    )
    list_filter = (InboxFilter, QueueStatusFilter, CategoryFilter, "tenant")
    search_fields = ("step__key", "category", "run__role__name")
    ordering = ("due_at", "pk")  # due soonest first
    fieldsets = (
        (
            None,
            {
                "fields": (
                    ("status", "approvals"),
                    ("tenant", "run_column"),
                    ("step_key", "category"),
                    ("due", "round_number"),
                    ("created_at", "decided_at"),
                )
            },
        ),
    )
    readonly_fields = (
        "status",
        "approvals",
        "tenant",
        "run_column",
        "step_key",
        "category",
        "due",
        "round_number",
        "created_at",
        "decided_at",
    )

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related(
                "tenant", "run__role", "run__role_version", "step", "assignee", "assigned_group"
            )
            # Counted per row of the page (a correlated subquery), not by grouping every
            # request of the queue with its decisions before the page is cut.
            .annotate(
                approvals_given=Coalesce(
                    Subquery(
                        Decision.objects.filter(
                            request=OuterRef("pk"),
                            verdict__in=APPROVING,
                            dismissed_at__isnull=True,
                            version=OuterRef("version"),
                        )
                        .order_by()
                        .values("request")
                        .annotate(n=Count("pk"))
                        .values("n")[:1]
                    ),
                    0,
                )
            )
        )

    @admin.display(description="run", ordering="run_id")
    def run_column(self, obj):
        return run_link(obj.run)

    @admin.display(description="step", ordering="step__key")
    def step_key(self, obj):
        return obj.step.key

    @admin.display(description="approvals")
    def approvals(self, obj):
        return f"{obj.approvals_given} of {obj.required_approvals}"

    @admin.display(description="round")
    def round_number(self, obj):
        return f"{obj.round} of {obj.rule.get('max_rounds', 3)}" if obj.step.kind == "llm" else "—"

    @admin.display(description="due", ordering="due_at")
    def due(self, obj):
        return relative_due(obj)

    @admin.display(description="what and for whom")
    def what(self, obj):
        return proposal_summary(obj)

    @admin.display(description="assigned to")
    def assigned(self, obj):
        if obj.assignee_id:
            return username_of(obj.assignee)
        return str(obj.assigned_group) if obj.assigned_group_id else "any reviewer"

    def has_review_permission(self, request, obj=None):
        """For the queue's actions: deciding is for the tenant's reviewers."""
        return self.has_change_permission(request, obj)

    @admin.action(
        description="Claim the selected requests (assign them to me)", permissions=["review"]
    )
    def claim_requests(self, request, queryset):
        for approval in queryset:
            try:
                assign_request(
                    request=approval, actor=Actor.for_user(request.user), assignee=request.user
                )
            except DecisionError as exc:
                self.message_user(request, f"{approval}: {exc}", messages.WARNING)
            else:
                self.message_user(request, f"{approval} is yours.", messages.SUCCESS)

    @admin.action(description="Approve the selected requests…", permissions=["review"])
    def approve_in_bulk(self, request, queryset):
        """Only where the request's policy allows bulk approval; each decision is recorded
        as if made alone (decide, four eyes and all)."""

        def approve(approval, _reason):
            if not approval.rule.get("allow_bulk"):
                self.message_user(
                    request,
                    f"{approval}: its policy does not allow approving in bulk; open it.",
                    messages.WARNING,
                )
                return
            try:
                decide(
                    request=approval,
                    reviewer=request.user,
                    verdict=Decision.Verdict.APPROVE,
                    version=approval.version,
                    via="bulk",
                )
            except DecisionError as exc:
                self.message_user(request, f"{approval}: {exc}", messages.WARNING)
            else:
                self.message_user(request, f"Approved {approval}.", messages.SUCCESS)

        return confirm_with_reason(
            self,
            request,
            queryset.select_related("run", "step"),
            action="approve_in_bulk",
            title="Approve in bulk",
            question=(
                "Approve each of these requests as it stands? Requests whose policy does not "
                "allow bulk approval are left for you to open one by one."
            ),
            label=None,
            submit="Approve",
            apply=approve,
        )

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(
            request, {"title": "Approval requests", **(extra_context or {})}
        )

    def get_inlines(self, request, obj):
        # The decisions table appears once there is a decision to show.
        return self.inlines if obj is not None and self._decisions(request, obj) else ()

    def _decisions(self, request, approval) -> list[Decision]:
        """The request's decisions, oldest first, read once a request (whether the page
        shows them, and the user's own)."""
        cache = request.__dict__.setdefault("desk_decisions", {})
        if approval.pk not in cache:
            cache[approval.pk] = list(approval.decisions.order_by("created_at", "pk"))
        return cache[approval.pk]

    # --- the review page ----------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method != "POST":
            return super().change_view(request, object_id, form_url, extra_context)
        approval = self.get_object(request, unquote(object_id))
        if approval is None:
            raise Http404("No approval request with this id.")
        if not self.has_change_permission(request, approval):
            raise PermissionDenied
        if "assign" in request.POST:  # the Assign button, not a verdict
            return self._assign(request, approval)
        form = ReviewForm(request.POST, request=approval)
        if form.is_valid():
            verdict = form.cleaned_data["verdict"]
            try:
                decide(
                    request=approval,
                    reviewer=request.user,
                    verdict=verdict,
                    comment=form.cleaned_data["comment"],
                    edited_payload=form.cleaned_data["edited_payload"],
                    version=form.cleaned_data["version"],
                )
            except DecisionError as exc:
                self._show_refusal(form, exc)
            else:
                approval.refresh_from_db()
                self.message_user(
                    request, self._decided_message(approval, verdict), messages.SUCCESS
                )
                return redirect("admin:approvals_approvalrequest_changelist")
        return self._render_review(request, object_id, form)

    def _assign(self, request, approval):
        choice = request.POST.get("assign_to", "")
        assignee = group = None
        kind, _, key = choice.partition(":")
        if kind == "me":
            assignee = request.user
        elif kind == "user" and key.isdigit():
            assignee = tenant_people(request.user, kind="reviewer").filter(pk=key).first()
        elif kind == "group" and key.isdigit():
            group = ReviewerGroup.objects.filter(tenant=approval.tenant, pk=key).first()
        if choice and assignee is None and group is None:
            self.message_user(request, "Choose someone from the list.", messages.ERROR)
        else:
            try:
                assign_request(
                    request=approval,
                    actor=Actor.for_user(request.user),
                    assignee=assignee,
                    group=group,
                )
            except DecisionError as exc:
                self.message_user(request, f"Not assigned: {exc}", messages.ERROR)
            else:
                who = assignee or group or "any reviewer"
                self.message_user(request, f"{approval} is assigned to {who}.", messages.SUCCESS)
        return redirect("admin:approvals_approvalrequest_change", approval.pk)

    @staticmethod
    def _show_refusal(form: ReviewForm, exc: DecisionError) -> None:
        if exc.code == "reason_required":
            form.add_error("comment", str(exc))
            return
        placed = False
        for error in exc.errors:
            name = form.field_name(error["field"])
            if name is not None:
                form.add_error(name, error["message"])
                placed = True
        if not placed or exc.code != "invalid_edit":
            form.add_error(None, str(exc) if not placed else "Nothing was decided.")

    def _render_review(self, request, object_id, form):
        # After a refused decision the page is shown again, exactly as Django's change view
        # shows it for a GET (so it only ever displays the request), with the form as filled.
        display_request = copy.copy(request)
        display_request.method = "GET"
        return super().change_view(display_request, object_id, extra_context={"review_form": form})

    def _decided_message(self, approval: ApprovalRequest, verdict: str) -> str:
        what = f"“{approval.step.key}” of {approval.run}"
        if approval.status == ApprovalRequest.Status.APPROVED:
            return f"Approved {what}; the run goes on."
        if approval.status == ApprovalRequest.Status.REJECTED:
            return f"Rejected {what}; the run has ended."
        if approval.status == ApprovalRequest.Status.RETURNED:
            return f"Sent {what} back for revision with your feedback."
        return f"Your approval of {what} is recorded; it still needs {quorum_missing(approval)}."

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context.update(self._review_context(request, obj, context.get("review_form")))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _assign_choices(self, request, approval: ApprovalRequest) -> list[tuple[str, str]]:
        """Who the viewer may route the request to: themselves, and (for operators or its
        holder) the tenant's reviewers and groups."""
        choices = (
            [("me", "Me (claim it)")] if can_review_tenant(request.user, approval.tenant) else []
        )
        if (
            can_operate_tenant(request.user, approval.tenant)
            or approval.assignee_id == request.user.pk
        ):
            people = tenant_people(request.user, kind="reviewer").filter(
                memberships__tenant=approval.tenant
            )
            choices += [(f"user:{u.pk}", u.get_username()) for u in people]
            choices += [
                (f"group:{g.pk}", f"group {g.name}")
                for g in ReviewerGroup.objects.filter(tenant=approval.tenant).order_by("name")
            ]
            choices.append(("", "nobody: any reviewer"))
        return choices

    def _review_context(self, request, approval: ApprovalRequest, form) -> dict:
        run, step = approval.run, approval.step
        earlier = list(steps_before(step))
        for earlier_step in earlier:
            earlier_step.output_json = (
                dump_json(earlier_step.output) if earlier_step.output is not None else ""
            )
        definition = step_definition(run, step)
        my_decision = next(
            (
                decision
                for decision in self._decisions(request, approval)
                if decision.dismissed_at is None and decision.reviewer_id == request.user.pk
            ),
            None,
        )
        barred = barred_reason(request.user, approval)
        may_decide = (
            approval.is_pending
            and my_decision is None
            and barred is None
            and self.has_change_permission(request, approval)
        )
        return {
            "title": f"Review “{step.key}” of {run}",
            "subtitle": None,
            "approval": approval,
            "run": run,
            "step": step,
            "proposal": proposal_display(approval.proposal),
            "input_items": display_items(run.input),
            "earlier_steps": earlier,
            "step_reason": definition.get("reason", ""),
            "prompt": step.rendered.get("prompt", "") if step.kind == "llm" else "",
            "my_decision": my_decision,
            "may_decide": may_decide,
            "barred": barred,
            "assign_choices": self._assign_choices(request, approval)
            if approval.is_pending
            else [],
            "review_form": form or ReviewForm(request=approval),
            "missing": quorum_missing(approval) if approval.is_pending else "",
            "earlier_rounds": earlier_rounds(approval),
            "verdicts": Decision.Verdict,
            # The page is a review, not a model form: no save or delete buttons.
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            "show_delete": False,
        }


@admin.register(Escalation)
class EscalationAdmin(BigTableAdmin, admin.ModelAdmin):
    view_access = "audit"
    add_access = change_access = delete_access = None  # resolved through its action
    actions = ("resolve_escalations",)
    list_display = (
        "__str__",
        "tenant",
        "kind",
        "run_column",
        "step",
        "short_reason",
        "status",
        "created_at",
        "resolver",
        "resolved_at",
    )
    list_filter = ("status", "kind", "tenant")
    list_select_related = ("tenant", "run__role", "step", "resolved_by")
    search_fields = ("reason", "resolution")
    ordering = ("-created_at",)
    fields = (
        "tenant",
        "kind",
        "run_column",
        "step",
        "status",
        "reason",
        "created_at",
        "resolution",
        "resolver",
        "resolved_at",
    )
    readonly_fields = fields

    @admin.display(description="run", ordering="run_id")
    def run_column(self, obj):
        return run_link(obj.run)

    @admin.display(description="resolved by")
    def resolver(self, obj):
        return username_of(obj.resolved_by)

    @admin.display(description="reason")
    def short_reason(self, obj):
        return obj.reason if len(obj.reason) <= 100 else obj.reason[:99] + "…"

    @admin.action(description="Resolve the selected escalations…", permissions=["operate"])
    def resolve_escalations(self, request, queryset):
        def resolve(escalation: Escalation, resolution: str) -> None:
            if not can_resolve_escalation(request.user, escalation):
                self.message_user(
                    request,
                    f"{escalation}: only its tenant's operators resolve it.",
                    messages.ERROR,
                )
                return
            try:
                resolve_escalation(escalation=escalation, user=request.user, resolution=resolution)
            except DecisionError as exc:
                self.message_user(
                    request, f"{escalation} was not resolved: {exc}", messages.WARNING
                )
            else:
                self.message_user(request, resolved_message(escalation), messages.SUCCESS)

        selected = queryset.select_related("tenant", "run")
        question = "Say what was done about these escalations; it is kept in the audit trail."
        budgets = sorted({e.tenant.name for e in selected if e.kind == Escalation.Kind.BUDGET})
        if budgets:
            question += " " + budget_note(" and ".join(budgets))
        return confirm_with_reason(
            self,
            request,
            selected,
            action="resolve_escalations",
            title="Resolve escalations",
            question=question,
            label="What was done?",
            submit="Resolve",
            apply=resolve,
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The escalation's page; operators act on it here (retry, take over, cancel …)."""
        escalation = self.get_object(request, unquote(object_id))
        form = None
        if request.method == "POST" and escalation is not None:
            if not can_resolve_escalation(request.user, escalation):
                raise PermissionDenied
            form = EscalationForm(request.POST, escalation=escalation)
            if form.is_valid():
                try:
                    resolve_escalation(
                        escalation=escalation,
                        user=request.user,
                        resolution=form.cleaned_data["resolution"],
                        outcome=form.cleaned_data["outcome"],
                        output=form.cleaned_data.get("output"),
                    )
                except DecisionError as exc:
                    form.add_error("output" if "output" in exc.code else None, str(exc))
                else:
                    escalation.refresh_from_db()
                    self.message_user(request, resolved_message(escalation), messages.SUCCESS)
                    return redirect("admin:approvals_escalation_change", escalation.pk)
            display_request = copy.copy(request)
            display_request.method = "GET"
            request = display_request
        return super().change_view(
            request, object_id, form_url, {**(extra_context or {}), "escalation_form": form}
        )

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["may_resolve"] = (
                obj.status == Escalation.Status.OPEN and can_resolve_escalation(request.user, obj)
            )
            if context["may_resolve"]:
                context["escalation_form"] = context.get("escalation_form") or EscalationForm(
                    escalation=obj
                )
            if obj.kind == Escalation.Kind.BUDGET and obj.status == Escalation.Status.OPEN:
                context["resolve_note"] = budget_note(obj.tenant.name)
            context["action_checkbox_name"] = helpers.ACTION_CHECKBOX_NAME
        return super().render_change_form(request, context, add, change, form_url, obj)


def budget_note(tenant_names: str) -> str:
    return (
        f"Resolving a budget escalation lifts {tenant_names}'s monthly budget until the end "
        "of the month and resumes every run on hold for it."
    )


def resolved_message(escalation: Escalation) -> str:
    if escalation.kind == Escalation.Kind.BUDGET:
        return (
            f"Resolved {escalation}: {escalation.tenant}'s budget is lifted until the end of "
            "the month and its runs on hold resume."
        )
    return f"{escalation.get_outcome_display()}: {escalation}. {escalation.resolution}"


class EscalationForm(forms.Form):
    """What an operator does about an escalation, from the outcomes its kind allows."""

    outcome = forms.ChoiceField(widget=forms.RadioSelect)
    output = SafeJSONField(
        required=False,
        label="Output you provide",
        widget=forms.Textarea(attrs={"rows": 6, "class": "vLargeTextField desk-json"}),
        help_text="For “taken over”: the step's output as JSON, checked against its schema.",
    )
    resolution = forms.CharField(
        label="What was done",
        widget=forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField"}),
        help_text="Kept in the audit trail.",
    )

    def __init__(self, *args, escalation: Escalation, **kwargs):
        super().__init__(*args, **kwargs)
        allowed = outcomes_for(escalation)
        self.fields["outcome"].choices = [(o, Escalation.Outcome(o).label) for o in allowed]
        self.fields["outcome"].initial = allowed[0]
        if Escalation.Outcome.TAKEN_OVER not in allowed:
            del self.fields["output"]
        elif escalation.step_id and escalation.step.output is not None:
            self.fields["output"].initial = escalation.step.output

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("outcome") == Escalation.Outcome.TAKEN_OVER and not isinstance(
            cleaned.get("output"), dict
        ):
            self.add_error("output", "Give the output as a JSON object.")
        return cleaned


class ApprovalPolicyForm(forms.ModelForm):
    category = forms.ChoiceField(choices=[(c, c.replace("_", " ")) for c in CATEGORIES])
    reason = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "class": "vLargeTextField"}),
        help_text="Why: the second operator reads it before approving the change.",
    )

    class Meta:
        model = ApprovalPolicy
        fields = (
            "tenant",
            "category",
            "mode",
            "required_approvals",
            "approver_groups",
            "due_minutes",
            "remind_every_minutes",
            "max_reminders",
            "escalate_to_group",
            "escalate_to_user",
            "final_action",
            "max_rounds",
            "allow_bulk",
            "email_links",
        )


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(TenantScopedHistoryAdmin):
    """Policies change through a second operator: saving here proposes the change."""

    form = ApprovalPolicyForm
    list_display = (
        "category",
        "tenant",
        "mode",
        "required_approvals",
        "due_minutes",
        "final_action",
    )
    list_filter = ("tenant", "mode", "category")
    list_select_related = ("tenant",)
    search_fields = ("category",)
    ordering = ("tenant__name", "category")

    def save_model(self, request, obj, form, change):
        original = ApprovalPolicy.objects.get(pk=obj.pk) if change else None
        values = {name: form.cleaned_data.get(name) for name in POLICY_FIELDS}
        values["escalate_to_group"] = obj.escalate_to_group_id
        values["escalate_to_user"] = obj.escalate_to_user_id
        self.call_service(
            form,
            lambda: setattr(
                request,
                "_policy_change",
                propose_policy_change(
                    tenant=form.cleaned_data["tenant"],
                    actor=Actor.for_user(request.user),
                    values=values,
                    policy=original,
                    approver_groups=list(form.cleaned_data.get("approver_groups") or []),
                    reason=form.cleaned_data.get("reason", ""),
                ),
            ),
        )

    def save_related(self, request, form, formsets, change):
        """Nothing is saved here: the change waits for a second operator."""

    def _proposed(self, request):
        change = request._policy_change
        self.message_user(
            request,
            f"Proposed: {change}. It applies once a second operator of {change.tenant} "
            "approves it.",
            messages.SUCCESS,
        )
        return redirect("admin:approvals_policychange_change", change.pk)

    def response_add(self, request, obj, post_url_continue=None):
        return self._proposed(request)

    def response_change(self, request, obj):
        return self._proposed(request)

    def delete_model(self, request, obj):
        request._policy_change = propose_policy_change(
            tenant=obj.tenant, actor=Actor.for_user(request.user), values=None, policy=obj
        )

    def response_delete(self, request, obj_display, obj_id):
        return self._proposed(request)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # one proposal per policy, from its page
        return actions

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "escalate_to_user":
            kwargs["queryset"] = tenant_people(request.user, kind="reviewer")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(PolicyChange)
class PolicyChangeAdmin(TenantScopedAdmin, admin.ModelAdmin):
    """Proposed policy changes, with their before and after; a second operator applies."""

    view_access = "operate"
    add_access = change_access = delete_access = None
    actions = ("apply_changes", "reject_changes")
    list_display = ("__str__", "tenant", "action", "summary", "status", "proposer", "proposed_at")
    list_filter = ("status", "action", "tenant")
    list_select_related = ("tenant", "proposed_by", "decided_by")
    ordering = ("-proposed_at",)
    fields = (
        "tenant",
        "action",
        "status",
        "proposer",
        "proposed_at",
        "reason",
        "before_after",
        "decided_by",
        "decided_at",
        "decision_note",
    )
    readonly_fields = fields

    @admin.display(description="proposed by")
    def proposer(self, obj):
        return username_of(obj.proposed_by)

    @admin.display(description="what")
    def summary(self, obj):
        values = obj.after or obj.before or {}
        return f"{values.get('category', '?')} · {values.get('mode', '?')}"

    @admin.display(description="before → after")
    def before_after(self, obj):
        names = sorted(set(obj.before or {}) | set(obj.after or {}))
        rows = format_html_join(
            "",
            "<tr{}><th>{}</th><td>{}</td><td>{}</td></tr>",
            (
                (
                    mark_safe(' class="desk-changed"')
                    if (obj.before or {}).get(n) != (obj.after or {}).get(n)
                    else "",
                    n.replace("_", " "),
                    "—" if obj.before is None else (obj.before or {}).get(n),
                    "(deleted)" if obj.after is None else (obj.after or {}).get(n),
                )
                for n in names
            ),
        )
        return format_html(
            '<table class="desk-diff"><tr><th></th><th>before</th><th>after</th></tr>{}</table>',
            rows,
        )

    def _decide(self, request, queryset, *, apply: bool):
        def one(change, note):
            try:
                if apply:
                    approve_policy_change(
                        change=change, actor=Actor.for_user(request.user), note=note
                    )
                else:
                    reject_policy_change(
                        change=change, actor=Actor.for_user(request.user), note=note
                    )
            except DecisionError as exc:
                self.message_user(request, f"{change}: {exc}", messages.ERROR)
            else:
                verb = "Applied" if apply else "Closed"
                self.message_user(request, f"{verb} {change}.", messages.SUCCESS)

        return confirm_with_reason(
            self,
            request,
            queryset.select_related("tenant"),
            action="apply_changes" if apply else "reject_changes",
            title="Apply policy changes" if apply else "Reject policy changes",
            question=(
                "Apply these changes to the approval policies? You must not be their proposer."
                if apply
                else "Reject (or, for your own, withdraw) these proposed changes?"
            ),
            label="Note for the audit trail" if apply else "Why?",
            submit="Apply" if apply else "Reject",
            apply=one,
        )

    @admin.action(
        description="Apply the selected changes (second operator)…", permissions=["operate"]
    )
    def apply_changes(self, request, queryset):
        return self._decide(request, queryset, apply=True)

    @admin.action(description="Reject or withdraw the selected changes…", permissions=["operate"])
    def reject_changes(self, request, queryset):
        return self._decide(request, queryset, apply=False)


class ReviewerGroupForm(forms.ModelForm):
    members = forms.ModelMultipleChoiceField(
        queryset=None, required=False, help_text="Reviewers of the tenant."
    )

    class Meta:
        model = ReviewerGroup
        fields = ("tenant", "name")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "tenant" not in self.fields or "members" not in self.fields:
            return  # read-only for this user
        tenant_ids = list(self.fields["tenant"].queryset.values_list("pk", flat=True))
        self.fields["members"].queryset = (
            get_user_model()
            .objects.filter(
                is_active=True,
                memberships__tenant_id__in=tenant_ids,
                memberships__kind="reviewer",
            )
            .distinct()
            .order_by("username")
        )
        if not self.instance._state.adding:
            self.fields["members"].initial = list(
                self.instance.memberships.values_list("user_id", flat=True)
            )


@admin.register(ReviewerGroup)
class ReviewerGroupAdmin(TenantScopedAdmin, admin.ModelAdmin):
    """Groups of a tenant's reviewers: requests are assigned to them, and a policy may ask
    for one approval from each of several."""

    form = ReviewerGroupForm
    delete_access = None  # a group a policy names stays; empty it instead
    list_display = ("name", "tenant", "member_names")
    list_filter = ("tenant",)
    list_select_related = ("tenant",)
    ordering = ("tenant__name", "name")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("memberships__user")

    @admin.display(description="members")
    def member_names(self, obj):
        return ", ".join(sorted(m.user.username for m in obj.memberships.all())) or "—"

    def save_model(self, request, obj, form, change):
        self.call_service(
            form,
            lambda: save_reviewer_group(
                tenant=form.cleaned_data["tenant"],
                name=form.cleaned_data["name"],
                members=list(form.cleaned_data.get("members") or []),
                actor=Actor.for_user(request.user),
                group=obj if change else None,
            ),
        )

    def save_related(self, request, form, formsets, change):
        """The members were saved by the service."""


class DelegationForm(forms.ModelForm):
    class Meta:
        model = Delegation
        fields = ("tenant", "delegate", "starts_at", "ends_at", "reason")
        help_texts = {"delegate": "Who decides your requests while you are away."}


@admin.register(Delegation)
class DelegationAdmin(TenantScopedAdmin, admin.ModelAdmin):
    """Out of office: "my requests go to X until …". Reviewers delegate their own requests;
    the delegate still decides under four eyes, and the decision records whom it was for."""

    form = DelegationForm
    view_access = "review"
    add_access = "review"
    change_access = delete_access = None
    actions = ("end_delegations",)
    list_display = ("delegator", "delegate", "tenant", "starts_at", "ends_at", "state")
    list_filter = ("tenant",)
    list_select_related = ("tenant", "delegator", "delegate")
    ordering = ("-starts_at",)
    readonly_fields = ("delegator", "revoked_at")

    @admin.display(description="state")
    def state(self, obj):
        now = timezone.now()
        if obj.revoked_at:
            return "ended early"
        if obj.ends_at <= now:
            return "over"
        return "active" if obj.starts_at <= now else "planned"

    def save_model(self, request, obj, form, change):
        def create():
            try:
                return create_delegation(
                    tenant=form.cleaned_data["tenant"],
                    delegator=request.user,
                    delegate=form.cleaned_data["delegate"],
                    starts_at=form.cleaned_data["starts_at"],
                    ends_at=form.cleaned_data["ends_at"],
                    reason=form.cleaned_data.get("reason", ""),
                    actor=Actor.for_user(request.user),
                )
            except DecisionError as exc:
                raise ValidationError(str(exc)) from None

        created = self.call_service(form, create)
        obj.pk, obj.delegator, obj.created_at = created.pk, created.delegator, created.created_at

    @admin.action(description="End the selected delegations now…", permissions=["review"])
    def end_delegations(self, request, queryset):
        def end(delegation, reason):
            try:
                revoke_delegation(
                    delegation=delegation, actor=Actor.for_user(request.user), reason=reason
                )
            except DecisionError as exc:
                self.message_user(request, f"{delegation}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"Ended {delegation}.", messages.SUCCESS)

        return confirm_with_reason(
            self,
            request,
            queryset,
            action="end_delegations",
            title="End delegations",
            question="End these delegations now?",
            label="Why?",
            submit="End",
            apply=end,
        )

    def has_review_permission(self, request, obj=None):
        return self.has_view_permission(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "delegate":
            kwargs["queryset"] = tenant_people(request.user, kind="reviewer")
        elif db_field.name == "tenant":
            # Reviewers delegate within the tenants they review.
            kwargs["queryset"] = tenants_for_user(request.user, kinds=("reviewer",)).order_by(
                "name"
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def tenant_people(user, *, kind: str):
    """Active people of `kind` in the tenants `user` belongs to (never other tenants')."""
    return (
        get_user_model()
        .objects.filter(
            is_active=True,
            memberships__kind=kind,
            memberships__tenant_id__in=member_tenant_ids(user),
        )
        .distinct()
        .order_by("username")
    )
