"""Signed approve/reject links in notification e-mails.

One live token per (request, action, reviewer), 256 random bits; only its SHA-256 is
stored, and a later e-mail (a reminder) replaces it. A link's page only shows what is
proposed and asks for confirmation (mail scanners prefetch links); the decision is a POST,
through `decide` (four eyes and all), for the very proposal the e-mail showed, once,
before the link expires. Once its reviewer has decided the request, by link or in the
admin, none of their links for it works.

Lock order: links are written only by someone holding their request's lock (the
notification, a decision by link), so a decision by link locks the run and the request,
exactly as `decide` does, and then reads its link again; link rows take no lock of their own.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalLink, ApprovalRequest, Decision
from approvals.permissions import decision_refusal
from approvals.services import DecisionError, decide
from desk.services import lock_run
from tenants import locking, rls
from tenants.locking import Level, lock
from tenants.models import Membership
from tenants.signin import second_factor
from tenants.signin.second_factor import Outcome

TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


class LinkRefused(Exception):
    """The link cannot be used; nothing was written."""

    def __init__(self, message: str, *, status: int = 410):
        super().__init__(message)
        self.status = status


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def proposal_hash(proposal) -> str:
    """SHA-256 of the proposal as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(proposal, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def absolute(path: str) -> str:
    return f"{settings.DESK_BASE_URL}{path}"


def review_url(request: ApprovalRequest) -> str:
    return absolute(reverse("admin:approvals_approvalrequest_change", args=[request.pk]))


def issue_links(*, request: ApprovalRequest, reviewer_id: int) -> dict[str, str]:
    """Give this reviewer fresh approve and reject links for the request, replacing any
    earlier ones (inside the caller's transaction, which holds the request's lock); return
    {action: URL}, or {} when the reviewer has already decided it."""
    if request.decisions.current().filter(reviewer_id=reviewer_id).exists():
        return {}
    now = timezone.now()
    expires_at = min(
        now + timedelta(hours=settings.DESK_APPROVAL_LINK_HOURS),
        request.due_at + timedelta(days=1),
    )
    fingerprint = proposal_hash(request.proposal)
    urls = {}
    for action in ApprovalLink.Action.values:
        token = secrets.token_urlsafe(32)
        ApprovalLink.objects.update_or_create(
            request=request,
            reviewer_id=reviewer_id,
            action=action,
            defaults={
                "tenant_id": request.tenant_id,
                "token_hash": _hash(token),
                "proposal_hash": fingerprint,
                "version": request.version,
                "created_at": now,
                "expires_at": expires_at,
                "used_at": None,
            },
        )
        urls[action] = absolute(reverse("approval-link", args=[token]))
    return urls


NOT_VALID = "This link is not valid (a newer e-mail may have replaced it)."


def _tenant_of(token: str) -> tuple[int, int]:
    """(tenant id, reviewer id) of the link a token stands for: the tenant's context is
    then opened for that reviewer, whose membership the database checks (a reviewer who is
    no longer a member is refused here, as decide would refuse them)."""
    if not TOKEN.match(token or ""):
        raise LinkRefused(NOT_VALID, status=404)
    with rls.platform_context():
        # Only the tenant of the one row whose hash matches is read across tenants.
        found = (
            ApprovalLink.objects.filter(token_hash=_hash(token))
            .values_list("tenant_id", "reviewer_id", "tenant__name")
            .first()
        )
        if found is None:
            raise LinkRefused(NOT_VALID, status=404)
        tenant_id, reviewer_id, tenant_name = found
        still_member = Membership.objects.filter(
            tenant_id=tenant_id, user_id=reviewer_id, user__is_active=True
        ).exists()
    if not still_member:
        raise LinkRefused(f"Only reviewers of {tenant_name} decide its requests.", status=403)
    return tenant_id, reviewer_id


def _find(token: str, tenant_id: int) -> ApprovalLink:
    link = (
        ApprovalLink.objects.select_related(
            "request__run__role", "request__tenant", "request__step", "reviewer"
        )
        .filter(token_hash=_hash(token), tenant_id=tenant_id, request__tenant_id=tenant_id)
        .first()
    )
    if link is None:
        raise LinkRefused(NOT_VALID, status=404)
    return link


def _usable(link: ApprovalLink) -> None:
    request = link.request
    if link.used_at is not None:
        raise LinkRefused("This link has already been used.")
    if (
        Decision.objects.filter(request_id=request.pk, reviewer_id=link.reviewer_id)
        .filter(Q(dismissed_at__isnull=True) | Q(created_at__gte=link.created_at))
        .exists()
    ):
        raise LinkRefused("You have already decided this request; this link no longer works.")
    if link.expires_at <= timezone.now():
        raise LinkRefused("This link has expired; open the request in AgentDesk instead.")
    if not request.is_pending:
        raise LinkRefused(f"This request is already {request.get_status_display().lower()}.")
    if request.version != link.version or proposal_hash(request.proposal) != link.proposal_hash:
        raise LinkRefused(
            "The proposal was edited after this e-mail was sent: open the request in "
            "AgentDesk and read it again before deciding.",
            status=409,
        )


def link_for(token: str) -> ApprovalLink:
    """The link a token stands for, if it can still be used (for its confirmation page).

    Raises LinkRefused when it is unknown, used, expired, its request moved on or its
    reviewer may no longer decide it (the reason decide would give).
    """
    tenant_id, reviewer_id = _tenant_of(token)
    with rls.tenant_context(tenant_id, user_id=reviewer_id):
        link = _find(token, tenant_id)
        _usable(link)
        refusal = decision_refusal(link.reviewer, link.request)
        if refusal:
            raise LinkRefused(refusal, status=403)
        return link


def decide_by_link(*, token: str, comment: str = "") -> Decision:
    """Decide with a link: its reviewer, its action, the proposal it showed; once.

    Raises LinkRefused (nothing written) or DecisionError from decide (nothing written).
    """
    tenant_id, reviewer_id = _tenant_of(token)
    with locking.atomic(), rls.tenant_context(tenant_id, user_id=reviewer_id):
        found = _find(token, tenant_id)
        # The run, then the request (decide's own order); then the link, read again under
        # the request's lock: a concurrent click of this or a sibling link has committed.
        lock_run(found.request.run_id)
        lock(ApprovalRequest.objects.filter(pk=found.request_id), Level.APPROVAL).get()
        link = _find(token, tenant_id)
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


def second_factor_refusal(request, link: ApprovalLink) -> tuple[str, int] | None:
    """Why the code posted with a decision by `link` does not prove its reviewer (message,
    HTTP status), or None when it does or no second factor is required.

    The link proves only the reviewer's inbox; when sign-in takes a second factor, so does
    a decision by link: a code from the reviewer's app or one of their recovery codes. A
    wrong one is recorded and counts towards their lockout, as at sign-in.
    """
    if not settings.DESK_REQUIRE_2FA:
        return None
    reviewer = link.reviewer
    if link.action == "reject" and not request.POST.get("comment", "").strip():
        # Decide's own refusal, before the code is spent on a decision that cannot be made.
        return "Say why: a reason is required to reject.", 400
    if not second_factor.has_second_factor(reviewer):
        return (
            "Deciding from e-mail takes a code from your authenticator app: sign in to "
            "AgentDesk once to set up your second factor.",
            403,
        )
    outcome = second_factor.check_code(
        request=request, user=reviewer, code=request.POST.get("code", ""), during="email_link"
    )
    if outcome is Outcome.LOCKED_OUT:
        return "Too many wrong codes: deciding and signing in are locked for a while.", 429
    if outcome is Outcome.WRONG_CODE:
        return "That code is not right (or was already used): type the one your app shows now.", 403
    return None


__all__ = [
    "DecisionError",
    "LinkRefused",
    "decide_by_link",
    "issue_links",
    "link_for",
    "proposal_hash",
    "review_url",
    "second_factor_refusal",
]
