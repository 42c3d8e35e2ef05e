"""Helpers of the sign-in protection tests: the real sign-in page, codes from a device."""

from __future__ import annotations

import time

from django.contrib import admin
from django.urls import reverse
from django_otp.oath import TOTP

from audit.models import AuditEvent

LOGIN_URL = reverse("admin:login")
LOGOUT_URL = reverse("admin:logout")
SETUP_URL = reverse("signin:setup")
VERIFY_URL = reverse("signin:verify")
WRONG_PASSWORD = "Hunter2-not-the-password"


def sign_in(client, username: str, password: str, **headers):
    """Post the admin's sign-in form, as a browser does."""
    return client.post(
        LOGIN_URL, {"username": username, "password": password, "next": "/admin/"}, **headers
    )


def code_of(device) -> str:
    """The code the person's app shows now."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    return f"{totp.token():06d}"


def signed_in_user_id(client):
    return client.session.get("_auth_user_id")


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("tenant_id", "seq"))


def admin_changelists() -> list[str]:
    return [
        reverse(f"admin:{m._meta.app_label}_{m._meta.model_name}_changelist")
        for m in admin.site._registry
    ]
