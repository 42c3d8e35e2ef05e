"""Tenants (with what they are using now), memberships, client records, API keys and
platform staff's break-glass grants in the admin; also the site's own header and banner."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from audit.services import Actor

# The one read of another app's tables here: a tenant's page shows its runs and usage.
from desk.selectors import THROUGHPUT_WINDOW, with_capacity
from roles.models import Role
from tenants import admin_users  # noqa: F401  (people's accounts: the user admin, sign-in)
from tenants.admin_scoping import (
    PLATFORM,
    TenantScopedAdmin,
    TenantScopedHistoryAdmin,
    add_service_error,
    confirm_with_reason,
    render_form_page,
    scoped_choices,
    username_of,
)
from tenants.models import ApiKey, BreakGlassGrant, ClientRecord, Membership, Tenant
from tenants.permissions import can_operate_tenant
from tenants.scoping import is_platform_staff
from tenants.selectors import (
    NoSuchAccount,
    account_named,
    active_tenants,
    break_glass_tenants,
    open_break_glass_grants,
)
from tenants.services import (
    TENANT_SETTINGS,
    change_membership_kind,
    clear_provider_api_key,
    close_break_glass,
    create_api_key,
    create_tenant,
    delete_client_record,
    grant_membership,
    open_break_glass,
    revoke_api_key,
    revoke_membership,
    set_provider_api_key,
    update_tenant_settings,
    upsert_client_record,
)
from tenants.signin import admin as signin_admin  # noqa: F401  (lockouts, second factors)

admin.site.site_header = "AgentDesk"
admin.site.site_title = "AgentDesk"
admin.site.index_title = "Your desk"
admin.site.index_template = "admin/agentdesk/index.html"


def _with_break_glass_banner(each_context):
    def each_context_with_break_glass(request):
        # Every admin page (templates/admin/base_site.html) warns while a grant is open.
        context = each_context(request)
        context["break_glass_grants"] = open_break_glass_grants(request.user)
        return context

    return each_context_with_break_glass


admin.site.each_context = _with_break_glass_banner(admin.site.each_context)


def when(value) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M") if value else "—"


def share(used, budget) -> str:
    """ "1,200 of 10,000 (12%)", or just what was used when there is no budget."""
    number = "{:,}" if isinstance(used, int) else "{:,.2f}"
    if budget is None:
        return f"{number.format(used)} (no budget)"
    percent = used * 100 / budget if budget else 100
    text = f"{number.format(used)} of {number.format(budget)} ({percent:.0f}%)"
    if percent >= 100:
        return format_html('<span class="desk-overdue">{}</span>', text)
    return text


# --- tenants -------------------------------------------------------------------------------

CAPACITY_NOW = (
    "running",
    "queued",
    "waiting",
    "on_hold",
    "throughput",
    "tokens_this_month",
    "cost_this_month",
)


class TenantAddForm(forms.ModelForm):
    first_operator = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True, is_staff=True),
        required=False,
        help_text="Who runs this client's AI employees; they can add everyone else.",
    )

    class Meta:
        model = Tenant
        fields = ("name", "slug", *sorted(TENANT_SETTINGS))


class TenantChangeForm(forms.ModelForm):
    """A tenant's settings, and its model provider API key: write-only (a password input that
    is never filled in, not even when the page comes back with an error)."""

    provider_api_key = forms.CharField(
        label="New provider API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(
            render_value=False, attrs={"autocomplete": "new-password", "spellcheck": "false"}
        ),
        help_text="Enter a key to replace the tenant's; leave blank to keep it as it is.",
    )
    clear_provider_api_key = forms.BooleanField(
        label="Remove the tenant's provider API key",
        required=False,
        help_text="Its model calls then use the platform's key.",
    )

    class Meta:
        model = Tenant
        fields = ()

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("provider_api_key") and cleaned.get("clear_provider_api_key"):
            raise ValidationError("Enter a new provider API key or remove it, not both.")
        return cleaned


PROVIDER_KEY_FIELDS = ("provider_key_status", "provider_api_key", "clear_provider_api_key")


@admin.register(Tenant)
class TenantAdmin(TenantScopedHistoryAdmin):
    tenant_field = "id"
    # Platform staff create tenants (create_tenant writes under the platform role); nobody
    # deletes one here: its runs and audit trail outlive a contract.
    add_access = PLATFORM
    delete_access = None
    list_display = (
        "name",
        "slug",
        "status",
        "running",
        "queued",
        "waiting",
        "on_hold",
        "throughput",
        "tokens_this_month",
        "cost_this_month",
        "budget_lifted_until",
    )
    list_filter = ("status",)
    search_fields = ("name", "slug")
    ordering = ("name",)

    def get_queryset(self, request):
        return with_capacity(super().get_queryset(request), now=timezone.now())

    def has_module_permission(self, request):
        return super().has_module_permission(request) or is_platform_staff(request.user)

    def has_view_permission(self, request, obj=None):
        # Platform staff may open the list (to add a tenant); it shows only the tenants
        # they hold a break-glass grant for.
        if obj is None and is_platform_staff(request.user):
            return True
        return super().has_view_permission(request, obj)

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = TenantAddForm if obj is None else TenantChangeForm
        return super().get_form(request, obj, change, **kwargs)

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "priority_weight":
            kwargs["min_value"] = 1  # the tenant_priority_weight_gte_1 constraint, said plainly
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_fieldsets(self, request, obj=None):
        settings = [
            (
                "Capacity",
                {
                    "fields": (
                        "max_concurrent_runs",
                        "reserved_steps_per_minute",
                        "priority_weight",
                    ),
                    "description": "How much of the platform this client's AI employees may use.",
                },
            ),
            ("Budget", {"fields": ("monthly_token_budget", "monthly_cost_budget")}),
            ("Data", {"fields": ("retention_days",)}),
        ]
        if obj is None:
            return [(None, {"fields": ("name", "slug", "first_operator")}), *settings]
        budget = ("monthly_token_budget", "monthly_cost_budget", "budget_lifted_until")
        settings[1] = ("Budget", {"fields": budget})
        fieldsets = [
            (None, {"fields": ("name", "slug", "status", "created_at")}),
            ("Now", {"fields": CAPACITY_NOW}),
            *settings,
        ]
        if getattr(request, "desk_history_version", False):
            return fieldsets  # history keeps no key: a past version cannot say if it had one
        # Who may change the tenant (its operators) may set its key; others see whether it is.
        may_change = self.has_change_permission(request, obj)
        provider = PROVIDER_KEY_FIELDS if may_change else PROVIDER_KEY_FIELDS[:1]
        return [
            *fieldsets,
            (
                "Model provider",
                {
                    "fields": provider,
                    "description": "The tenant's own API key for the model provider, used for "
                    "its AI employees' model calls. It is stored encrypted and never shown "
                    "again once saved.",
                },
            ),
        ]

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        request.desk_history_version = True
        return super().history_form_view(request, object_id, version_id, extra_context)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        # Operators tune capacity, budget and retention; who the client is, and whether it
        # is suspended, is the platform's to change.
        return (
            "name",
            "slug",
            "status",
            "created_at",
            *CAPACITY_NOW,
            "budget_lifted_until",
            "provider_key_status",
        )

    @admin.display(description="provider API key")
    def provider_key_status(self, obj):
        changed = getattr(obj, "provider_api_key_changed_at", None)
        if getattr(obj, "provider_api_key_encrypted", ""):
            return f"Set (last changed {when(changed)})."
        cleared = f" (removed {when(changed)})" if changed else ""
        return f"Not set{cleared}: model calls use the platform's key."

    # --- what it is using now (annotated by desk.selectors.with_capacity) -----------------

    @admin.display(description="running", ordering="running_runs")
    def running(self, obj):
        return f"{obj.running_runs} of {obj.max_concurrent_runs}"

    @admin.display(description="queued", ordering="queued_runs")
    def queued(self, obj):
        return obj.queued_runs

    @admin.display(description="waiting for approval", ordering="waiting_runs")
    def waiting(self, obj):
        return obj.waiting_runs

    @admin.display(description="on hold", ordering="held_runs")
    def on_hold(self, obj):
        return obj.held_runs

    @admin.display(description="steps done (last 5 min)", ordering="recent_steps")
    def throughput(self, obj):
        minutes = THROUGHPUT_WINDOW.total_seconds() / 60
        return (
            f"{obj.recent_steps} · {obj.recent_steps / minutes:.1f}/min "
            f"of {obj.reserved_steps_per_minute}/min reserved"
        )

    @admin.display(description="tokens this month", ordering="month_tokens")
    def tokens_this_month(self, obj):
        return share(obj.month_tokens, obj.monthly_token_budget)

    @admin.display(description="cost this month", ordering="month_cost")
    def cost_this_month(self, obj):
        return share(obj.month_cost, obj.monthly_cost_budget)

    # --- writes ---------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        # The new tenant has no member yet, so its page is not the place to go on from.
        extra_context = {"show_save_and_continue": False, **(extra_context or {})}
        return super().add_view(request, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        actor = Actor.for_user(request.user)
        settings = {
            name: form.cleaned_data[name] for name in TENANT_SETTINGS if name in form.fields
        }
        if change:
            self.call_service(
                form,
                lambda: update_tenant_settings(tenant=obj, actor=actor, changes=settings),
            )
            self._save_provider_key(form, obj, actor)
            return
        tenant = self.call_service(
            form,
            lambda: create_tenant(
                slug=form.cleaned_data["slug"],
                name=form.cleaned_data["name"],
                actor=actor,
                first_operator=form.cleaned_data.get("first_operator"),
                **settings,
            ),
        )
        obj.pk, obj.created_at = tenant.pk, tenant.created_at

    def _save_provider_key(self, form, obj: Tenant, actor: Actor) -> None:
        if "provider_api_key" not in form.fields:
            return
        if form.cleaned_data.get("clear_provider_api_key"):
            self.call_service(form, lambda: clear_provider_api_key(tenant=obj, actor=actor))
        elif form.cleaned_data.get("provider_api_key"):
            api_key = form.cleaned_data["provider_api_key"]
            self.call_service(
                form, lambda: set_provider_api_key(tenant=obj, actor=actor, api_key=api_key)
            )


# --- memberships and client records ----------------------------------------------------------


class MembershipAddForm(forms.ModelForm):
    """Adding a member: the operator types the person's username or e-mail address exactly.

    No list of accounts is offered (it would show every tenant's people). What an exact
    match tells is unavoidable and no more: that an account answers to a name or address the
    operator already had; the page shows nothing else of it until it is a member here.
    """

    person = forms.CharField(
        label="Username or e-mail address",
        max_length=254,
        help_text="Typed exactly as the person's account has it; accounts are not listed.",
    )

    class Meta:
        model = Membership
        fields = ("tenant", "kind")

    def clean_person(self):
        try:
            self.instance.user = account_named(self.cleaned_data["person"])
        except NoSuchAccount as refused:
            raise ValidationError(str(refused)) from None
        return self.cleaned_data["person"]


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
            return ("person", "tenant", "kind")
        return ("member", "user_name", "tenant", "kind", "created_at")

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = MembershipAddForm
        return super().get_form(request, obj, change, **kwargs)

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
        saved = self.call_service(
            form,
            lambda: upsert_client_record(
                tenant=obj.tenant,
                reference=obj.reference,
                kind=obj.kind,
                name=obj.name,
                email=obj.email,
                data=obj.data,
                actor=Actor.for_user(request.user),
            ),
        )
        obj.pk, obj.updated_at = saved.pk, saved.updated_at

    def delete_model(self, request, obj):
        delete_client_record(client_record=obj, actor=Actor.for_user(request.user))

    def delete_queryset(self, request, queryset):
        # delete_selected has checked each record's permission on its confirmation page.
        actor = Actor.for_user(request.user)
        for client_record in queryset:
            delete_client_record(client_record=client_record, actor=actor)


# --- API keys ----------------------------------------------------------------------------


class ApiKeyForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), empty_label=None)
    name = forms.CharField(
        max_length=100, help_text="What uses the key, e.g. “Website intake form”."
    )
    role_slugs = forms.MultipleChoiceField(
        label="Roles",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Roles this key may start runs of. None ticked: every role of the tenant.",
    )
    rate_limit_per_minute = forms.IntegerField(
        min_value=1, initial=120, help_text="Requests per minute before the API answers 429."
    )

    def __init__(self, *args, tenants, roles, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants
        tenant = self._tenant()
        self.fields["role_slugs"].choices = (
            [(role.slug, role.name) for role in roles.filter(tenant=tenant).order_by("name")]
            if tenant is not None
            else []
        )

    def _tenant(self) -> Tenant | None:
        """The tenant whose roles the form offers: the one posted, if the user may pick it."""
        if not self.is_bound:
            return self.initial.get("tenant")
        try:
            return self.fields["tenant"].clean(self.data.get("tenant"))
        except ValidationError:
            return None


class RevokedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() in ("active", "revoked"):
            return queryset.filter(revoked_at__isnull=self.value() == "active")
        return queryset


def pick(queryset, pk):
    """The row of `queryset` with this (untrusted) primary key, or None."""
    try:
        return queryset.filter(pk=pk).first() if pk else None
    except (TypeError, ValueError, ValidationError):
        return None


@admin.register(ApiKey)
class ApiKeyAdmin(TenantScopedHistoryAdmin):
    """Keys of the intake API. The secret is shown once, on the page that creates the key;
    only its hash is stored, and neither is ever displayed again."""

    view_access = "audit"
    change_access = delete_access = None  # a key is revoked, never edited nor deleted
    change_form_template = "admin/tenants/apikey/change_form.html"
    actions = ("revoke_keys",)
    list_display = (
        "name",
        "prefix",
        "tenant",
        "roles",
        "rate_limit_per_minute",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = (RevokedFilter, "tenant")
    list_select_related = ("tenant",)
    search_fields = ("name", "prefix")
    ordering = ("tenant__name", "-created_at")
    fields = (
        "tenant",
        "name",
        "prefix",
        "roles",
        "rate_limit_per_minute",
        "creator",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    readonly_fields = fields

    @admin.display(description="roles")
    def roles(self, obj):
        return ", ".join(obj.role_slugs) if obj.role_slugs else "Every role"

    @admin.display(description="created by")
    def creator(self, obj):
        return username_of(obj.created_by)

    # --- a new key ------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        operable = scoped_choices(Tenant, request.user)
        chosen = pick(operable, request.GET.get("tenant"))
        if chosen is None and operable.count() == 1:
            chosen = operable.get()
        if chosen is None and request.method != "POST":
            return self._render_choose_tenant(request, operable)
        form = ApiKeyForm(
            request.POST if request.method == "POST" else None,
            initial={"tenant": chosen},
            tenants=operable.filter(pk=chosen.pk) if chosen else operable,
            roles=scoped_choices(Role, request.user),
        )
        if form.is_bound and form.is_valid():
            tenant = form.cleaned_data["tenant"]
            if not can_operate_tenant(request.user, tenant):
                raise PermissionDenied
            try:
                api_key, secret = create_api_key(
                    tenant=tenant,
                    name=form.cleaned_data["name"],
                    actor=Actor.for_user(request.user),
                    role_slugs=form.cleaned_data["role_slugs"],
                    rate_limit_per_minute=form.cleaned_data["rate_limit_per_minute"],
                )
            except ValidationError as exc:
                add_service_error(form, exc)
            else:
                return self._render_created(request, api_key, secret)
        return render_form_page(
            self,
            request,
            form,
            title=f"New API key for {chosen}" if chosen else "New API key",
            fields=["tenant", "name", "role_slugs", "rate_limit_per_minute"],
        )

    def _render_choose_tenant(self, request, tenants):
        context = {
            **self.admin_site.each_context(request),
            "title": "New API key: for which client?",
            "opts": self.opts,
            "tenants": tenants,
        }
        return TemplateResponse(request, "admin/tenants/apikey/choose_tenant.html", context)

    def _render_created(self, request, api_key: ApiKey, secret: str):
        # The secret exists only in this response: it is not stored (not even in a message,
        # which the session would keep until shown), and no browser or proxy may cache it.
        context = {
            **self.admin_site.each_context(request),
            "title": f"API key “{api_key.name}” created",
            "opts": self.opts,
            "api_key": api_key,
            "secret": secret,
        }
        response = TemplateResponse(request, "admin/tenants/apikey/created.html", context)
        add_never_cache_headers(response)
        return response

    # --- revoke ---------------------------------------------------------------------------

    @admin.action(description="Revoke the selected keys…", permissions=["operate"])
    def revoke_keys(self, request, queryset):
        actor = Actor.for_user(request.user)

        def revoke(api_key: ApiKey, _reason: str) -> None:
            if not can_operate_tenant(request.user, api_key.tenant):
                self.message_user(
                    request,
                    f"{api_key}: only {api_key.tenant}'s operators revoke it.",
                    messages.ERROR,
                )
            elif not api_key.is_active:
                self.message_user(request, f"{api_key} was already revoked.", messages.WARNING)
            else:
                revoke_api_key(api_key=api_key, actor=actor)
                self.message_user(
                    request,
                    f"Revoked {api_key}; requests with it are refused from now on.",
                    messages.SUCCESS,
                )

        return confirm_with_reason(
            self,
            request,
            queryset.select_related("tenant"),
            action="revoke_keys",
            title="Revoke API keys",
            question="Requests made with these keys will be refused from now on. A revoked key "
            "cannot be restored; create a new one instead.",
            label=None,
            submit="Revoke the keys",
            apply=revoke,
        )

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["may_revoke"] = obj.is_active and can_operate_tenant(request.user, obj.tenant)
            context["action_checkbox_name"] = helpers.ACTION_CHECKBOX_NAME
        return super().render_change_form(request, context, add, change, form_url, obj)


# --- break-glass access ----------------------------------------------------------------------


class BreakGlassForm(forms.Form):
    tenant = forms.TypedChoiceField(coerce=int, label="Client")
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "class": "vLargeTextField"}),
        help_text="Why you need to read this client's data (a ticket, an incident). It is "
        "recorded with every page you view.",
    )
    minutes = forms.IntegerField(
        min_value=5, max_value=480, initial=60, help_text="From 5 minutes to 8 hours."
    )

    def __init__(self, *args, tenants: list[Tenant], **kwargs):
        super().__init__(*args, **kwargs)
        self.tenants = {tenant.pk: tenant for tenant in tenants}
        self.fields["tenant"].choices = [("", "---------")] + [
            (tenant.pk, tenant.name) for tenant in tenants
        ]

    def clean_tenant(self) -> Tenant:
        return self.tenants[self.cleaned_data["tenant"]]


class GrantStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "Open"), ("ended", "Closed or expired")]

    def queryset(self, request, queryset):
        now = timezone.now()
        is_open = {"ended_at__isnull": True, "expires_at__gt": now}
        if self.value() == "open":
            return queryset.filter(**is_open)
        if self.value() == "ended":
            return queryset.exclude(**is_open)
        return queryset


def is_open(grant: BreakGlassGrant) -> bool:
    return grant.ended_at is None and grant.started_at <= timezone.now() < grant.expires_at


@admin.register(BreakGlassGrant)
class BreakGlassGrantAdmin(TenantScopedAdmin, admin.ModelAdmin):
    """Platform staff's own grants: open one (with a reason) to read one client's data for a
    while, close it when done. Nobody else sees this page, nor anyone else's grants."""

    view_access = add_access = PLATFORM
    change_access = delete_access = None
    add_form_template = "admin/tenants/breakglassgrant/add_form.html"
    change_form_template = "admin/tenants/breakglassgrant/change_form.html"
    actions = ("close_grants",)
    list_display = ("started_at", "state", "short_reason", "expires_at", "ended_at")
    list_filter = (GrantStateFilter,)
    search_fields = ("reason",)
    ordering = ("-started_at",)
    fields = ("client", "state", "reason", "started_at", "expires_at", "ended_at")
    readonly_fields = fields

    def has_module_permission(self, request):
        return is_platform_staff(request.user)

    def scope_queryset(self, request, queryset):
        if not is_platform_staff(request.user):
            return queryset.none()
        return queryset.filter(user=request.user)

    def get_object(self, request, object_id, from_field=None):
        grant = super().get_object(request, object_id, from_field)
        if grant is not None:
            # Once a grant has ended, its tenant is outside the request's context.
            grant.tenant = break_glass_tenants(request.user)[grant.tenant_id]
        return grant

    def get_list_display(self, request):
        tenants = break_glass_tenants(request.user)

        @admin.display(description="client")
        def client(grant):
            tenant = tenants.get(grant.tenant_id)
            return tenant.name if tenant else "—"

        return (client, *self.list_display)

    @admin.display(description="client")
    def client(self, obj):
        return obj.tenant.name

    @admin.display(description="state")
    def state(self, obj):
        if is_open(obj):
            return mark_safe('<span class="desk-badge open">Open</span>')
        return "Closed" if obj.ended_at else "Expired"

    @admin.display(description="reason")
    def short_reason(self, obj):
        return obj.reason if len(obj.reason) <= 80 else obj.reason[:79] + "…"

    # --- open -----------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = BreakGlassForm(
            request.POST if request.method == "POST" else None, tenants=active_tenants()
        )
        if form.is_bound and form.is_valid():
            tenant = form.cleaned_data["tenant"]
            try:
                grant = open_break_glass(
                    user=request.user,
                    tenant=tenant,
                    reason=form.cleaned_data["reason"],
                    minutes=form.cleaned_data["minutes"],
                )
            except ValidationError as exc:
                add_service_error(form, exc)
            else:
                self.message_user(
                    request,
                    f"You may read {tenant}'s data until "
                    f"{timezone.localtime(grant.expires_at):%H:%M}. Nothing can be changed, "
                    "and every page you view is recorded.",
                    messages.WARNING,
                )
                return redirect("admin:index")
        return render_form_page(
            self,
            request,
            form,
            title="Open break-glass access",
            fields=["tenant", "reason", "minutes"],
        )

    # --- close ----------------------------------------------------------------------------

    @admin.action(description="Close the selected grants", permissions=["platform"])
    def close_grants(self, request, queryset):
        actor = Actor.for_user(request.user)
        tenants = break_glass_tenants(request.user)
        for grant in queryset:  # the user's own grants only: see scope_queryset
            name = tenants[grant.tenant_id].name
            if not is_open(grant):
                self.message_user(
                    request, f"Your access to {name} had already ended.", messages.WARNING
                )
                continue
            close_break_glass(grant=grant, actor=actor)
            self.message_user(request, f"Closed your access to {name}.", messages.SUCCESS)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["may_close"] = is_open(obj)
            context["action_checkbox_name"] = helpers.ACTION_CHECKBOX_NAME
        return super().render_change_form(request, context, add, change, form_url, obj)
