"""The second factor's pages (enrol, give a code) and the page a locked-out attempt gets."""

from __future__ import annotations

from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import logout
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from tenants.signin.second_factor import (
    EnrolmentRefused,
    Outcome,
    confirm_enrolment,
    has_second_factor,
    pending_device,
    qr_svg,
    recovery_codes_left,
    secret_text,
    verify,
)

WRONG_CODE = "That code is not right (or was already used). Try the code your app shows now."


def _page(request, template: str, context: dict, status: int = 200):
    site = {
        "site_header": admin.site.site_header,
        "site_title": admin.site.site_title,
        "next": _next(request),
    }
    return render(request, template, {**site, **context}, status=status)


def _next(request) -> str:
    """Where to go once verified: the page asked for, if it is one of ours."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse("admin:index")


def _with_next(page: str, request) -> str:
    return f"{reverse(page)}?{urlencode({'next': _next(request)})}"


def locked_out(request, original_response=None, credentials=None):
    """What a locked-out attempt gets (axes' AXES_LOCKOUT_CALLABLE): a page saying so, 429.
    A session signed in with the password only is ended."""
    if getattr(request, "user", None) is not None and request.user.is_authenticated:
        logout(request)
    cool_off = get_cool_off(request)
    context = {
        "title": "Sign-in locked",
        "minutes": int(cool_off.total_seconds() // 60) if cool_off else None,
        "failure_limit": settings.AXES_FAILURE_LIMIT,
    }
    return _page(
        request, "signin/locked_out.html", context, status=settings.AXES_HTTP_RESPONSE_CODE
    )


@never_cache
@sensitive_post_parameters("code")
@require_http_methods(["GET", "POST"])
def setup(request):
    """Enrol: scan the QR code (or type the secret), confirm with a code; get recovery codes."""
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    try:
        device = pending_device(user)
    except EnrolmentRefused:
        return redirect(_with_next("signin:verify", request))
    error = ""
    if request.method == "POST":
        outcome = confirm_enrolment(
            request=request,
            user=user,
            device_id=device.pk,
            code=request.POST.get("code", ""),
        )
        if outcome is Outcome.LOCKED_OUT:
            return locked_out(request)
        if isinstance(outcome, list):
            context = {"title": "Your recovery codes", "codes": outcome}
            return _page(request, "signin/recovery_codes.html", context)
        error = WRONG_CODE
    context = {
        "title": "Set up your second factor",
        "qr_svg": qr_svg(device),
        "secret": secret_text(device),
        "error": error,
    }
    return _page(request, "signin/setup.html", context, status=400 if error else 200)


@never_cache
@sensitive_post_parameters("code")
@require_http_methods(["GET", "POST"])
def verify_view(request):
    """Give a code from the app, or a recovery code."""
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    if not has_second_factor(user):
        return redirect(_with_next("signin:setup", request))
    if user.is_verified():
        return redirect(_next(request))
    error = ""
    if request.method == "POST":
        outcome = verify(request=request, user=user, code=request.POST.get("code", ""))
        if outcome is Outcome.LOCKED_OUT:
            return locked_out(request)
        if outcome is Outcome.RECOVERY_CODE_USED:
            left = recovery_codes_left(user)
            messages.warning(
                request,
                f"You signed in with a recovery code; {left} left. Lost your phone? Ask "
                "platform staff to reset your second factor.",
            )
        if outcome in (Outcome.VERIFIED, Outcome.RECOVERY_CODE_USED):
            return redirect(_next(request))
        error = WRONG_CODE
    context = {"title": "Your second factor", "error": error}
    return _page(request, "signin/verify.html", context, status=400 if error else 200)
