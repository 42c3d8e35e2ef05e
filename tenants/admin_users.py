"""People's accounts in the admin: Django's user admin through the services that put them
on the record, the admin's own "change my password" page, and its sign-in form.

Whoever changes a tenant member's account does it on that tenant's audit trail. Only the
member sets their password, or platform staff holding an open break-glass grant on each of
the member's tenants; anyone else's attempt (a superuser's too) is refused and recorded. A
member's account is not deleted here: their tenants' operators revoke their memberships.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.admin.forms import AdminPasswordChangeForm as OwnPasswordChangeForm
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model, update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.utils.html import escape
from django.views.decorators.debug import sensitive_post_parameters

from audit.auth_events import SignInFailure, record_failed_sign_in
from audit.services import Actor
from tenants.models import Membership
from tenants.selectors import membership_tenant_ids
from tenants.services import (
    PasswordResetRefused,
    add_user,
    change_own_password,
    delete_user,
    reset_password,
    update_user,
)

User = get_user_model()


class AuditedAuthenticationForm(AdminAuthenticationForm):
    """The admin's sign-in form. Django's `user_login_failed` signal records a wrong
    password or an unknown name; this records the refusals it does not see: a name the
    form refuses before any look-up (a NUL byte), and someone who may not use the admin."""

    def clean(self):
        try:
            return super().clean()
        finally:
            tried = self.data.get("username") or ""
            if tried.strip() and self.has_error("username"):
                record_failed_sign_in(username=tried, reason=SignInFailure.INVALID_USERNAME)

    def confirm_login_allowed(self, user):
        try:
            super().confirm_login_allowed(user)
        except ValidationError:
            reason = SignInFailure.INACTIVE_USER if not user.is_active else SignInFailure.NOT_STAFF
            record_failed_sign_in(username=user.get_username(), reason=reason)
            raise


class OwnPasswordChangeView(auth_views.PasswordChangeView):
    """Django's "change my password" page (old password, new one twice), through the
    service that records it."""

    form_class = OwnPasswordChangeForm

    def form_valid(self, form):
        change_own_password(user=form.user, password=form.cleaned_data["new_password1"])
        update_session_auth_hash(self.request, form.user)
        return HttpResponseRedirect(self.get_success_url())


def password_change(request, extra_context=None):
    """`AdminSite.password_change`, with the page above."""
    site = admin.site
    defaults = {
        "success_url": reverse("admin:password_change_done", current_app=site.name),
        "extra_context": {**site.each_context(request), **(extra_context or {})},
    }
    if site.password_change_template is not None:
        defaults["template_name"] = site.password_change_template
    request.current_app = site.name
    return OwnPasswordChangeView.as_view(**defaults)(request)


admin.site.login_form = AuditedAuthenticationForm
admin.site.password_change = password_change


def is_tenant_member(user) -> bool:
    return bool(membership_tenant_ids(user))


if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class AccountAdmin(UserAdmin):
    """Django's user admin, each write through a service that records it."""

    def save_model(self, request, obj, form, change):
        actor = Actor.for_user(request.user)
        if not change:
            add_user(user=obj, actor=actor)
            return
        changes = {name: form.cleaned_data[name] for name in form.changed_data}
        changes.pop("password", None)  # shown, never set, on this form
        update_user(user=obj, actor=actor, changes=changes)

    def save_related(self, request, form, formsets, change):
        if not change:
            super().save_related(request, form, formsets, change)
            return
        # update_user has set the groups and permissions with the rest, and recorded them.
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Deleting a member takes their memberships with them, which is their tenants'
        # operators' to do. (On PostgreSQL the memberships are out of sight here.)
        if any(is_tenant_member(user) for user in objs):
            perms_needed.add(Membership._meta.verbose_name)
        return deleted, model_count, perms_needed, protected

    def delete_model(self, request, obj):
        delete_user(user=obj, actor=Actor.for_user(request.user))

    def delete_queryset(self, request, queryset):
        # delete_selected has refused members on its confirmation page.
        actor = Actor.for_user(request.user)
        for user in queryset:
            delete_user(user=user, actor=actor)

    @method_decorator(sensitive_post_parameters())
    def user_change_password(self, request, id, form_url=""):
        if request.method != "POST":
            return super().user_change_password(request, id, form_url)
        # Django's page, with the password set through reset_password, which may refuse.
        user = self.get_object(request, unquote(id))
        if not self.has_change_permission(request, user):
            raise PermissionDenied
        if user is None:
            raise Http404(f"No user with primary key {escape(id)!r}.")
        form = self.change_password_form(user, request.POST)
        if form.is_valid():
            usable = form.cleaned_data["set_usable_password"]
            if not usable and "unset-password" not in request.POST:
                messages.error(request, "Conflicting form data submitted. Please try again.")
                return HttpResponseRedirect(request.get_full_path())
            try:
                reset_password(
                    user=user,
                    password=form.cleaned_data["password1"] if usable else None,
                    actor=Actor.for_user(request.user),
                    via="admin",
                )
            except PasswordResetRefused as refused:
                form.add_error(None, str(refused))
            else:
                self.log_change(request, user, self.construct_change_message(request, form, None))
                message = (
                    "Password changed successfully."
                    if usable
                    else "Password-based authentication was disabled."
                )
                messages.success(request, message)
                update_session_auth_hash(request, form.user)
                return HttpResponseRedirect(
                    reverse(f"{self.admin_site.name}:auth_user_change", args=(user.pk,))
                )
        return self._password_page(request, user, form, form_url)

    def _password_page(self, request, user, form, form_url):
        # The context Django's UserAdmin.user_change_password renders its form with.
        title = "Change password: %s" if user.has_usable_password() else "Set password: %s"
        context = {
            "title": title % escape(user.get_username()),
            "adminForm": admin.helpers.AdminForm(
                form, [(None, {"fields": list(form.base_fields)})], {}
            ),
            "form_url": form_url,
            "form": form,
            "is_popup": IS_POPUP_VAR in request.POST or IS_POPUP_VAR in request.GET,
            "is_popup_var": IS_POPUP_VAR,
            "add": True,
            "change": False,
            "has_delete_permission": False,
            "has_change_permission": True,
            "has_absolute_url": False,
            "opts": self.opts,
            "original": user,
            "save_as": False,
            "show_save": True,
            **self.admin_site.each_context(request),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request,
            self.change_user_password_template or "admin/auth/user/change_password.html",
            context,
        )
