"""The admin's tenant wall.

Every ModelAdmin and inline of a tenant-scoped model uses `TenantScopedAdmin`: what a user
sees, may change and may pick in a form follows from their memberships (and break-glass
grants) through `tenants.scoping` and `tenants.permissions` — never from Django model
permissions nor the superuser flag, which open no tenant.

Saves and deletes go through the apps' services; a ValidationError a service raises after
the form accepted the input (a rule the form cannot see, such as a slug taken in a tenant
the user may not read) is shown on the form again, and nothing is written.

Also here: the few widgets and helpers every app's admin shares (pretty JSON, the
confirmation page of actions, the page of a form that is not a model form). The
changelists of big tables (runs, approvals, the audit trail) add `BigTableAdmin` and its
paginator, in tenants.admin_pagination.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import get_fields_from_path, unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models.constants import LOOKUP_SEP
from django.http import Http404
from django.template.response import TemplateResponse
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from tenants.models import Membership, Tenant
from tenants.permissions import (
    can_audit_tenant,
    can_operate_tenant,
    can_review_tenant,
    can_view_tenant,
)
from tenants.safe_json import SafeJSONField
from tenants.scoping import is_platform_staff, member_tenant_ids, scope_to_user, tenants_for_user

Kind = Membership.Kind


@dataclass(frozen=True)
class Access:
    """One kind of access to a tenant: its predicate, and the membership kinds that carry it."""

    predicate: Callable[[Any, Tenant | None], bool]
    kinds: tuple[str, ...] | None  # None: any membership


ACCESS = {
    "view": Access(can_view_tenant, None),
    "operate": Access(can_operate_tenant, (Kind.OPERATOR,)),
    "review": Access(can_review_tenant, (Kind.REVIEWER,)),
    "audit": Access(can_audit_tenant, (Kind.AUDITOR, Kind.OPERATOR)),
}
PLATFORM = "platform"  # flagged platform staff, no tenant needed


def tenant_of(obj) -> Tenant | None:
    """The tenant an object (or an inline's parent object) belongs to."""
    if isinstance(obj, Tenant):
        return obj
    return getattr(obj, "tenant", None)


def has_tenant_field(model) -> bool:
    try:
        field = model._meta.get_field("tenant")
    except FieldDoesNotExist:
        return False
    return field.is_relation and field.related_model is Tenant


def may(user, access: str | None, obj=None) -> bool:
    """Whether the user has `access` to the object's tenant (to any tenant, without one)."""
    if access is None:
        return False  # nobody, superusers and platform staff included
    if access == PLATFORM:
        return is_platform_staff(user)
    rule = ACCESS[access]
    if obj is None:
        return bool(member_tenant_ids(user, kinds=rule.kinds))
    return rule.predicate(user, tenant_of(obj))


def scoped_choices(model, user) -> models.QuerySet | None:
    """What a form that writes may offer for a relation: only what the user operates."""
    operators = ACCESS["operate"].kinds
    if model is Tenant:
        return tenants_for_user(user, kinds=operators).order_by("name")
    if model is get_user_model():
        # People of the tenants the user operates: never a list of every account.
        return (
            model._default_manager.filter(
                is_active=True,
                is_staff=True,
                memberships__tenant_id__in=member_tenant_ids(user, kinds=operators),
            )
            .distinct()
            .order_by("username")
        )
    if has_tenant_field(model):
        return scope_to_user(model._default_manager.all(), user, kinds=operators)
    return None


def lookup_follows_keys_only(model, lookup: str, filter_paths: Iterable[str] = ()) -> bool:
    """Whether a changelist lookup reads related rows through their primary key only.

    `?tenant__id__exact=3` or `?role=5` compare a key the row holds; `?started_by__password__regex=`
    or `?tenant__memberships__user__email=` would probe other rows' columns and are refused,
    unless a list filter offers exactly that path.
    """
    opts = model._meta
    path: list[str] = []
    parts = lookup.split(LOOKUP_SEP)
    for index, part in enumerate(parts):
        try:
            field = opts.get_field(part)
        except FieldDoesNotExist:
            return True  # a lookup or transform (exact, in, regex, a JSON key): no more path
        path.append(part)
        if not field.is_relation:
            return True
        if field.related_model is None:
            return False  # a generic relation: no single table to scope
        remote = field.related_model._meta
        rest = parts[index + 1 :]
        if not rest or rest[0] in ("pk", remote.pk.name):
            return True
        try:
            remote.get_field(rest[0])
        except FieldDoesNotExist:
            return True  # a lookup on the key itself (tenant__in, role__isnull)
        if LOOKUP_SEP.join([*path, rest[0]]) not in filter_paths:
            return False
        opts = remote
    return True


# --- widgets shared by the apps' admins ------------------------------------------------


def dump_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, cls=DjangoJSONEncoder)


def username_of(user) -> str:
    """A person named in a read-only field, without a link to the user admin (platform-only)."""
    return user.get_username() if user is not None else "—"


def pretty_json(value):
    """Read-only display of a JSON value, indented."""
    if value is None:
        return "—"
    return format_html('<pre class="desk-json">{}</pre>', dump_json(value))


class PrettyJSONField(SafeJSONField):
    """A JSON textarea that shows its value indented, as people read and edit it; it takes
    only safe JSON (tenants.safe_json)."""

    widget = forms.Textarea(attrs={"rows": 18, "class": "vLargeTextField desk-json"})

    def prepare_value(self, value):
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)


class ScopedRelatedFilter(admin.RelatedOnlyFieldListFilter):
    """Offers only the related rows found in what the user may see, and always applies the
    value asked for: `?tenant__id__exact=<another tenant>` shows nothing, rather than being
    dropped (as Django drops the parameters of a filter with fewer than two choices)."""

    def has_output(self):
        return bool(self.used_parameters) or super().has_output()

    def field_choices(self, field, request, model_admin):
        # Django's choices, with each related row's tenant read in the same query (a role is
        # named with its tenant's slug): one query, however many rows.
        keys = (
            model_admin.get_queryset(request)
            .distinct()
            .values_list(f"{self.field_path}__pk", flat=True)
        )
        related = field.remote_field.model._default_manager.filter(pk__in=keys)
        if has_tenant_field(related.model):
            related = related.select_related("tenant")
        ordering = self.field_admin_ordering(field, request, model_admin)
        if ordering:
            related = related.order_by(*ordering)
        return [(obj.pk, str(obj)) for obj in related]


class TenantScopedAdmin:
    """Mixin for every ModelAdmin and inline of a tenant-scoped model (and of Tenant itself).

    Set, per admin, which access each operation needs: "view" (any member), "operate",
    "review", "audit" (auditors and operators), PLATFORM (flagged platform staff) or None
    (nobody).
    """

    tenant_field = "tenant"
    view_access: str | None = "view"
    add_access: str | None = "operate"
    change_access: str | None = "operate"
    delete_access: str | None = "operate"

    formfield_overrides = {models.JSONField: {"form_class": PrettyJSONField}}

    # --- what the user sees ------------------------------------------------------------

    def get_queryset(self, request):
        return self.scope_queryset(request, super().get_queryset(request))

    def scope_queryset(self, request, queryset):
        """The rows of the tenants the user may see (as one of the kinds the admin needs)."""
        kinds = self._visible_kinds()
        if kinds == ():
            return queryset.none()
        return scope_to_user(queryset, request.user, tenant_field=self.tenant_field, kinds=kinds)

    def _visible_kinds(self) -> tuple[str, ...] | None:
        kinds: set[str] = set()
        for access in (self.view_access, self.change_access):
            if access is None or access == PLATFORM:
                continue
            if ACCESS[access].kinds is None:
                return None
            kinds.update(ACCESS[access].kinds)
        return tuple(sorted(kinds))

    # --- what the user may do ----------------------------------------------------------

    def has_module_permission(self, request):
        return bool(member_tenant_ids(request.user))

    def has_view_permission(self, request, obj=None):
        return may(request.user, self.view_access, obj) or may(
            request.user, self.change_access, obj
        )

    def has_add_permission(self, request, obj=None):
        # ModelAdmin asks without an object (any tenant); an inline passes its parent.
        return may(request.user, self.add_access, obj)

    def has_change_permission(self, request, obj=None):
        return may(request.user, self.change_access, obj)

    def has_delete_permission(self, request, obj=None):
        return may(request.user, self.delete_access, obj)

    def has_operate_permission(self, request, obj=None):
        """For admin actions declared with permissions=["operate"]."""
        return may(request.user, "operate", obj)

    def has_platform_permission(self, request, obj=None):
        """For admin actions declared with permissions=["platform"]."""
        return may(request.user, PLATFORM, obj)

    def save_form(self, request, form, change):
        # The form only offers the user's own tenants; this is the last line all the same:
        # the object about to be written must belong to a tenant the user may write to.
        obj = super().save_form(request, form, change)
        allowed = self.has_change_permission if change else self.has_add_permission
        if not allowed(request, obj):
            raise PermissionDenied
        return obj

    # --- what a service refuses -------------------------------------------------------

    def call_service(self, form, call: Callable[[], Any]):
        """Make save_model's service call; a ValidationError it raises goes on the form, which
        the add or change page shows again (Django's view rolls its transaction back)."""
        try:
            return call()
        except ValidationError as exc:
            add_service_error(form, exc)
            raise ServiceRefused(form) from exc

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceRefused as refused:
            # Django's view has rolled back; show the page as for a GET, with the form as
            # posted and the service's errors on it (get_form hands that form back).
            display_request = copy.copy(request)
            display_request.method = "GET"
            display_request.desk_refused_form = refused.form
            return super().changeform_view(display_request, object_id, form_url, extra_context)

    def get_form(self, request, obj=None, change=False, **kwargs):
        form_class = super().get_form(request, obj, change, **kwargs)
        refused = getattr(request, "desk_refused_form", None)
        if refused is None:
            return form_class
        return lambda *args, **kwargs: refused

    # --- what forms offer --------------------------------------------------------------

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if "queryset" not in kwargs:
            queryset = scoped_choices(db_field.related_model, request.user)
            if queryset is not None:
                kwargs["queryset"] = queryset
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if "queryset" not in kwargs:
            queryset = scoped_choices(db_field.related_model, request.user)
            if queryset is not None:
                kwargs["queryset"] = queryset
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    # --- what the changelist lets through ----------------------------------------------

    def get_list_filter(self, request):
        # A plain related-field filter lists every row of the related table; offer only
        # the values found in the rows this user may see.
        return [self._scoped_filter(item) for item in super().get_list_filter(request)]

    def _scoped_filter(self, item):
        if isinstance(item, str) and get_fields_from_path(self.model, item)[-1].is_relation:
            return (item, ScopedRelatedFilter)
        return item

    def lookup_allowed(self, lookup, value, request=None):
        filters = self.get_list_filter(request) if request is not None else self.list_filter
        paths = [item[0] if isinstance(item, (list, tuple)) else item for item in filters]
        if not lookup_follows_keys_only(
            self.model, lookup, [p for p in paths if isinstance(p, str)]
        ):
            return False
        return super().lookup_allowed(lookup, value, request)

    # --- another tenant's object does not exist ----------------------------------------

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        # Change, delete and history pages of an object outside the user's tenants answer
        # exactly as for an object that never existed.
        raise Http404(f"No {opts.verbose_name} with this id.")

    def history_view(self, request, object_id, extra_context=None):
        # simple-history would otherwise read an object it cannot find from its history rows.
        if self.get_object(request, unquote(object_id)) is None:
            raise Http404(f"No {self.opts.verbose_name} with this id.")
        return super().history_view(request, object_id, extra_context)


class ServiceRefused(Exception):
    """A service refused what the form accepted; the form carries the errors."""

    def __init__(self, form):
        super().__init__("refused by the service")
        self.form = form


def add_service_error(form, error: ValidationError) -> None:
    """Put a service's ValidationError on the form: on the fields it names, if the form has
    them, otherwise above the form."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)


class TenantScopedHistoryAdmin(TenantScopedAdmin, SimpleHistoryAdmin):
    """A scoped admin with simple-history's pages; history is for reading, never reverting
    (writes go through the services)."""

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        if self.get_object(request, unquote(object_id)) is None:
            raise Http404(f"No {self.opts.verbose_name} with this id.")
        if request.method == "POST":
            raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)

    def revert_disabled(self, request, obj=None):
        return True


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 80}))

    def __init__(self, *args, label: str | None, **kwargs):
        super().__init__(*args, **kwargs)
        if label is None:
            del self.fields["reason"]  # a plain "Are you sure?"
        else:
            self.fields["reason"].label = label


def confirm_with_reason(
    modeladmin,
    request,
    queryset,
    *,
    action: str,
    title: str,
    question: str,
    label: str | None,
    submit: str,
    apply: Callable[[Any, str], None],
):
    """An action's confirmation page asking why (like delete_selected, plus a text box;
    without a `label`, no text box).

    Renders the page until it is posted back (with a reason), then calls `apply(obj, reason)`
    for each selected object and returns None (the changelist follows).
    """
    if not queryset.exists():
        modeladmin.message_user(
            request, "None of the selected items can be changed.", messages.WARNING
        )
        return None
    form = ReasonForm(request.POST if "confirm" in request.POST else None, label=label)
    if form.is_bound and form.is_valid():
        for obj in queryset:
            apply(obj, form.cleaned_data.get("reason", ""))
        return None
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "question": question,
        "submit": submit,
        "form": form,
        "objects": list(queryset),
        "action": action,
        "opts": opts,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "is_popup": IS_POPUP_VAR in request.GET,
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, "admin/agentdesk/confirm_with_reason.html", context)


def single_selected(modeladmin, request, queryset, *, verb: str):
    """The one object an action that must not run in bulk was given, or None (with a message)."""
    objects = list(queryset[:2])
    if len(objects) != 1:
        modeladmin.message_user(
            request,
            f"Select exactly one {modeladmin.opts.verbose_name} to {verb}.",
            messages.WARNING,
        )
        return None
    return objects[0]


def render_form_page(
    modeladmin,
    request,
    form,
    *,
    title: str,
    fields: list[str],
    **extra,
):
    """Show a plain form (not the model's) on the admin's add page, e.g. "Start a run"."""
    fieldsets = [(None, {"fields": fields})]
    admin_form = helpers.AdminForm(form, fieldsets, {}, model_admin=modeladmin)
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "adminform": admin_form,
        "object_id": None,
        "original": None,
        "is_popup": False,
        "to_field": None,
        "media": modeladmin.media + admin_form.media,
        "inline_admin_formsets": [],
        "errors": helpers.AdminErrorList(form, []),
        "preserved_filters": modeladmin.get_preserved_filters(request),
        "show_save_and_add_another": False,
        "show_save_and_continue": False,
        **extra,
    }
    return modeladmin.render_change_form(request, context, add=True)
