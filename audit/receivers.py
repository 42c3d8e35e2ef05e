"""Django's auth signals, each handed to the service that records it (audit.auth_events)."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from audit import auth_events
from tenants.signin.lockouts import refused_by_lockout


def on_user_logged_in(sender, request, user, **kwargs):
    auth_events.record_sign_in(user=user)


def on_user_logged_out(sender, request, user, **kwargs):
    auth_events.record_sign_out(user=user)


def on_user_login_failed(sender, credentials, request=None, **kwargs):
    # Django has already masked the password in `credentials`; only the name is taken.
    # A lockout refuses before any password is checked: that is the reason recorded.
    auth_events.record_failed_sign_in(
        username=credentials.get(get_user_model().USERNAME_FIELD),
        reason=auth_events.SignInFailure.LOCKED_OUT if refused_by_lockout(request) else None,
    )


def on_user_locked_out(sender, request, username, ip_address, **kwargs):
    # django-axes sends this for the failure that reaches the limit, and again for every
    # attempt it then refuses (already recorded as a failure, above): only the first is news.
    if refused_by_lockout(request):
        return
    auth_events.record_locked_out(
        username=username,
        ip_address=ip_address,
        failures=getattr(request, "axes_failures_since_start", None),
    )
