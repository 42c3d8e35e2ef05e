"""The page a signed e-mail link opens: GET shows and asks; only a POST decides, and only
with a code from the link's reviewer's second factor (when sign-in requires one: the link
is one factor, the e-mail inbox it reached; the code is the other)."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib import admin
from django.shortcuts import render as _render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from approvals.admin import proposal_display
from approvals.links import (
    DecisionError,
    LinkRefused,
    decide_by_link,
    link_for,
    review_url,
    second_factor_refusal,
)
from approvals.selectors import proposal_summary


def render(request, template: str, context: dict, status: int = 200):
    site = {"site_header": admin.site.site_header, "site_title": admin.site.site_title}
    return _render(request, template, {**site, **context}, status=status)


def _private(view):
    """The URL is a credential: no caching, no Referer carrying it anywhere, no indexing."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        # Referers name only our origin, never the path (the token), not even to our own
        # static files' logs. Not "no-referrer": browsers then send `Origin: null` with the
        # form's POST, and Django's CSRF check refuses it.
        response["Referrer-Policy"] = "strict-origin"
        response["X-Robots-Tag"] = "noindex, nofollow"
        return response

    return never_cache(wrapped)


@_private
@sensitive_post_parameters("code")
@require_http_methods(["GET", "POST"])
def approval_link(request, token: str):
    try:
        link = link_for(token)
    except LinkRefused as exc:
        return render(request, "approvals/link.html", {"refused": str(exc)}, status=exc.status)
    context = {
        "link": link,
        "approval": link.request,
        "summary": proposal_summary(link.request),
        "proposal": proposal_display(link.request.proposal),
        "review_url": review_url(link.request),
    }
    if settings.DESK_REQUIRE_2FA:
        context["needs_code"] = True
    if request.method == "POST":
        comment = request.POST.get("comment", "")
        refusal = second_factor_refusal(request, link)
        if refusal:
            message, status = refusal
            context.update(error=message, comment=comment)
            return render(request, "approvals/link.html", context, status=status)
        try:
            decide_by_link(token=token, comment=comment)
        except LinkRefused as exc:
            return render(request, "approvals/link.html", {"refused": str(exc)}, status=exc.status)
        except DecisionError as exc:
            status = 403 if exc.code == "forbidden" else 400
            context.update(error=str(exc), comment=comment)
            return render(request, "approvals/link.html", context, status=status)
        return render(request, "approvals/link.html", {**context, "done": True})
    return render(request, "approvals/link.html", context)
