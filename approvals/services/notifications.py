"""E-mailing the people a request waits for: once per request and reminder."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from approvals.models import ApprovalRequest
from approvals.selectors import recipients
from tenants import locking, rls
from tenants.locking import Level, lock


def notify_reviewers_after_commit(request: ApprovalRequest, *, reminder: int = 0) -> None:
    """E-mail the people a request waits for once the transaction commits (`reminder`:
    which reminder this is; 0 for the first notification)."""
    transaction.on_commit(
        lambda: _enqueue_notification(request.pk, reminder),
        robust=True,  # a broker outage must not fail what already committed (the sweep re-rings)
        using=rls.current_alias(),
    )


def _enqueue_notification(request_id: int, reminder: int) -> None:
    from django_q.tasks import async_task

    async_task(
        "approvals.tasks.notify_reviewers",
        request_id=request_id,
        reminder=reminder,
        q_options={"group": "notifications", "save": False},
    )


def notify_reviewers(*, request_id: int, reminder: int = 0) -> int:
    """Send the notification (or reminder number `reminder`) once; return how many people
    it went to."""
    from django.core.mail import EmailMessage, get_connection

    from approvals import links
    from approvals.selectors import proposal_summary

    tenant_id = rls.tenant_of("approvals_approvalrequest", request_id)
    if tenant_id is None:
        return 0
    with locking.tracked(), rls.tenant_context(tenant_id):
        request = (
            lock(
                ApprovalRequest.objects.select_related(
                    "tenant", "run__role", "run__role_version", "run__api_key", "step"
                ),
                Level.APPROVAL,
                of=("self",),
            )
            .filter(pk=request_id, status=ApprovalRequest.Status.PENDING)
            .first()
        )
        if request is None:
            return 0  # decided meanwhile
        if reminder:
            if request.reminders_notified >= reminder:
                return 0  # this task was delivered twice
            request.reminders_notified = reminder
            request.save(update_fields=["reminders_notified"])
        else:
            if request.notified_at is not None:
                return 0  # this task was delivered twice
            request.notified_at = timezone.now()
            request.save(update_fields=["notified_at"])
        people = recipients(request)
        if not people:
            return 0  # nobody to tell: handled (the queue shows it)
        subject = (
            f"{'Reminder: ' if reminder else ''}{request.tenant.name}: "
            f"{request.run.role.name} needs your approval"
        )
        body = (
            f"Step '{request.step.key}' ({request.category}) of run #{request.run_id} is waiting"
            f" for {request.required_approvals} approval(s), due {request.due_at:%Y-%m-%d %H:%M}"
            f" UTC.\n\n{proposal_summary(request)}\n\nReview it: {links.review_url(request)}\n"
        )
        messages = []
        for user_id, email in people:
            text = body
            urls = {}
            if request.rule.get("email_links"):
                urls = links.issue_links(request=request, reviewer_id=user_id)
            if urls:  # none for someone who has decided already
                text += (
                    f"\nOr decide from here (each link asks you to confirm; it works once, for"
                    f" this version of the proposal):\n  Approve: {urls['approve']}\n"
                    f"  Reject:  {urls['reject']}\n"
                )
            messages.append(EmailMessage(subject, text, settings.DEFAULT_FROM_EMAIL, [email]))
        # One message per person: a link is theirs alone. Sent inside the transaction: if
        # the mail server fails, the marker and the links roll back and the sweep retries.
        get_connection().send_messages(messages)
    return len(people)
