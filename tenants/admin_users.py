"""People's accounts in the admin: its sign-in form, so that every refused sign-in is on
the record."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError

from audit.auth_events import SignInFailure, record_failed_sign_in


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


admin.site.login_form = AuditedAuthenticationForm
