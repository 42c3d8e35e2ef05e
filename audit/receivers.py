"""Django's auth signals, each handed to the service that records it (audit.auth_events)."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from audit import auth_events


def on_user_logged_in(sender, request, user, **kwargs):
    auth_events.record_sign_in(user=user)


def on_user_logged_out(sender, request, user, **kwargs):
    auth_events.record_sign_out(user=user)


def on_user_login_failed(sender, credentials, request=None, **kwargs):
    # Django has already masked the password in `credentials`; only the name is taken.
    auth_events.record_failed_sign_in(username=credentials.get(get_user_model().USERNAME_FIELD))
