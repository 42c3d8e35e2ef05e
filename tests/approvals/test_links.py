"""Signed approve/reject links in e-mail, and the ways to abuse them that must fail: a
prefetch, a replay, an expired or tampered token, a swapped action, a revoked reviewer, an
edit since the mail, another tenant's token, a double click."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from approvals.models import ApprovalLink, ApprovalRequest, Decision
from approvals.services import decide, notify_reviewers
from audit.models import AuditEvent
from audit.services import Actor
from tenants.models import Membership
from tenants.services import revoke_membership

LINK = re.compile(r"(?P<action>Approve|Reject): +http://[^/]+(?P<path>/approvals/link/[^/\s]+/)")


def with_links(request: ApprovalRequest) -> None:
    ApprovalRequest.objects.filter(pk=request.pk).update(rule={**request.rule, "email_links": True})


def links_in(username: str) -> dict[str, str]:
    message = next(m for m in mail.outbox if m.to == [f"{username}@agentdesk.example"])
    return {m["action"].lower(): m["path"] for m in LINK.finditer(message.body)}


@pytest.fixture
def mailed(parked_intake):
    """The intake draft's request, its notification sent with signed links."""
    request = ApprovalRequest.objects.get(run=parked_intake)
    with_links(request)
    notify_reviewers(request_id=request.pk)
    return request


def unchanged(request, events) -> bool:
    request.refresh_from_db()
    return (
        request.status == ApprovalRequest.Status.PENDING
        and not Decision.objects.filter(request=request).exists()
        and AuditEvent.objects.count() == events
    )


def test_the_mail_carries_personal_links_and_only_their_hashes_are_stored(mailed):
    links = links_in("reviewer.harbor")

    assert set(links) == {"approve", "reject"}
    tokens = [path.split("/")[-2] for path in links.values()]
    stored = set(ApprovalLink.objects.values_list("token_hash", flat=True))
    assert len(stored) == 4  # two reviewers, two actions
    assert not any(token in stored for token in tokens)
    assert links_in("ops") != links


def test_opening_a_link_decides_nothing(client, mailed):
    events = AuditEvent.objects.count()

    page = client.get(links_in("reviewer.harbor")["approve"])

    assert page.status_code == 200
    assert "Approve “draft”" in page.content.decode()
    assert unchanged(mailed, events)


def test_posting_the_link_decides_once_as_its_reviewer(client, mailed, users):
    path = links_in("reviewer.harbor")["approve"]
    client.get(path)

    first = client.post(path, {"comment": "Fine"})
    again = client.post(path, {"comment": "Fine"})

    mailed.refresh_from_db()
    decision = Decision.objects.get(request=mailed)
    assert first.status_code == 200 and "Approved" in first.content.decode()
    assert (decision.reviewer, decision.via) == (users["reviewer.harbor"], "email link")
    assert mailed.status == ApprovalRequest.Status.APPROVED
    assert again.status_code == 410
    assert Decision.objects.filter(request=mailed).count() == 1


def test_the_other_link_of_a_reviewer_who_decided_is_spent(client, mailed):
    links = links_in("reviewer.harbor")
    client.post(links["approve"])

    response = client.post(links["reject"], {"comment": "changed my mind"})

    assert response.status_code == 410
    assert Decision.objects.filter(request=mailed).count() == 1


def test_a_reject_link_needs_a_reason_and_cannot_approve(client, mailed):
    events = AuditEvent.objects.count()
    path = links_in("reviewer.harbor")["reject"]

    response = client.post(path, {"comment": "  "})

    assert response.status_code == 400
    assert "reason is required" in response.content.decode()
    assert unchanged(mailed, events)
    assert ApprovalLink.objects.filter(used_at__isnull=False).count() == 0


def test_an_expired_link_is_refused(client, mailed):
    events = AuditEvent.objects.count()
    ApprovalLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    response = client.post(links_in("reviewer.harbor")["approve"])

    assert response.status_code == 410
    assert unchanged(mailed, events)


def test_a_link_of_a_revoked_reviewer_is_refused(client, mailed, users, harbor):
    revoke_membership(
        membership=Membership.objects.get(
            user=users["reviewer.harbor"], tenant=harbor, kind="reviewer"
        ),
        actor=Actor.system("tests"),
    )
    events = AuditEvent.objects.count()

    response = client.post(links_in("reviewer.harbor")["approve"])

    assert response.status_code == 403
    assert unchanged(mailed, events)


def test_a_link_after_an_edit_is_refused(client, mailed, users):
    ApprovalRequest.objects.filter(pk=mailed.pk).update(required_approvals=2)  # stays open
    decide(
        request=mailed,
        reviewer=users["ops"],
        verdict="edit",
        edited_payload={"draft": {"subject": "Re: Lease", "body": "Edited by ops."}},
    )
    events = AuditEvent.objects.count()
    decisions = Decision.objects.count()

    response = client.post(links_in("reviewer.harbor")["approve"])

    assert response.status_code == 409
    assert "edited after this e-mail" in response.content.decode()
    assert AuditEvent.objects.count() == events and Decision.objects.count() == decisions


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
    token = links_in("reviewer.harbor")["approve"].split("/")[-2]
    events = AuditEvent.objects.count()

    response = client.post(f"/approvals/link/{tamper(token)}/")

    assert response.status_code == 404
    assert unchanged(mailed, events)


def test_a_token_only_reaches_its_own_request(client, mailed, northwind, users):
    from tests.approvals.test_attacks import REPORTER_INPUT, parked_at, pending

    statement = pending(parked_at(northwind, "month-end-reporter", REPORTER_INPUT))
    client.post(links_in("reviewer.harbor")["approve"])

    statement.refresh_from_db()
    assert statement.status == ApprovalRequest.Status.PENDING
    assert not Decision.objects.filter(request=statement).exists()


def test_without_the_policy_there_are_no_links(parked_intake):
    request = ApprovalRequest.objects.get(run=parked_intake)
    ApprovalRequest.objects.filter(pk=request.pk).update(
        rule={**request.rule, "email_links": False}
    )

    notify_reviewers(request_id=request.pk)

    assert "/approvals/link/" not in mail.outbox[0].body
    assert not ApprovalLink.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_double_click_on_a_link_records_one_decision(transactional_db, client):
    from django.test import Client

    from desk.demo import seed_demo
    from tests.conftest import INTAKE_INPUT
    from tests.tenants.test_locking import race

    seed_demo()
    from desk.services import start_run
    from roles.models import Role
    from tenants.models import Tenant
    from tests.runtime import advance

    harbor = Tenant.objects.get(slug="harbor-legal")
    run = start_run(
        tenant=harbor,
        role=Role.objects.get(tenant=harbor, slug="intake-coordinator"),
        input=INTAKE_INPUT,
        actor=Actor.system("tests"),
        via="command",
    )
    advance(run)
    request = ApprovalRequest.objects.get(run=run)
    with_links(request)
    notify_reviewers(request_id=request.pk)
    path = links_in("reviewer.harbor")["approve"]
    statuses = []

    race(*[lambda: statuses.append(Client().post(path).status_code) for _ in range(2)])

    assert sorted(statuses) == [200, 410]
    assert Decision.objects.filter(request=request).count() == 1
