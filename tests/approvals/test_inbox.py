"""The reviewer's inbox, assignment, delegation and bulk approval — and the ways around
them that must fail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from approvals.models import ApprovalRequest, Decision, Delegation, ReviewerGroup
from approvals.selectors import waiting_for
from approvals.services import (
    DecisionError,
    assign_request,
    create_delegation,
    decide,
    save_reviewer_group,
)
from audit.models import AuditEvent
from audit.services import Actor
from tenants.services import grant_membership
from tests.approvals.test_attacks import FOLLOW_UP_INPUT, parked_at, pending

QUEUE = reverse("admin:approvals_approvalrequest_changelist")
SYSTEM = Actor.system("tests")


def reviewer(tenant, username):
    user = get_user_model().objects.create_user(
        username, f"{username}@example.com", "pw-x-12345", is_staff=True
    )
    grant_membership(user=user, tenant=tenant, kind="reviewer", actor=SYSTEM)
    return user


def inbox(user):
    return set(waiting_for(ApprovalRequest.objects.all(), user).values_list("pk", flat=True))


@pytest.fixture
def follow_up(harbor):
    return parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT)


class TestInbox:
    def test_waiting_for_me_leaves_out_what_i_decided_and_what_i_may_not_decide(
        self, harbor, users
    ):
        mine = pending(parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT))
        started_by_me = pending(
            parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT, started_by=users["ops"])
        )

        assert {mine.pk, started_by_me.pk} <= inbox(users["reviewer.harbor"])
        assert mine.pk in inbox(users["ops"]) and started_by_me.pk not in inbox(users["ops"])

    def test_a_request_assigned_to_someone_else_leaves_my_inbox(self, follow_up, users, harbor):
        request = pending(follow_up)
        other = reviewer(harbor, "hugo")

        assign_request(request=request, actor=Actor.for_user(users["ops"]), assignee=other)

        assert request.pk not in inbox(users["reviewer.harbor"])
        assert request.pk in inbox(other)

    def test_the_queue_shows_what_and_for_whom_and_when_it_is_due(self, client, follow_up, users):
        request = pending(follow_up)
        ApprovalRequest.objects.filter(pk=request.pk).update(
            due_at=timezone.now() - timedelta(hours=2)
        )
        client.force_login(users["reviewer.harbor"])

        page = client.get(QUEUE).content.decode()

        assert "email.send to maya.chen@example.com" in page
        assert "overdue by 2" in page and "UTC" in page

    def test_the_index_counts_what_waits_for_me(self, client, follow_up, users):
        client.force_login(users["reviewer.harbor"])

        page = client.get(reverse("admin:index")).content.decode()

        assert "approval request waiting for you" in page

    def test_the_inbox_costs_the_same_queries_for_one_request_or_many(
        self, client, harbor, users, django_assert_max_num_queries
    ):
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT)
        client.force_login(users["reviewer.harbor"])
        with CaptureQueriesContext(connection) as one:
            client.get(QUEUE)
        for _ in range(4):
            parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT)

        with django_assert_max_num_queries(len(one.captured_queries)):
            response = client.get(QUEUE)

        assert len(response.context["cl"].result_list) == 5


class TestAssignment:
    def test_a_reviewer_claims_a_request_and_the_audit_says_so(self, follow_up, users):
        request = pending(follow_up)

        assign_request(
            request=request,
            actor=Actor.for_user(users["reviewer.harbor"]),
            assignee=users["reviewer.harbor"],
        )

        request.refresh_from_db()
        assert request.assignee == users["reviewer.harbor"]
        assert AuditEvent.objects.filter(action="approval.claimed").count() == 1

    def test_the_starter_may_not_claim_their_own_run(self, harbor, users):
        request = pending(
            parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT, started_by=users["ops"])
        )
        reviewer_only = users["reviewer.harbor"]
        events = AuditEvent.objects.count()

        with pytest.raises(DecisionError):
            assign_request(
                request=request, actor=Actor.for_user(reviewer_only), assignee=users["ops"]
            )

        request.refresh_from_db()
        assert request.assignee is None
        assert AuditEvent.objects.count() == events

    def test_a_reviewer_may_not_take_a_request_assigned_to_someone_else(
        self, follow_up, users, harbor
    ):
        request = pending(follow_up)
        other = reviewer(harbor, "hugo")
        assign_request(request=request, actor=Actor.for_user(users["ops"]), assignee=other)

        with pytest.raises(DecisionError) as caught:
            assign_request(
                request=request,
                actor=Actor.for_user(users["reviewer.harbor"]),
                assignee=users["reviewer.harbor"],
                reason="mine now",
            )

        request.refresh_from_db()
        assert caught.value.code == "forbidden"
        assert request.assignee == other

    def test_a_group_of_another_tenant_cannot_be_assigned(self, follow_up, users, northwind):
        request = pending(follow_up)
        foreign = ReviewerGroup.objects.get(tenant=northwind, name="Partners")

        with pytest.raises(DecisionError):
            assign_request(request=request, actor=Actor.for_user(users["ops"]), group=foreign)

        request.refresh_from_db()
        assert request.assigned_group is None

    def test_only_reviewers_of_the_tenant_join_a_group(self, harbor, users):
        from django.core.exceptions import ValidationError

        with pytest.raises(ValidationError):
            save_reviewer_group(
                tenant=harbor,
                name="Everyone",
                members=[users["reviewer.northwind"]],
                actor=Actor.for_user(users["ops"]),
            )

        assert not ReviewerGroup.objects.filter(tenant=harbor, name="Everyone").exists()


class TestDelegation:
    def away(self, harbor, delegator, delegate, *, days=7):
        return create_delegation(
            tenant=harbor,
            delegator=delegator,
            delegate=delegate,
            starts_at=timezone.now() - timedelta(minutes=1),
            ends_at=timezone.now() + timedelta(days=days),
            actor=Actor.for_user(delegator),
            reason="Holiday",
        )

    def test_the_delegate_decides_and_the_audit_keeps_both_names(self, follow_up, users, harbor):
        request = pending(follow_up)
        hugo = reviewer(harbor, "hugo")
        assign_request(
            request=request, actor=Actor.for_user(users["ops"]), assignee=users["reviewer.harbor"]
        )
        self.away(harbor, users["reviewer.harbor"], hugo)

        assert request.pk in inbox(hugo)
        decide(request=request, reviewer=hugo, verdict="approve")

        decision = Decision.objects.get(request=request)
        assert (decision.reviewer, decision.on_behalf_of) == (hugo, users["reviewer.harbor"])
        event = AuditEvent.objects.filter(action="approval.decided").latest("created_at")
        assert (
            event.actor_user == hugo and event.data["on_behalf_of"] == users["reviewer.harbor"].pk
        )

    def test_delegation_never_lets_the_starter_approve(self, harbor, users):
        run = parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT, started_by=users["ops"])
        request = pending(run)
        ApprovalRequest.objects.filter(pk=request.pk).update(assignee=users["reviewer.harbor"])
        self.away(harbor, users["reviewer.harbor"], users["ops"])

        with pytest.raises(DecisionError) as caught:
            decide(request=request, reviewer=users["ops"], verdict="approve")

        assert caught.value.code == "forbidden"
        assert not Decision.objects.filter(request=request).exists()
        assert request.pk not in inbox(users["ops"])

    def test_an_expired_delegation_routes_nothing(self, follow_up, users, harbor):
        request = pending(follow_up)
        hugo = reviewer(harbor, "hugo")
        ApprovalRequest.objects.filter(pk=request.pk).update(assignee=users["reviewer.harbor"])
        delegation = self.away(harbor, users["reviewer.harbor"], hugo)
        Delegation.objects.filter(pk=delegation.pk).update(
            ends_at=timezone.now() - timedelta(seconds=1)
        )

        assert request.pk not in inbox(hugo)

    def test_one_may_not_delegate_someone_elses_requests(self, harbor, users):
        hugo = reviewer(harbor, "hugo")

        with pytest.raises(DecisionError) as caught:
            create_delegation(
                tenant=harbor,
                delegator=users["reviewer.harbor"],
                delegate=hugo,
                starts_at=timezone.now(),
                ends_at=timezone.now() + timedelta(days=1),
                actor=Actor.for_user(hugo),
            )

        assert caught.value.code == "forbidden"
        assert not Delegation.objects.filter(delegate=hugo).exists()

    def test_one_may_not_delegate_to_someone_outside_the_tenant(self, harbor, users):
        with pytest.raises(DecisionError):
            create_delegation(
                tenant=harbor,
                delegator=users["reviewer.harbor"],
                delegate=users["reviewer.northwind"],
                starts_at=timezone.now(),
                ends_at=timezone.now() + timedelta(days=1),
                actor=Actor.for_user(users["reviewer.harbor"]),
            )

        assert not Delegation.objects.filter(delegate=users["reviewer.northwind"]).exists()


class TestBulkApproval:
    def bulk(self, client, user, requests):
        client.force_login(user)
        return client.post(
            QUEUE,
            {
                "action": "approve_in_bulk",
                "_selected_action": [r.pk for r in requests],
                "confirm": "yes",
            },
        )

    def test_bulk_approval_is_refused_where_the_policy_does_not_allow_it(
        self, client, follow_up, users
    ):
        request = pending(follow_up)

        self.bulk(client, users["reviewer.harbor"], [request])

        request.refresh_from_db()
        assert request.status == ApprovalRequest.Status.PENDING
        assert not Decision.objects.filter(request=request).exists()

    def test_bulk_approval_records_each_decision_as_if_made_alone(self, client, harbor, users):
        requests = [
            pending(parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT)) for _ in range(2)
        ]
        for request in requests:
            ApprovalRequest.objects.filter(pk=request.pk).update(
                rule={**request.rule, "allow_bulk": True}
            )

        self.bulk(client, users["reviewer.harbor"], requests)

        decisions = Decision.objects.filter(request__in=requests)
        assert {(d.request_id, d.via, d.version) for d in decisions} == {
            (r.pk, "bulk", 1) for r in requests
        }
        assert AuditEvent.objects.filter(action="approval.decided").count() == 2

    def test_bulk_approval_still_obeys_four_eyes(self, client, harbor, users):
        request = pending(
            parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT, started_by=users["ops"])
        )
        ApprovalRequest.objects.filter(pk=request.pk).update(
            rule={**request.rule, "allow_bulk": True}
        )

        self.bulk(client, users["ops"], [request])

        assert not Decision.objects.filter(request=request).exists()


def test_a_reviewer_delegates_from_the_admin(client, harbor, users):
    client.force_login(users["reviewer.harbor"])
    now = timezone.localtime()
    later = now + timedelta(days=5)

    page = client.get(reverse("admin:approvals_delegation_add"))
    response = client.post(
        reverse("admin:approvals_delegation_add"),
        {
            "tenant": harbor.pk,
            "delegate": users["ops"].pk,
            "starts_at_0": now.strftime("%Y-%m-%d"),
            "starts_at_1": now.strftime("%H:%M:%S"),
            "ends_at_0": later.strftime("%Y-%m-%d"),
            "ends_at_1": later.strftime("%H:%M:%S"),
            "reason": "Holiday",
        },
    )

    assert harbor.name in page.content.decode()  # a reviewer's own tenant is offered
    assert response.status_code == 302
    delegation = Delegation.objects.get()
    assert (delegation.delegator, delegation.delegate) == (users["reviewer.harbor"], users["ops"])
    assert AuditEvent.objects.filter(action="delegation.created").count() == 1


def test_delegating_to_someone_outside_the_tenant_is_a_form_error(client, harbor, users):
    client.force_login(users["reviewer.harbor"])
    now = timezone.localtime()

    response = client.post(
        reverse("admin:approvals_delegation_add"),
        {
            "tenant": harbor.pk,
            "delegate": users["reviewer.northwind"].pk,
            "starts_at_0": now.strftime("%Y-%m-%d"),
            "starts_at_1": "00:00:00",
            "ends_at_0": (now + timedelta(days=2)).strftime("%Y-%m-%d"),
            "ends_at_1": "00:00:00",
        },
    )

    assert response.status_code == 200
    assert not Delegation.objects.exists()


def test_claiming_from_the_review_page_does_not_decide(client, follow_up, users):
    request = pending(follow_up)
    url = reverse("admin:approvals_approvalrequest_change", args=[request.pk])
    client.force_login(users["reviewer.harbor"])

    response = client.post(url, {"assign": "1", "assign_to": "me", "verdict": "approve"})

    request.refresh_from_db()
    assert response.status_code == 302
    assert request.assignee == users["reviewer.harbor"]
    assert request.status == ApprovalRequest.Status.PENDING
    assert not Decision.objects.filter(request=request).exists()


def test_assigning_a_person_of_another_tenant_from_the_page_is_refused(client, follow_up, users):
    request = pending(follow_up)
    url = reverse("admin:approvals_approvalrequest_change", args=[request.pk])
    client.force_login(users["ops"])

    client.post(url, {"assign": "1", "assign_to": f"user:{users['reviewer.northwind'].pk}"})

    request.refresh_from_db()
    assert request.assignee is None
