"""Attacks on the approval gate, each through the real engine path (tests.runtime drives
desk.worker): every test tries a way around a control and asserts that it fails and that
nothing changed."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from approvals.models import ApprovalPolicy, ApprovalRequest, Decision, Escalation
from approvals.services import DecisionError, decide
from audit.models import AuditEvent
from audit.services import Actor
from desk.models import OutboxMessage, Run, StepRun
from desk.services import start_run
from roles.models import Role
from roles.services import create_role, create_role_version
from tenants.models import Membership
from tenants.services import grant_membership, revoke_membership
from tests.publishing import publish
from tests.runtime import advance

SYSTEM = Actor.system("tests")
FOLLOW_UP_INPUT = {
    "client_email": "maya.chen@example.com",
    "meeting_topic": "Lease renewal",
    "notes": "Agreed to send the draft lease by Friday.",
}
REPORTER_INPUT = {"period": "2026-11", "ledger_reference": "LED-2026-11"}


def parked_at(tenant, slug, input, *, started_by=None) -> Run:
    run = start_run(
        tenant=tenant,
        role=Role.objects.get(tenant=tenant, slug=slug),
        input=input,
        actor=Actor.for_user(started_by) if started_by else SYSTEM,
        via="command",
    )
    advance(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.WAITING_APPROVAL
    return run


def pending(run) -> ApprovalRequest:
    return ApprovalRequest.objects.get(run=run, status=ApprovalRequest.Status.PENDING)


class Snapshot:
    """What an attack must leave as it was."""

    def __init__(self, run):
        self.run = run
        self.events = AuditEvent.objects.count()
        self.decisions = Decision.objects.count()
        self.outbox = OutboxMessage.objects.count()
        self.request = pending(run)

    def unchanged(self) -> bool:
        request = ApprovalRequest.objects.get(pk=self.request.pk)
        return (
            AuditEvent.objects.count() == self.events
            and Decision.objects.count() == self.decisions
            and OutboxMessage.objects.count() == self.outbox
            and request.status == ApprovalRequest.Status.PENDING
            and request.version == self.request.version
            and request.proposal == self.request.proposal
            and Run.objects.get(pk=self.run.pk).status == Run.Status.WAITING_APPROVAL
        )


def reviewer(tenant, username):
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw-x-12345")
    grant_membership(user=user, tenant=tenant, kind="reviewer", actor=SYSTEM)
    return user


@pytest.fixture
def follow_up(harbor) -> Run:
    """A follow-up run parked at its gated tool call (the e-mail itself)."""
    return parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT)


@pytest.fixture
def statement(northwind) -> Run:
    """A month-end statement: 2 approvals, one from Partners and one from Reviewers."""
    return parked_at(northwind, "month-end-reporter", REPORTER_INPUT)


# --- every gate type, end to end ------------------------------------------------------------


class TestGatedToolCall:
    def test_approving_sends_exactly_the_proposed_call(self, follow_up, users):
        request = pending(follow_up)
        args = request.proposal["args"]

        decide(request=request, reviewer=users["reviewer.harbor"], verdict="approve")
        advance(follow_up.pk)

        follow_up.refresh_from_db()
        assert follow_up.status == Run.Status.COMPLETED
        message = OutboxMessage.objects.get(run=follow_up)
        assert message.payload == {
            "to": args["to"],
            "subject": args["subject"],
            "body": args["body"],
        }

    def test_edit_and_approve_sends_the_edited_call(self, follow_up, users):
        request = pending(follow_up)
        edited = {**request.proposal["args"], "subject": "Your lease, as promised"}

        decide(
            request=request,
            reviewer=users["reviewer.harbor"],
            verdict="edit",
            edited_payload={"tool": "email.send", "args": edited},
        )
        advance(follow_up.pk)

        assert OutboxMessage.objects.get(run=follow_up).payload["subject"] == (
            "Your lease, as promised"
        )

    def test_rejecting_sends_nothing(self, follow_up, users):
        decide(
            request=pending(follow_up),
            reviewer=users["reviewer.harbor"],
            verdict="reject",
            comment="Not yet.",
        )
        advance(follow_up.pk)

        follow_up.refresh_from_db()
        assert follow_up.status == Run.Status.REJECTED
        assert not OutboxMessage.objects.filter(run=follow_up).exists()

    def test_an_edit_may_not_swap_the_tool(self, follow_up, users):
        snapshot = Snapshot(follow_up)
        request = pending(follow_up)

        with pytest.raises(DecisionError) as caught:
            decide(
                request=request,
                reviewer=users["reviewer.harbor"],
                verdict="edit",
                edited_payload={"tool": "records.get", "args": {"references": ["C-1"]}},
            )

        assert caught.value.code == "invalid_edit"
        assert snapshot.unchanged()

    @pytest.mark.parametrize(
        "args",
        [
            {"to": "not an address", "subject": "Hi", "body": "Text"},
            {"to": "maya.chen@example.com", "subject": 42, "body": "Text"},
            {"to": "maya.chen@example.com", "body": "Text"},
            {"to": "maya.chen@example.com", "subject": "Hi", "body": "Text", "bcc": "x@y.z"},
        ],
        ids=["bad address", "subject not text", "no subject", "extra argument"],
    )
    def test_an_invalid_edit_of_the_call_is_refused(self, follow_up, users, args):
        snapshot = Snapshot(follow_up)

        with pytest.raises(DecisionError) as caught:
            decide(
                request=pending(follow_up),
                reviewer=users["reviewer.harbor"],
                verdict="edit",
                edited_payload={"tool": "email.send", "args": args},
            )

        assert caught.value.code == "invalid_edit"
        assert snapshot.unchanged()


class TestGatedDraft:
    @pytest.mark.parametrize(
        "draft",
        [{"body": "No subject"}, {"subject": 42, "body": "x"}, {"subject": "", "body": "x"}],
        ids=["missing subject", "subject not text", "empty subject"],
    )
    def test_an_edit_that_breaks_the_output_schema_is_refused(self, parked_intake, users, draft):
        snapshot = Snapshot(parked_intake)

        with pytest.raises(DecisionError) as caught:
            decide(
                request=pending(parked_intake),
                reviewer=users["reviewer.harbor"],
                verdict="edit",
                edited_payload={"draft": draft},
            )

        assert caught.value.code == "invalid_edit"
        assert snapshot.unchanged()

    def test_the_covered_send_uses_the_approved_draft(self, parked_intake, users):
        request = pending(parked_intake)
        draft = {"subject": "Re: Lease", "body": "Dear Maya, yes."}

        decide(
            request=request,
            reviewer=users["reviewer.harbor"],
            verdict="edit",
            edited_payload={"draft": draft},
        )
        advance(parked_intake.pk)

        payload = OutboxMessage.objects.get(run=parked_intake).payload
        assert (payload["subject"], payload["body"]) == (draft["subject"], draft["body"])


def stored_bundle(tenant, **changes) -> None:
    """Change the follow-up role's active bundle in the database, behind validation's back
    (a version stored before a rule existed): the runtime must still hold."""
    version = Role.objects.get(tenant=tenant, slug="client-follow-up").active_version
    type(version).objects.filter(pk=version.pk).update(definition={**version.definition, **changes})


@pytest.fixture
def checkpoint_run(harbor, users):
    """A role whose figures pass a review checkpoint before the e-mail is drafted."""
    role = create_role(
        tenant=harbor,
        slug="quote-writer",
        name="Quote writer",
        actor=SYSTEM,
    )
    definition = {
        "allowed_tools": ["email.send"],
        "input_schema": {"type": "object"},
        "steps": [
            {
                "key": "estimate",
                "kind": "llm",
                "category": "internal",
                "prompt": "Estimate the fee.",
                "output_schema": {
                    "type": "object",
                    "properties": {"subject": {"type": "string"}, "body": {"type": "string"}},
                    "required": ["subject", "body"],
                },
            },
            {"key": "check", "kind": "review", "category": "internal", "instructions": "Check"},
            {
                "key": "send",
                "kind": "tool",
                "category": "client_comms",
                "covered_by": "check",
                "tool": "email.send",
                "args": {
                    "to": "maya.chen@example.com",
                    "subject": "{{ steps.estimate.subject }}",
                    "body": "{{ steps.estimate.body }}",
                },
            },
        ],
    }
    version = create_role_version(role=role, definition=definition, actor=SYSTEM)
    publish(version)
    run = start_run(tenant=harbor, role=role, input={}, actor=SYSTEM, via="command")
    advance(run.pk)
    run.refresh_from_db()
    return run


class TestReviewCheckpoint:
    def test_the_checkpoints_correction_is_what_goes_on(self, checkpoint_run, users):
        request = pending(checkpoint_run)
        outputs = request.proposal["outputs"]
        corrected = {**outputs["estimate"], "body": "The fee is 1,200 EUR."}

        decide(
            request=request,
            reviewer=users["reviewer.harbor"],
            verdict="edit",
            edited_payload={**request.proposal, "outputs": {"estimate": corrected}},
        )
        advance(checkpoint_run.pk)

        checkpoint_run.refresh_from_db()
        assert checkpoint_run.status == Run.Status.COMPLETED
        assert OutboxMessage.objects.get(run=checkpoint_run).payload["body"] == (
            "The fee is 1,200 EUR."
        )

    def test_a_correction_of_a_step_that_is_not_there_is_refused(self, checkpoint_run, users):
        snapshot = Snapshot(checkpoint_run)
        request = pending(checkpoint_run)

        with pytest.raises(DecisionError):
            decide(
                request=request,
                reviewer=users["reviewer.harbor"],
                verdict="edit",
                edited_payload={**request.proposal, "outputs": {"invented": {"x": 1}}},
            )

        assert snapshot.unchanged()


# --- four eyes ------------------------------------------------------------------------------


class TestFourEyes:
    def test_the_starter_may_not_approve_their_own_run(self, harbor, users):
        run = parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT, started_by=users["ops"])
        snapshot = Snapshot(run)

        with pytest.raises(DecisionError) as caught:
            decide(request=pending(run), reviewer=users["ops"], verdict="approve")

        assert caught.value.code == "forbidden"
        assert "You started this run" in str(caught.value)
        assert snapshot.unchanged()

    def test_the_author_of_the_role_version_may_not_approve(self, harbor, users):
        # Both operators also review in Harbor: neither may approve a run of their version.
        grant_membership(user=users["ops.second"], tenant=harbor, kind="reviewer", actor=SYSTEM)
        role = Role.objects.get(tenant=harbor, slug="client-follow-up")
        version = create_role_version(
            role=role,
            definition={**role.active_version.definition, "system": "v2"},
            actor=Actor.for_user(users["ops"]),
        )
        version = publish(version)
        assert version.published_by == users["ops.second"]
        run = parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT)
        snapshot = Snapshot(run)

        for person in ("ops", "ops.second"):  # its author, then its publisher
            with pytest.raises(DecisionError) as caught:
                decide(request=pending(run), reviewer=users[person], verdict="approve")
            assert caught.value.code == "forbidden"
        assert snapshot.unchanged()

    def test_a_superuser_outside_the_reviewers_may_not_decide(self, follow_up, superuser):
        snapshot = Snapshot(follow_up)

        with pytest.raises(DecisionError) as caught:
            decide(request=pending(follow_up), reviewer=superuser, verdict="approve")

        assert caught.value.code == "forbidden"
        assert snapshot.unchanged()

    def test_the_starters_vote_does_not_count_towards_a_quorum(self, northwind, users):
        run = parked_at(
            northwind, "month-end-reporter", REPORTER_INPUT, started_by=users["reviewer.northwind"]
        )

        with pytest.raises(DecisionError):
            decide(request=pending(run), reviewer=users["reviewer.northwind"], verdict="approve")
        decide(request=pending(run), reviewer=users["partner.northwind"], verdict="approve")

        request = pending(run)
        assert request.status == ApprovalRequest.Status.PENDING

    def test_a_person_counts_once(self, statement, users):
        decide(request=pending(statement), reviewer=users["partner.northwind"], verdict="approve")

        with pytest.raises(DecisionError) as caught:
            decide(
                request=pending(statement), reviewer=users["partner.northwind"], verdict="approve"
            )

        assert caught.value.code == "already_decided"
        assert Decision.objects.filter(request__run=statement).count() == 1

    def test_two_approvers_from_the_same_group_are_not_a_quorum(self, statement, users, northwind):
        from approvals.models import GroupMember, ReviewerGroup

        second_partner = reviewer(northwind, "partner.two")
        GroupMember.objects.create(
            tenant=northwind,
            group=ReviewerGroup.objects.get(tenant=northwind, name="Partners"),
            user=second_partner,
        )

        decide(request=pending(statement), reviewer=users["partner.northwind"], verdict="approve")
        decide(request=pending(statement), reviewer=second_partner, verdict="approve")

        assert pending(statement).status == ApprovalRequest.Status.PENDING
        decide(request=pending(statement), reviewer=users["reviewer.northwind"], verdict="approve")
        statement.refresh_from_db()
        assert statement.status == Run.Status.COMPLETED  # the statement was the last step


# --- stale approvals and authority at the moment of effect -----------------------------------


class TestStaleApprovals:
    def test_an_edit_by_the_second_approver_dismisses_the_first(self, statement, users):
        request = pending(statement)
        decide(request=request, reviewer=users["partner.northwind"], verdict="approve")
        inflated = {**request.proposal["draft"], "revenue": 999999}

        decide(
            request=request,
            reviewer=users["reviewer.northwind"],
            verdict="edit",
            edited_payload={"draft": inflated},
        )

        request.refresh_from_db()
        assert request.status == ApprovalRequest.Status.PENDING  # only one person approved v2
        assert request.version == 2
        first = Decision.objects.get(request=request, reviewer=users["partner.northwind"])
        assert first.dismissed_at is not None and first.version == 1
        statement.refresh_from_db()
        assert statement.status == Run.Status.WAITING_APPROVAL
        event = AuditEvent.objects.filter(action="approval.decided").latest("created_at")
        assert event.data["version"] == 2 and event.data["dismissed"] == [first.pk]

        decide(request=request, reviewer=users["partner.northwind"], verdict="approve", version=2)
        request.refresh_from_db()
        assert request.status == ApprovalRequest.Status.APPROVED
        assert StepRun.objects.get(run=statement, key="statement").output["revenue"] == 999999

    def test_approving_a_version_one_has_not_seen_is_refused(self, statement, users):
        request = pending(statement)
        decide(
            request=request,
            reviewer=users["reviewer.northwind"],
            verdict="edit",
            edited_payload={"draft": {**request.proposal["draft"], "revenue": 1}},
        )
        decisions = Decision.objects.count()

        with pytest.raises(DecisionError) as caught:
            decide(
                request=request, reviewer=users["partner.northwind"], verdict="approve", version=1
            )

        assert caught.value.code == "stale_version"
        assert Decision.objects.count() == decisions


class TestAuthorityAtTheMomentOfEffect:
    def test_a_revoked_voter_no_longer_counts_towards_the_quorum(self, statement, users, northwind):
        decide(request=pending(statement), reviewer=users["partner.northwind"], verdict="approve")
        revoke_membership(
            membership=Membership.objects.get(
                user=users["partner.northwind"], tenant=northwind, kind="reviewer"
            ),
            actor=SYSTEM,
        )

        decide(request=pending(statement), reviewer=users["reviewer.northwind"], verdict="approve")

        assert pending(statement).status == ApprovalRequest.Status.PENDING

    def test_a_voter_revoked_before_the_effect_stops_it_until_a_new_quorum(
        self, follow_up, users, harbor
    ):
        request = pending(follow_up)
        decide(request=request, reviewer=users["reviewer.harbor"], verdict="approve")
        revoke_membership(
            membership=Membership.objects.get(
                user=users["reviewer.harbor"], tenant=harbor, kind="reviewer"
            ),
            actor=SYSTEM,
        )

        advance(follow_up.pk)

        follow_up.refresh_from_db()
        assert follow_up.status == Run.Status.WAITING_APPROVAL
        assert not OutboxMessage.objects.filter(run=follow_up).exists()
        again = pending(follow_up)
        assert again.pk != request.pk and again.proposal == request.proposal
        assert AuditEvent.objects.filter(action="approval.no_longer_holds").count() == 1

        decide(request=again, reviewer=users["ops"], verdict="approve")
        advance(follow_up.pk)
        assert (
            OutboxMessage.objects.get(run=follow_up).payload["to"]
            == FOLLOW_UP_INPUT["client_email"]
        )


# --- fail closed ----------------------------------------------------------------------------


class TestFailClosed:
    def test_a_category_without_a_policy_is_gated(self, harbor, users):
        ApprovalPolicy.objects.filter(tenant=harbor, category="client_comms").delete()

        run = parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT)

        request = pending(run)
        assert request.required_approvals == 1
        assert request.rule["source"] == "no policy"
        assert not OutboxMessage.objects.filter(run=run).exists()

    def test_a_role_rule_cannot_loosen_the_tenant_floor(self, harbor):
        from django.core.exceptions import ValidationError

        role = Role.objects.get(tenant=harbor, slug="client-follow-up")
        loosen = [{"category": "client_comms", "mode": "auto"}]
        with pytest.raises(ValidationError, match="unknown setting 'mode'"):
            create_role_version(
                role=role,
                definition={**role.active_version.definition, "approval_rules": loosen},
                actor=SYSTEM,
            )
        # Smuggled into the stored bundle anyway, it still cannot turn the gate off.
        version = role.active_version
        version.definition["approval_rules"] = loosen
        type(version).objects.filter(pk=version.pk).update(definition=version.definition)

        run = parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT)

        assert pending(run).category == "client_comms"

    def test_email_send_labelled_internal_is_refused_at_validation(self, harbor):
        from django.core.exceptions import ValidationError

        role = Role.objects.get(tenant=harbor, slug="client-follow-up")
        definition = role.active_version.definition
        steps = [
            dict(s, category="internal") if s["key"] == "send" else s for s in definition["steps"]
        ]
        versions = role.versions.count()

        with pytest.raises(ValidationError) as caught:
            create_role_version(role=role, definition={**definition, "steps": steps}, actor=SYSTEM)

        assert "'email.send' runs as 'client_comms' at least" in str(caught.value)
        assert role.versions.count() == versions

    def test_email_send_in_an_old_internal_step_is_still_gated(self, harbor):
        # A version saved before tools declared their category: the tool's category counts.
        role = Role.objects.get(tenant=harbor, slug="client-follow-up")
        version = role.active_version
        version.definition["steps"][-1]["category"] = "internal"
        type(version).objects.filter(pk=version.pk).update(definition=version.definition)

        run = parked_at(harbor, "client-follow-up", FOLLOW_UP_INPUT)

        assert pending(run).step.key == "send"

    def test_an_empty_allowed_tools_list_allows_nothing(self, harbor):
        stored_bundle(harbor, allowed_tools=[])
        run = start_run(
            tenant=harbor,
            role=Role.objects.get(tenant=harbor, slug="client-follow-up"),
            input=FOLLOW_UP_INPUT,
            actor=SYSTEM,
            via="command",
        )

        advance(run.pk)

        run.refresh_from_db()
        assert run.status == Run.Status.FAILED
        assert "may not use the tool 'records.search'" in run.error
        assert AuditEvent.objects.filter(run_id=run.pk, action="tool.refused").count() == 1
        assert not AuditEvent.objects.filter(run_id=run.pk, action="data.read").exists()

    def test_an_empty_data_kinds_list_reads_nothing(self, harbor):
        stored_bundle(harbor, allowed_data_kinds=[])
        run = start_run(
            tenant=harbor,
            role=Role.objects.get(tenant=harbor, slug="client-follow-up"),
            input=FOLLOW_UP_INPUT,
            actor=SYSTEM,
            via="command",
        )

        advance(run.pk)

        run.refresh_from_db()
        assert run.status == Run.Status.FAILED
        assert "its allowed data kinds are empty" in run.error
        assert AuditEvent.objects.filter(run_id=run.pk, action="tool.refused").count() == 1
        assert not AuditEvent.objects.filter(run_id=run.pk, action="data.read").exists()


# --- send back is bounded -------------------------------------------------------------------


def test_send_back_past_the_last_round_escalates_instead(parked_intake, users):
    for round_number in (1, 2, 3):
        request = pending(parked_intake)
        assert request.round == round_number
        decide(
            request=request,
            reviewer=users["reviewer.harbor"],
            verdict="revise",
            comment=f"Round {round_number}: shorter.",
        )
        advance(parked_intake.pk)

    last = pending(parked_intake)
    assert last.round == 3
    escalations = Escalation.objects.filter(run=parked_intake, kind="approval_rounds")
    assert escalations.count() == 1
    assert last.status == ApprovalRequest.Status.PENDING
    assert ApprovalRequest.objects.filter(run=parked_intake).count() == 3
