"""Signed approve/reject links in notification e-mails.

One token per (request, action, reviewer), 256 random bits; only its SHA-256 is stored. A
link's page only shows what is proposed and asks for confirmation (mail scanners prefetch
links); the decision is a POST through `decide`, four eyes and all, for the proposal
version the e-mail showed, once, before the link expires.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalLink, ApprovalRequest
from approvals.services import DecisionError, decide
from tenants import locking, rls
from tenants.locking import Level, lock

TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


class LinkRefused(Exception):
    """The link cannot be used; nothing was written."""

    def __init__(self, message: str, *, status: int = 410):
        super().__init__(message)
        self.status = status


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def absolute(path: str) -> str:
    return f"{settings.DESK_BASE_URL}{path}"


def review_url(request: ApprovalRequest) -> str:
    return absolute(reverse("admin:approvals_approvalrequest_change", args=[request.pk]))


def issue_links(*, request: ApprovalRequest, reviewer_id: int) -> dict[str, str]:
    """Create this reviewer's approve and reject links for the request (inside the caller's
    transaction); return {action: URL}."""
    expires_at = min(
        timezone.now() + timedelta(hours=settings.DESK_APPROVAL_LINK_HOURS),
        request.due_at + timedelta(days=1),
    )
    urls = {}
    for action in ApprovalLink.Action.values:
        token = secrets.token_urlsafe(32)
        ApprovalLink.objects.create(
            tenant_id=request.tenant_id,
            request=request,
            reviewer_id=reviewer_id,
            action=action,
            token_hash=_hash(token),
            version=request.version,
            expires_at=expires_at,
        )
        urls[action] = absolute(reverse("approval-link", args=[token]))
    return urls


def _tenant_of(token: str) -> int:
    if not TOKEN.match(token or ""):
        raise LinkRefused("This link is not valid.", status=404)
    with rls.platform_context():
        # Only the tenant of the one row whose hash matches is read across tenants.
        tenant_id = (
            ApprovalLink.objects.filter(token_hash=_hash(token))
            .values_list("tenant_id", flat=True)
            .first()
        )
    if tenant_id is None:
        raise LinkRefused("This link is not valid.", status=404)
    return tenant_id


def _usable(link: ApprovalLink) -> None:
    if link.used_at is not None:
        raise LinkRefused("This link has already been used.")
    if link.expires_at <= timezone.now():
        raise LinkRefused("This link has expired; open the request in AgentDesk instead.")
    request = link.request
    if not request.is_pending:
        raise LinkRefused(f"This request is already {request.get_status_display().lower()}.")
    if request.version != link.version:
        raise LinkRefused(
            "The proposal was edited after this e-mail was sent: open the request in "
            "AgentDesk and read it again before deciding.",
            status=409,
        )


def link_for(token: str) -> ApprovalLink:
    """The link a token stands for, if it can still be used (for its confirmation page).

    Raises LinkRefused when it is unknown, used, expired, or its request moved on.
    """
    tenant_id = _tenant_of(token)
    with rls.tenant_context(tenant_id):
        link = (
            ApprovalLink.objects.select_related(
                "request__run__role", "request__tenant", "request__step", "reviewer"
            )
            .filter(token_hash=_hash(token))
            .first()
        )
        if link is None:
            raise LinkRefused("This link is not valid.", status=404)
        _usable(link)
        return link


def decide_by_link(*, token: str, comment: str = ""):
    """Decide with a link: its reviewer, its action, the version it showed; once.

    Raises LinkRefused (nothing written) or DecisionError from decide (nothing written).
    """
    tenant_id = _tenant_of(token)
    with locking.atomic(), rls.tenant_context(tenant_id):
        link = (
            lock(ApprovalLink.objects.select_related("request", "reviewer"), Level.ROW)
            .filter(token_hash=_hash(token))
            .first()
        )
        if link is None:
            raise LinkRefused("This link is not valid.", status=404)
        _usable(link)
        decision = decide(
            request=link.request,
            reviewer=link.reviewer,
            verdict=link.action,
            comment=comment,
            version=link.version,
            via="email link",
        )
        # This reviewer has decided: every link of theirs for the request is spent.
        ApprovalLink.objects.filter(
            request_id=link.request_id, reviewer_id=link.reviewer_id, used_at__isnull=True
        ).update(used_at=timezone.now())
    return decision


__all__ = ["DecisionError", "LinkRefused", "decide_by_link", "issue_links", "link_for"]
