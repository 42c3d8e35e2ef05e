"""Webhook endpoints in the admin, for a tenant's operators: create one (its secret shown
once), change where it points and what it hears of, send a test event, rotate its secret,
deactivate it. Every delivery and each of its attempts is in the outbox's admin."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join

from audit.services import Actor
from tenants.admin_scoping import (
    TenantScopedHistoryAdmin,
    add_service_error,
    confirm_with_reason,
    render_form_page,
    scoped_choices,
    single_selected,
    username_of,
)
from tenants.models import Tenant
from tenants.permissions import can_operate_tenant
from webhooks.models import EVENT_TYPES, WebhookEndpoint
from webhooks.selectors import endpoint_deliveries
from webhooks.services import (
    create_webhook_endpoint,
    deactivate_webhook_endpoint,
    rotate_webhook_secret,
    send_test_event,
    update_webhook_endpoint,
)

EVENT_CHOICES = [(name, f"{name}: {meaning}") for name, meaning in EVENT_TYPES.items()]
EVENTS_HELP = "None ticked: nothing is delivered to this endpoint."
URL_HELP = "Where deliveries are POSTed, e.g. https://example.com/hooks/agentdesk."


def event_types_field() -> forms.MultipleChoiceField:
    return forms.MultipleChoiceField(
        label="Events",
        choices=EVENT_CHOICES,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=EVENTS_HELP,
    )


class EndpointCreateForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none(), label="Client")
    url = forms.CharField(label="URL", max_length=2000, help_text=URL_HELP)
    description = forms.CharField(max_length=200, required=False)
    event_types = event_types_field()

    def __init__(self, *args, tenants, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants
        if tenants.count() == 1:
            self.fields["tenant"].initial = tenants.get()


class EndpointChangeForm(forms.ModelForm):
    event_types = event_types_field()

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "description", "event_types")
        widgets = {"url": forms.TextInput(attrs={"class": "vLargeTextField"})}
        help_texts = {"url": URL_HELP}


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(TenantScopedHistoryAdmin):
    """A tenant's webhook endpoints. The signing secret is shown once, on the page that
    creates it (the endpoint, or a rotation); never in lists, pages or history."""

    view_access = add_access = change_access = "operate"
    delete_access = None  # deactivated, never deleted: its deliveries refer to it
    form = EndpointChangeForm
    change_form_template = "admin/webhooks/webhookendpoint/change_form.html"
    actions = ("send_test_events", "rotate_secret", "deactivate_endpoints")
    list_display = ("__str__", "url", "tenant", "events", "is_active", "created_at")
    list_filter = ("is_active", "tenant")
    list_select_related = ("tenant",)
    search_fields = ("url", "description")
    ordering = ("tenant__name", "-created_at")
    readonly_fields = (
        "tenant",
        "secret_note",
        "is_active",
        "creator",
        "created_at",
        "secret_rotated_at",
        "deactivated_at",
        "deliveries",
    )
    fieldsets = (
        (None, {"fields": ("tenant", "url", "description", "event_types", "is_active")}),
        ("Signing", {"fields": ("secret_note", "secret_rotated_at")}),
        ("History", {"fields": ("creator", "created_at", "deactivated_at")}),
        ("Latest deliveries", {"fields": ("deliveries",)}),
    )

    @admin.display(description="events")
    def events(self, obj):
        return ", ".join(obj.event_types) if obj.event_types else "None (nothing is delivered)"

    @admin.display(description="created by")
    def creator(self, obj):
        return username_of(obj.created_by)

    @admin.display(description="secret")
    def secret_note(self, obj):
        return (
            "Shown only when it was made. Receivers verify each delivery's webhook-signature "
            "with it; rotate it if it may be known to anyone else."
        )

    @admin.display(description="deliveries")
    def deliveries(self, obj):
        latest = list(endpoint_deliveries(obj)[:20])
        if not latest:
            return "None yet."
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:desk_outboxmessage_change", args=[message.pk]),
                    message.payload.get("type", ""),
                    message.get_status_display(),
                    message.attempts,
                    message.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    message.last_error or "",
                )
                for message in latest
            ),
        )
        return format_html(
            "<table><thead><tr><th>event</th><th>status</th><th>attempts</th><th>queued</th>"
            "<th>last error</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    def has_change_permission(self, request, obj=None):
        # A deactivated endpoint is a record of where deliveries went: read-only.
        active = obj is None or getattr(obj, "is_active", True)
        return active and super().has_change_permission(request, obj)

    # --- a new endpoint -----------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        tenants = scoped_choices(Tenant, request.user)
        form = EndpointCreateForm(
            request.POST if request.method == "POST" else None, tenants=tenants
        )
        if form.is_bound and form.is_valid():
            tenant = form.cleaned_data["tenant"]
            if not can_operate_tenant(request.user, tenant):
                raise PermissionDenied
            try:
                endpoint, secret = create_webhook_endpoint(
                    tenant=tenant,
                    url=form.cleaned_data["url"],
                    event_types=form.cleaned_data["event_types"],
                    description=form.cleaned_data["description"],
                    actor=Actor.for_user(request.user),
                )
            except ValidationError as exc:
                add_service_error(form, exc)
            else:
                return self._render_secret(request, endpoint, secret, created=True)
        return render_form_page(
            self,
            request,
            form,
            title="New webhook endpoint",
            fields=["tenant", "url", "description", "event_types"],
        )

    def _render_secret(self, request, endpoint: WebhookEndpoint, secret: str, *, created: bool):
        # The secret is in this response only (not in a message, which the session would
        # keep until shown), and no browser or proxy may cache it.
        verb = "created" if created else "has a new secret"
        context = {
            **self.admin_site.each_context(request),
            "title": f"Webhook endpoint “{endpoint}” {verb}",
            "opts": self.opts,
            "endpoint": endpoint,
            "secret": secret,
            "created": created,
        }
        response = TemplateResponse(request, "admin/webhooks/webhookendpoint/secret.html", context)
        add_never_cache_headers(response)
        return response

    # --- changes ------------------------------------------------------------------------

    def save_model(self, request, obj, form, change):
        saved = self.call_service(
            form,
            lambda: update_webhook_endpoint(
                endpoint=obj,
                actor=Actor.for_user(request.user),
                url=form.cleaned_data["url"],
                event_types=form.cleaned_data["event_types"],
                description=form.cleaned_data.get("description", ""),
            ),
        )
        obj.url, obj.event_types, obj.description = saved.url, saved.event_types, saved.description

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["may_operate"] = obj.is_active and can_operate_tenant(request.user, obj.tenant)
            context["endpoint_actions"] = [
                ("send_test_events", "Send a test event…"),
                ("rotate_secret", "Rotate the secret…"),
                ("deactivate_endpoints", "Deactivate…"),
            ]
            context["action_checkbox_name"] = helpers.ACTION_CHECKBOX_NAME
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- actions ------------------------------------------------------------------------

    def _operable(self, request, endpoint: WebhookEndpoint) -> bool:
        if can_operate_tenant(request.user, endpoint.tenant):
            return True
        self.message_user(request, f"{endpoint}: you may not operate it.", messages.ERROR)
        return False

    @admin.action(description="Send a test event…", permissions=["operate"])
    def send_test_events(self, request, queryset):
        actor = Actor.for_user(request.user)

        def send(endpoint: WebhookEndpoint, _reason: str) -> None:
            if not self._operable(request, endpoint):
                return
            try:
                send_test_event(endpoint=endpoint, actor=actor)
            except ValidationError as exc:
                self.message_user(request, f"{endpoint}: {exc.messages[0]}", messages.WARNING)
            else:
                self.message_user(
                    request,
                    f"{endpoint}: a webhook.test event is on its way (see its deliveries).",
                    messages.SUCCESS,
                )

        return confirm_with_reason(
            self,
            request,
            queryset.filter(is_active=True).select_related("tenant"),
            action="send_test_events",
            title="Send a test event",
            question="Each of these endpoints receives a signed webhook.test event, whatever "
            "events it subscribes to.",
            label=None,
            submit="Send the test event",
            apply=send,
        )

    @admin.action(description="Rotate the signing secret…", permissions=["operate"])
    def rotate_secret(self, request, queryset):
        endpoint = single_selected(self, request, queryset, verb="rotate its secret")
        if endpoint is None:
            return None
        rotated: list[tuple[WebhookEndpoint, str]] = []

        def rotate(endpoint: WebhookEndpoint, _reason: str) -> None:
            if not self._operable(request, endpoint):
                return
            try:
                rotated.append(
                    rotate_webhook_secret(endpoint=endpoint, actor=Actor.for_user(request.user))
                )
            except ValidationError as exc:
                self.message_user(request, f"{endpoint}: {exc.messages[0]}", messages.WARNING)

        response = confirm_with_reason(
            self,
            request,
            queryset.filter(pk=endpoint.pk, is_active=True).select_related("tenant"),
            action="rotate_secret",
            title="Rotate the signing secret",
            question="Every delivery from now on, retries of earlier events included, is "
            "signed with a new secret, shown once on the next page. Receivers that still "
            "check the old one will refuse them until they have the new one.",
            label=None,
            submit="Rotate the secret",
            apply=rotate,
        )
        if rotated:
            return self._render_secret(request, *rotated[0], created=False)
        return response

    @admin.action(description="Deactivate the selected endpoints…", permissions=["operate"])
    def deactivate_endpoints(self, request, queryset):
        actor = Actor.for_user(request.user)

        def deactivate(endpoint: WebhookEndpoint, reason: str) -> None:
            if not self._operable(request, endpoint):
                return
            deactivate_webhook_endpoint(endpoint=endpoint, actor=actor, reason=reason)
            self.message_user(
                request, f"{endpoint} deactivated: nothing more is sent to it.", messages.SUCCESS
            )

        return confirm_with_reason(
            self,
            request,
            queryset.filter(is_active=True).select_related("tenant"),
            action="deactivate_endpoints",
            title="Deactivate webhook endpoints",
            question="Nothing more is sent to these endpoints, not even deliveries already "
            "queued (they are settled as failed). A deactivated endpoint cannot be turned "
            "back on; create a new one instead.",
            label="Why are they deactivated?",
            submit="Deactivate",
            apply=deactivate,
        )
