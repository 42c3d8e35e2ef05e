"""No page without the second factor (DESK_REQUIRE_2FA).

A signed-in person whose session is not verified by django-otp (`user.is_verified()`) is
sent to enrol (no device yet) or to give a code, from every page but those, sign-out, the
health check and the API (which takes bearer keys, never the session). A signed e-mail
approval link is no exception: the session in front of it is held to the same rule.
Nothing a refused request asked for runs: the view is never called.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponseRedirect
from django.urls import Resolver404, resolve, reverse
from django.utils.http import urlencode

from tenants.signin.second_factor import has_second_factor

# Route names (namespace:name) a signed-in person reaches before the second factor.
OPEN_ROUTES = frozenset(
    {
        "signin:setup",
        "signin:verify",
        "admin:logout",
        "healthz",
    }
)
OPEN_NAMESPACES = frozenset({"api"})


def is_open(path: str) -> bool:
    try:
        match = resolve(path)
    except Resolver404:
        return False
    return match.view_name in OPEN_ROUTES or bool(set(match.namespaces) & OPEN_NAMESPACES)


class SecondFactorRequiredMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        if (
            settings.DESK_REQUIRE_2FA
            and user.is_authenticated
            and not user.is_verified()
            and not is_open(request.path_info)
        ):
            page = "signin:verify" if has_second_factor(user) else "signin:setup"
            query = urlencode({"next": request.get_full_path()})
            return HttpResponseRedirect(f"{reverse(page)}?{query}")
        return self.get_response(request)
