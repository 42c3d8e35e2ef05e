"""Signed approve/reject links in e-mail, and the ways to abuse them that must fail: a
prefetch, a replay, an expired or tampered token, a swapped action, a revoked reviewer, an
edit since the mail, another tenant's token, a forged cross-site post, a double click.

Every refusal also asserts that nothing moved: the request's status, its decisions, the
audit log and the links' used_at."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals.models import ApprovalLink, ApprovalRequest, Decision
from approvals.services import decide, notify_reviewers
from audit.models import AuditEvent
from audit.services import Actor
from tenants.models import Membership
from tenants.services import revoke_membership
from tests.conftest import second_factor_code

LINK = re.compile(
    r"(?P<action>Approve|Reject): +(?P<url>https?://[^/\s]+(?P<path>/approvals/link/[^/\s]+/))"
)


def with_links(request: ApprovalRequest, enabled: bool = True) -> None:
    ApprovalRequest.objects.filter(pk=request.pk).update(
        rule={**request.rule, "email_links": enabled}
    )


def message_to(username: str, *, last: bool = False):
    messages = [m for m in mail.outbox if m.to == [f"{username}@agentdesk.example"]]
    return messages[-1] if last else messages[0]


def links_in(username: str, *, last: bool = False) -> dict[str, str]:
    body = message_to(username, last=last).body
    return {m["action"].lower(): m["path"] for m in LINK.finditer(body)}


def with_code(data: dict | None = None, username: str = "reviewer.harbor") -> dict:
    """A decision's form data with a code of the link's reviewer's second factor."""
    reviewer = get_user_model().objects.get(username=username)
    return {**(data or {}), "code": second_factor_code(reviewer)}


def token_of(path: str) -> str:
    return path.split("/")[-2]


@pytest.fixture
def mailed(parked_intake):
    """The intake draft's request, its notification sent with signed links."""
    request = ApprovalRequest.objects.get(run=parked_intake)
    with_links(request)
    notify_reviewers(request_id=request.pk)
    return request


class Unchanged:
    """What a refused link must leave as it was."""

    def __init__(self, request: ApprovalRequest):
        self.request = request
        self.before = self.state()

    def state(self) -> dict:
        request = ApprovalRequest.objects.get(pk=self.request.pk)
        return {
            "status": request.status,
            "version": request.version,
            "decisions": list(
                Decision.objects.filter(request=request).values_list("pk", flat=True)
            ),
            "audit events": AuditEvent.objects.count(),
            "links": sorted(ApprovalLink.objects.values_list("pk", "token_hash", "used_at")),
        }

    def holds(self) -> bool:
        return self.state() == self.before


# --- the e-mail -----------------------------------------------------------------------------


def test_every_mail_links_the_review_page_and_carries_personal_links(mailed, settings):
    links = links_in("reviewer.harbor")

    review = f"http://127.0.0.1:8000/admin/approvals/approvalrequest/{mailed.pk}/change/"
    assert [m.to for m in mail.outbox] == [
        ["ops@agentdesk.example"],
        ["reviewer.harbor@agentdesk.example"],
    ]
    assert all(review in m.body for m in mail.outbox)
    assert set(links) == {"approve", "reject"}
    assert links_in("ops") != links
    assert ApprovalLink.objects.filter(request=mailed).count() == 4  # 2 reviewers x 2 actions


def test_links_start_with_the_configured_base_url(parked_intake, settings):
    settings.DESK_BASE_URL = "https://desk.example.com"
    request = ApprovalRequest.objects.get(run=parked_intake)
    with_links(request)

    notify_reviewers(request_id=request.pk)

    body = message_to("reviewer.harbor").body
    assert f"https://desk.example.com/admin/approvals/approvalrequest/{request.pk}/change/" in body
    assert {m["url"].split("/approvals/")[0] for m in LINK.finditer(body)} == {
        "https://desk.example.com"
    }


def test_without_the_policy_the_mail_has_the_review_page_and_no_links(parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)
    with_links(request, enabled=False)

    sent = notify_reviewers(request_id=request.pk)

    assert sent == 2 and len(mail.outbox) == 2
    for message in mail.outbox:
        assert f"/admin/approvals/approvalrequest/{request.pk}/change/" in message.body
        assert "/approvals/link/" not in message.body
    assert not ApprovalLink.objects.exists()


def test_a_notification_delivered_twice_mails_and_issues_links_once(mailed):
    hashes = set(ApprovalLink.objects.values_list("token_hash", flat=True))

    again = notify_reviewers(request_id=mailed.pk)

    assert again == 0
    assert len(mail.outbox) == 2
    assert set(ApprovalLink.objects.values_list("token_hash", flat=True)) == hashes


def test_the_plain_token_is_stored_nowhere(mailed):
    tokens = [
        token_of(path) for user in ("ops", "reviewer.harbor") for path in links_in(user).values()
    ]

    stored = " ".join(
        str(row) for model in apps.get_models() for row in model._default_manager.values()
    )

    assert len(tokens) == 4
    assert not [token for token in tokens if token in stored]
    hashes = set(ApprovalLink.objects.values_list("token_hash", flat=True))
    assert hashes == {hashlib.sha256(token.encode()).hexdigest() for token in tokens}


def test_a_link_expires_after_the_setting_but_never_past_the_due_time_and_a_day(
    parked_intake, settings
):
    settings.DESK_APPROVAL_LINK_HOURS = 72
    request = ApprovalRequest.objects.get(run=parked_intake)
    with_links(request)
    due = timezone.now() + timedelta(hours=2)
    ApprovalRequest.objects.filter(pk=request.pk).update(due_at=due)

    notify_reviewers(request_id=request.pk)

    assert set(ApprovalLink.objects.values_list("expires_at", flat=True)) == {
        due + timedelta(days=1)
    }


def test_a_short_setting_expires_links_sooner(parked_intake, settings):
    settings.DESK_APPROVAL_LINK_HOURS = 1
    request = ApprovalRequest.objects.get(run=parked_intake)
    with_links(request)
    before = timezone.now()

    notify_reviewers(request_id=request.pk)

    for expires_at in ApprovalLink.objects.values_list("expires_at", flat=True):
        assert before + timedelta(hours=1) <= expires_at <= timezone.now() + timedelta(hours=1)


def test_a_reminder_replaces_the_links_of_the_first_mail(client, mailed):
    first = links_in("reviewer.harbor")

    notify_reviewers(request_id=mailed.pk, reminder=1)

    second = links_in("reviewer.harbor", last=True)
    assert second != first
    assert ApprovalLink.objects.filter(request=mailed).count() == 4  # one per reviewer, action
    unchanged = Unchanged(mailed)
    assert client.post(first["approve"]).status_code == 404
    assert unchanged.holds()
    assert client.post(second["approve"], with_code()).status_code == 200
    assert Decision.objects.get(request=mailed).via == "email link"


def test_a_reminder_carries_no_links_for_a_reviewer_who_decided(mailed, users):
    ApprovalRequest.objects.filter(pk=mailed.pk).update(required_approvals=2)
    decide(request=mailed, reviewer=users["reviewer.harbor"], verdict="approve")

    notify_reviewers(request_id=mailed.pk, reminder=1)

    reminder = message_to("reviewer.harbor", last=True)
    assert "Reminder" in reminder.subject
    assert "/approvals/link/" not in reminder.body
    assert set(links_in("ops", last=True)) == {"approve", "reject"}


# --- the page and the decision -------------------------------------------------------------


def test_a_prefetch_get_decides_nothing(client, mailed):
    unchanged = Unchanged(mailed)

    approve = client.get(links_in("reviewer.harbor")["approve"])
    reject = client.get(links_in("reviewer.harbor")["reject"])

    assert approve.status_code == 200 and reject.status_code == 200
    page = approve.content.decode()
    assert "Approve “draft”" in page
    assert "Harbor Legal LLP" in page and f"#{mailed.run_id}" in page
    assert 'method="post"' in page and "csrfmiddlewaretoken" in page
    assert unchanged.holds()


def test_the_page_is_not_cached_and_leaks_no_referrer(client, mailed):
    response = client.get(links_in("reviewer.harbor")["approve"])

    assert "no-store" in response["Cache-Control"]
    assert response["Referrer-Policy"] == "strict-origin"  # the origin, never the token
    assert "noindex" in response["X-Robots-Tag"]


def test_posting_the_link_decides_once_as_its_reviewer(client, mailed, users):
    path = links_in("reviewer.harbor")["approve"]

    response = client.post(path, with_code({"comment": "Fine"}))

    mailed.refresh_from_db()
    decision = Decision.objects.get(request=mailed)
    assert response.status_code == 200 and "Approved" in response.content.decode()
    assert (decision.reviewer, decision.verdict, decision.via) == (
        users["reviewer.harbor"],
        "approve",
        "email link",
    )
    assert mailed.status == ApprovalRequest.Status.APPROVED
    event = AuditEvent.objects.get(action="approval.decided")
    assert event.data["via"] == "email link"
    assert not ApprovalLink.objects.filter(
        request=mailed, reviewer=users["reviewer.harbor"], used_at__isnull=True
    ).exists()


def test_a_replayed_token_is_refused_after_use(client, mailed):
    path = links_in("reviewer.harbor")["approve"]
    client.post(path, with_code({"comment": "Fine"}))
    unchanged = Unchanged(mailed)

    again = client.post(path, with_code({"comment": "Fine"}))
    shown = client.get(path)

    assert again.status_code == 410 and shown.status_code == 410
    assert "already been used" in again.content.decode()
    assert unchanged.holds()


def test_the_other_link_of_a_reviewer_who_decided_by_link_is_spent(client, users, mailed):
    ApprovalRequest.objects.filter(pk=mailed.pk).update(required_approvals=2)  # stays open
    links = links_in("reviewer.harbor")
    client.post(links["approve"], with_code())
    unchanged = Unchanged(mailed)

    response = client.post(links["reject"], with_code({"comment": "changed my mind"}))

    assert response.status_code == 410
    assert unchanged.holds()


def test_links_of_a_reviewer_who_decided_in_the_admin_are_dead(client, users, mailed):
    ApprovalRequest.objects.filter(pk=mailed.pk).update(required_approvals=2)  # stays open
    decide(request=mailed, reviewer=users["reviewer.harbor"], verdict="approve")
    unchanged = Unchanged(mailed)

    shown = client.get(links_in("reviewer.harbor")["reject"])
    response = client.post(links_in("reviewer.harbor")["reject"], {"comment": "changed my mind"})

    assert shown.status_code == 410 and response.status_code == 410
    assert "already decided" in response.content.decode()
    assert unchanged.holds()


def test_an_approve_token_cannot_reject(client, mailed):
    path = links_in("reviewer.harbor")["approve"]

    client.post(path, with_code({"verdict": "reject", "action": "reject", "comment": "No"}))

    mailed.refresh_from_db()
    assert mailed.status == ApprovalRequest.Status.APPROVED
    assert list(Decision.objects.filter(request=mailed).values_list("verdict", flat=True)) == [
        "approve"
    ]


def test_a_reject_token_cannot_approve_and_needs_a_reason(client, mailed):
    unchanged = Unchanged(mailed)
    path = links_in("reviewer.harbor")["reject"]

    response = client.post(path, {"verdict": "approve", "action": "approve", "comment": "  "})

    assert response.status_code == 400
    assert "reason is required" in response.content.decode()
    assert unchanged.holds()
    rejected = client.post(path, with_code({"verdict": "approve", "comment": "Wrong client"}))
    assert rejected.status_code == 200
    mailed.refresh_from_db()
    assert mailed.status == ApprovalRequest.Status.REJECTED
    assert Decision.objects.get(request=mailed).verdict == "reject"


# --- the second factor: the link is one factor, the reviewer's code the other -------------


def decided_nothing(unchanged: Unchanged) -> bool:
    """Nothing decided or spent (a refused code is on the audit trail, so events may grow)."""
    now, before = unchanged.state(), unchanged.before
    return all(now[key] == before[key] for key in ("status", "version", "decisions", "links"))


def harbor_reviewer():
    return get_user_model().objects.get(username="reviewer.harbor")


def test_a_link_decides_nothing_without_the_reviewers_code(client, mailed):
    second_factor_code(harbor_reviewer())  # enrolled, but sends no code
    unchanged = Unchanged(mailed)

    response = client.post(links_in("reviewer.harbor")["approve"], {"comment": "Fine"})

    assert response.status_code == 403
    assert "code is not right" in response.content.decode()
    assert decided_nothing(unchanged)
    failed = AuditEvent.objects.get(action="auth.second_factor_failed")
    assert failed.data == {"username": "reviewer.harbor", "during": "email_link"}


def test_a_link_refuses_another_persons_code(client, mailed, users):
    second_factor_code(harbor_reviewer())
    unchanged = Unchanged(mailed)

    response = client.post(
        links_in("reviewer.harbor")["approve"], {"code": second_factor_code(users["ops"])}
    )

    assert response.status_code == 403
    assert decided_nothing(unchanged)


def test_a_link_refuses_an_app_code_already_used(client, mailed):
    from django.test import RequestFactory

    from tenants.signin import second_factor
    from tests.tenants.signin_support import code_of

    reviewer = harbor_reviewer()
    second_factor_code(reviewer)
    code = code_of(TOTPDevice.objects.get(user=reviewer))
    signed_in = second_factor.verify(request=_request(RequestFactory()), user=reviewer, code=code)
    assert signed_in is second_factor.Outcome.VERIFIED
    unchanged = Unchanged(mailed)

    replayed = client.post(links_in("reviewer.harbor")["approve"], {"code": code})

    assert replayed.status_code == 403
    assert decided_nothing(unchanged)


def test_a_reviewer_without_a_second_factor_cannot_decide_by_link(client, mailed):
    unchanged = Unchanged(mailed)

    response = client.post(links_in("reviewer.harbor")["approve"], {"code": "123456"})

    assert response.status_code == 403
    assert "set up your second factor" in response.content.decode()
    assert unchanged.holds()


def test_wrong_link_codes_lock_the_reviewer_out_like_wrong_passwords(client, mailed, settings):
    path = links_in("reviewer.harbor")["approve"]
    second_factor_code(harbor_reviewer())
    unchanged = Unchanged(mailed)

    wrong = [client.post(path, {"code": "000000"}).status_code for _ in range(5)]
    right = client.post(path, with_code())

    assert wrong == [403, 403, 403, 403, 429]
    assert right.status_code == 429
    assert decided_nothing(unchanged)


def test_a_code_from_the_reviewers_app_decides(client, mailed):
    from tests.tenants.signin_support import code_of

    reviewer = harbor_reviewer()
    second_factor_code(reviewer)

    response = client.post(
        links_in("reviewer.harbor")["approve"],
        {"code": code_of(TOTPDevice.objects.get(user=reviewer))},
    )

    assert response.status_code == 200
    assert Decision.objects.get(request=mailed).reviewer == reviewer


def _request(factory):
    request = factory.post("/approvals/link/x/")
    request.user = None
    return request


def test_an_expired_token_is_refused(client, mailed):
    ApprovalLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    unchanged = Unchanged(mailed)

    shown = client.get(links_in("reviewer.harbor")["approve"])
    response = client.post(links_in("reviewer.harbor")["approve"])

    assert shown.status_code == 410 and response.status_code == 410
    assert "expired" in response.content.decode()
    assert unchanged.holds()


def test_a_token_of_a_reviewer_whose_membership_was_revoked_is_refused(
    client, mailed, users, harbor
):
    revoke_membership(
        membership=Membership.objects.get(
            user=users["reviewer.harbor"], tenant=harbor, kind="reviewer"
        ),
        actor=Actor.system("tests"),
    )
    unchanged = Unchanged(mailed)

    shown = client.get(links_in("reviewer.harbor")["approve"])
    response = client.post(links_in("reviewer.harbor")["approve"])

    assert shown.status_code == 403 and response.status_code == 403
    assert 'method="post"' not in shown.content.decode()
    assert unchanged.holds()


def test_a_token_is_refused_once_the_request_is_no_longer_pending(client, mailed, users):
    decide(request=mailed, reviewer=users["ops"], verdict="reject", comment="Not now")
    unchanged = Unchanged(mailed)

    response = client.post(links_in("reviewer.harbor")["approve"])

    assert response.status_code == 410
    assert "already rejected" in response.content.decode()
    assert unchanged.holds()


def test_a_token_is_refused_after_another_reviewer_edited_the_proposal(client, mailed, users):
    ApprovalRequest.objects.filter(pk=mailed.pk).update(required_approvals=2)  # stays open
    decide(
        request=mailed,
        reviewer=users["ops"],
        verdict="edit",
        edited_payload={"draft": {"subject": "Re: Lease", "body": "Edited by ops."}},
    )
    unchanged = Unchanged(mailed)

    shown = client.get(links_in("reviewer.harbor")["approve"])
    response = client.post(links_in("reviewer.harbor")["approve"])

    assert shown.status_code == 409 and response.status_code == 409
    assert "edited after this e-mail" in response.content.decode()
    assert unchanged.holds()


def test_a_token_is_refused_when_the_proposal_changed_without_a_new_version(client, mailed):
    # Whatever wrote it, the proposal is not the one the e-mail showed: no blind approval.
    changed = {**mailed.proposal, "draft": {"subject": "Re: Lease", "body": "Wire the fee."}}
    ApprovalRequest.objects.filter(pk=mailed.pk).update(proposal=changed)
    unchanged = Unchanged(mailed)

    response = client.post(links_in("reviewer.harbor")["approve"])

    assert response.status_code == 409
    assert unchanged.holds()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t + "x" * 500,
        lambda t: t[:10] + "%00" + t[13:],
        lambda t: "",
    ],
    ids=["one character changed", "overlong", "NUL byte", "empty"],
)
def test_a_tampered_token_finds_nothing(client, mailed, tamper):
    token = token_of(links_in("reviewer.harbor")["approve"])
    unchanged = Unchanged(mailed)

    shown = client.get(f"/approvals/link/{tamper(token)}/")
    response = client.post(f"/approvals/link/{tamper(token)}/", {"comment": "x"})

    assert shown.status_code == 404 and response.status_code == 404
    assert "not valid" in response.content.decode()
    assert unchanged.holds()


def test_a_cross_site_post_without_the_pages_csrf_token_is_refused(mailed):
    browser = Client(enforce_csrf_checks=True)
    path = links_in("reviewer.harbor")["approve"]
    unchanged = Unchanged(mailed)

    forged = browser.post(path)

    assert forged.status_code == 403
    assert unchanged.holds()
    page = browser.get(path)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())[1]
    # As a browser posts the page's own form: with its origin (a "null" one is refused).
    assert browser.post(path, {"csrfmiddlewaretoken": csrf}, HTTP_ORIGIN="null").status_code == 403
    assert unchanged.holds()
    posted = browser.post(
        path, with_code({"csrfmiddlewaretoken": csrf}), HTTP_ORIGIN="http://testserver"
    )
    assert posted.status_code == 200


# --- tenants --------------------------------------------------------------------------------


def test_a_token_for_tenant_a_does_nothing_for_tenant_b(client, mailed, northwind):
    from tests.approvals.test_attacks import REPORTER_INPUT, parked_at, pending

    statement = pending(parked_at(northwind, "month-end-reporter", REPORTER_INPUT))
    theirs = Unchanged(statement)

    client.post(
        links_in("reviewer.harbor")["approve"],
        with_code({"request": statement.pk, "request_id": statement.pk, "tenant": northwind.pk}),
    )

    assert theirs.state()["status"] == ApprovalRequest.Status.PENDING
    assert theirs.state()["decisions"] == []
    mailed.refresh_from_db()
    assert mailed.status == ApprovalRequest.Status.APPROVED  # only its own request


def test_a_link_row_of_tenant_b_pointing_at_tenant_as_request_finds_nothing(
    client, mailed, northwind, users
):
    token = "F" * 43
    ApprovalLink.objects.create(
        tenant=northwind,
        request=mailed,
        reviewer=users["reviewer.northwind"],
        action="approve",
        token_hash=hashlib.sha256(token.encode()).hexdigest(),
        proposal_hash=ApprovalLink.objects.filter(request=mailed).first().proposal_hash,
        version=mailed.version,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    unchanged = Unchanged(mailed)

    shown = client.get(f"/approvals/link/{token}/")
    response = client.post(f"/approvals/link/{token}/")

    assert shown.status_code == 404 and response.status_code == 404
    assert "Harbor" not in shown.content.decode()
    assert unchanged.holds()


# --- races (PostgreSQL) ---------------------------------------------------------------------


@pytest.fixture
def committed_mail(transactional_db):
    """A parked intake with its notification mailed with links, committed for real threads."""
    from desk.demo import seed_demo
    from desk.services import start_run
    from roles.models import Role
    from tenants.models import Tenant
    from tests.conftest import INTAKE_INPUT
    from tests.runtime import advance

    seed_demo()
    harbor = Tenant.objects.get(slug="harbor-legal")
    run = start_run(
        tenant=harbor,
        role=Role.objects.get(tenant=harbor, slug="intake-coordinator"),
        input=INTAKE_INPUT,
        actor=Actor.system("tests"),
        via="command",
    )
    advance(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    with_links(request)
    notify_reviewers(request_id=request.pk)
    return request


def post_in_thread(path: str, statuses: list, data: dict | None = None):
    data = with_code(data)  # made here, outside the racing threads
    return lambda: statuses.append(Client().post(path, data).status_code)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_posts_of_one_link_record_one_decision(committed_mail):
    from tests.tenants.test_locking import race

    path = links_in("reviewer.harbor")["approve"]
    statuses: list[int] = []

    errors = race(*[post_in_thread(path, statuses) for _ in range(2)])

    assert errors == []
    assert sorted(statuses) == [200, 410]
    assert Decision.objects.filter(request=committed_mail).count() == 1
    assert ApprovalLink.objects.filter(used_at__isnull=False).count() == 2  # both of the reviewer's


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_reviewers_approve_and_reject_links_at_once_record_one_decision(committed_mail):
    from tests.tenants.test_locking import race

    links = links_in("reviewer.harbor")
    statuses: list[int] = []

    errors = race(
        post_in_thread(links["approve"], statuses),
        post_in_thread(links["reject"], statuses, {"comment": "No"}),
    )

    assert errors == []
    assert sorted(statuses) == [200, 410]
    assert Decision.objects.filter(request=committed_mail).count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_link_and_an_admin_decision_at_once_do_not_deadlock(committed_mail, django_user_model):
    from approvals.services import DecisionError
    from tests.tenants.test_locking import race

    path = links_in("reviewer.harbor")["approve"]
    ops = django_user_model.objects.get(username="ops")
    statuses: list[int] = []

    def in_the_admin():
        try:
            decide(request=committed_mail, reviewer=ops, verdict="reject", comment="No")
        except DecisionError:
            statuses.append("refused")
        else:
            statuses.append("decided")

    errors = race(post_in_thread(path, statuses), in_the_admin)

    assert errors == []
    assert sorted(map(str, statuses)) in (["200", "refused"], ["410", "decided"])
    assert Decision.objects.filter(request=committed_mail).count() == 1
