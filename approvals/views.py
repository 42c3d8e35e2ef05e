"""The page a signed e-mail link opens: GET shows and asks; only a POST decides."""

from __future__ import annotations

from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from approvals.admin import proposal_display
from approvals.links import DecisionError, LinkRefused, decide_by_link, link_for, review_url
from approvals.selectors import proposal_summary


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
    if request.method == "POST":
        comment = request.POST.get("comment", "")
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
