"""The runtime in one process: leases, checkpoints, gates, retries, the outbox, the reaper."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.utils import timezone

from approvals.models import ApprovalRequest, Escalation
from approvals.services import decide
from audit.models import AuditEvent
from audit.services import Actor
from audit.verification import verify_chain
from desk import engine, services, worker
from desk.models import OutboxMessage, Run, StepRun
from desk.providers import ProviderError
from desk.providers.base import ModelResponse, Provider
from desk.services import start_run
from roles.models import Role, RoleVersion
from roles.services import create_role_version
from tests.publishing import publish
from tests.runtime import advance, execute, lease


def actions(run):
    return list(
        AuditEvent.objects.filter(run_id=run.pk).order_by("seq").values_list("action", flat=True)
    )


def steps(run):
    return {s.key: s for s in run.steps.order_by("index")}


class TestIntakeStory:
    def test_autonomous_steps_run_until_the_gated_draft(self, parked_intake):
        run = parked_intake

        by_key = steps(run)

        assert run.status == Run.Status.WAITING_APPROVAL
        assert by_key["classify"].status == StepRun.Status.COMPLETED
        assert by_key["lookup"].status == StepRun.Status.COMPLETED
        assert by_key["lookup"].output["records"][0]["reference"] == "C-1001"
        assert by_key["draft"].status == StepRun.Status.WAITING_APPROVAL
        assert by_key["send"].status == StepRun.Status.PENDING
        request = ApprovalRequest.objects.get(run=run)
        assert request.status == ApprovalRequest.Status.PENDING
        assert request.proposal["draft"]["body"].startswith("Dear Maya Chen,")
        assert request.category == "client_comms"
        assert OutboxMessage.objects.count() == 0

    def test_each_read_is_audited_with_the_steps_reason(self, parked_intake):
        read = AuditEvent.objects.get(run_id=parked_intake.pk, action="data.read")

        assert read.reason == "Find the sender's client records to answer in context"
        assert read.data["references"] == ["C-1001"]
        assert read.actor_type == AuditEvent.ActorType.AI
        assert read.role_version_id == parked_intake.role_version_id

    def test_approval_resumes_the_run_to_completion_and_sends_once(self, parked_intake, users):
        run = parked_intake
        request = ApprovalRequest.objects.get(run=run)

        decide(
            request=request, reviewer=users["reviewer.harbor"], verdict="approve", comment="Fine"
        )
        advance(run.pk)
        advance(run.pk)  # a duplicate doorbell changes nothing

        run.refresh_from_db()
        assert run.status == Run.Status.COMPLETED
        assert run.finished_at is not None
        message = OutboxMessage.objects.get(run=run)
        assert message.payload["to"] == "maya.chen@example.com"
        assert message.payload["body"] == request.proposal["draft"]["body"]
        assert actions(run) == [
            "run.started",
            "step.completed",
            "data.read",
            "step.completed",
            "step.proposed",
            "approval.requested",
            "approval.decided",
            "step.approved",
            "outbox.queued",
            "step.completed",
            "run.completed",
            "outbox.sent",  # the worker delivered it once the step committed
        ]
        assert verify_chain(tenant_id=run.tenant_id) == []

    def test_an_edited_draft_is_what_gets_sent(self, parked_intake, users):
        request = ApprovalRequest.objects.get(run=parked_intake)
        edited = {"draft": {"subject": "Re: Lease", "body": "Dear Maya, yes — Tuesday at 10?"}}

        decision = decide(
            request=request,
            reviewer=users["reviewer.harbor"],
            verdict="edit",
            edited_payload=edited,
        )
        advance(parked_intake.pk)

        assert '+    "body": "Dear Maya, yes' in decision.diff
        message = OutboxMessage.objects.get(run=parked_intake)
        assert message.payload["body"] == "Dear Maya, yes — Tuesday at 10?"
        assert steps(parked_intake)["draft"].output == edited["draft"]

    def test_rejection_ends_the_run_and_sends_nothing(self, parked_intake, users):
        request = ApprovalRequest.objects.get(run=parked_intake)

        decide(
            request=request,
            reviewer=users["reviewer.harbor"],
            verdict="reject",
            comment="Wrong tone",
        )
        advance(parked_intake.pk)

        parked_intake.refresh_from_db()
        assert parked_intake.status == Run.Status.REJECTED
        assert parked_intake.error == "Wrong tone"
        assert steps(parked_intake)["send"].status == StepRun.Status.CANCELLED
        assert OutboxMessage.objects.count() == 0
        assert actions(parked_intake)[-1] == "run.rejected"

    def test_revision_drafts_again_with_the_feedback_and_parks_again(self, parked_intake, users):
        request = ApprovalRequest.objects.get(run=parked_intake)

        decide(
            request=request,
            reviewer=users["reviewer.harbor"],
            verdict="revise",
            comment="Offer Tuesday",
        )
        advance(parked_intake.pk)

        parked_intake.refresh_from_db()
        assert parked_intake.status == Run.Status.WAITING_APPROVAL
        request.refresh_from_db()
        assert request.status == ApprovalRequest.Status.RETURNED
        second = ApprovalRequest.objects.get(
            run=parked_intake, status=ApprovalRequest.Status.PENDING
        )
        assert "Offer Tuesday" in second.proposal["draft"]["body"]
        assert "Feedback: Offer Tuesday" in steps(parked_intake)["draft"].rendered["prompt"]


class TestTwoApprovals:
    def test_the_statement_waits_for_two_different_reviewers(self, northwind, reporter_role, users):
        run = start_run(
            tenant=northwind,
            role=reporter_role,
            input={"period": "2025-11", "ledger_reference": "L-2025-11"},
            actor=Actor.system("tests"),
            via="command",
        )
        advance(run.pk)
        request = ApprovalRequest.objects.get(run=run)
        assert request.required_approvals == 2
        assert request.proposal["draft"]["revenue"] == 51600.0

        decide(request=request, reviewer=users["reviewer.northwind"], verdict="approve")
        request.refresh_from_db()
        run.refresh_from_db()
        assert request.status == ApprovalRequest.Status.PENDING
        assert run.status == Run.Status.WAITING_APPROVAL

        decide(request=request, reviewer=users["ops"], verdict="approve")
        request.refresh_from_db()
        assert request.status == ApprovalRequest.Status.PENDING  # both are Reviewers, no partner

        decide(request=request, reviewer=users["partner.northwind"], verdict="approve")
        advance(run.pk)

        run.refresh_from_db()
        assert run.status == Run.Status.COMPLETED
        assert steps(run)["statement"].output["cash"] == 111940.5


class FlakyProvider(Provider):
    def __init__(self, failures: int):
        self.failures = failures
        self.calls = 0

    async def acomplete(self, request):
        self.calls += 1
        if self.calls <= self.failures:
            raise ProviderError("upstream returned 503", code="server_error", retryable=True)
        return ModelResponse(
            output={"category": "other", "is_urgent": False, "summary": "s"},
            model="flaky",
            prompt_tokens=7,
            completion_tokens=3,
        )


class TestFailures:
    def test_a_failed_model_call_is_retried_by_the_step(self, start_intake, monkeypatch):
        provider = FlakyProvider(failures=1)
        monkeypatch.setattr(worker, "get_provider", lambda **_: provider)
        run = start_intake()

        advance(run.pk)

        classify = steps(run)["classify"]
        assert classify.status == StepRun.Status.COMPLETED
        assert classify.attempts == 2
        assert classify.prompt_tokens == 7
        assert "step.error" in actions(run)

    def test_a_step_that_keeps_failing_fails_the_run_and_escalates(self, start_intake, monkeypatch):
        monkeypatch.setattr(worker, "get_provider", lambda **_: FlakyProvider(failures=99))
        run = start_intake()

        advance(run.pk)

        run.refresh_from_db()
        assert run.status == Run.Status.FAILED
        classify = steps(run)["classify"]
        assert classify.status == StepRun.Status.FAILED
        assert classify.attempts == 3
        assert "503" in classify.error
        escalation = Escalation.objects.get(run=run)
        assert escalation.status == Escalation.Status.OPEN
        assert "classify" in escalation.reason
        assert steps(run)["send"].status == StepRun.Status.CANCELLED

    def test_a_crash_inside_a_tool_fails_the_step_not_the_worker(self, start_intake, monkeypatch):
        from desk.tools.records import RecordsSearch

        def boom(self, args, ctx):
            raise RuntimeError("database went away")

        monkeypatch.setattr(RecordsSearch, "run", boom)
        run = start_intake()

        advance(run.pk)

        run.refresh_from_db()
        assert run.status == Run.Status.FAILED
        assert "RuntimeError: database went away" in steps(run)["lookup"].error


User = get_user_model()


class TestToolBoundaries:
    def _role_with(
        self, tenant, *, slug, steps_def, allowed_tools, data_kinds=(), stored_kinds=None
    ):
        from roles.services import create_role

        role = create_role(tenant=tenant, slug=slug, name=slug, actor=Actor.system("tests"))
        version = create_role_version(
            role=role,
            definition={
                "input_schema": {"type": "object"},
                "allowed_tools": [s["tool"] for s in steps_def],
                "allowed_data_kinds": list(data_kinds),
                "steps": steps_def,
            },
            actor=Actor.system("tests"),
        )
        publish(version)
        # Narrowed in the database behind validation's back (a version stored before the
        # rule existed, or tampered with): the runtime must still refuse.
        version.refresh_from_db()
        bundle = version.definition
        bundle["allowed_tools"] = allowed_tools
        bundle["tools"] = {k: v for k, v in bundle["tools"].items() if k in allowed_tools}
        if stored_kinds is not None:
            bundle["allowed_data_kinds"] = stored_kinds
        RoleVersion.objects.filter(pk=version.pk).update(definition=bundle)
        return Role.objects.get(pk=role.pk)

    def test_another_tenants_record_reads_as_not_found_and_is_audited(self, northwind, harbor):
        role = self._role_with(
            northwind,
            slug="prober",
            steps_def=[
                {
                    "key": "peek",
                    "kind": "tool",
                    "category": "data_access",
                    "tool": "records.get",
                    "args": {"references": ["C-1001", "C-2001"]},
                }
            ],
            allowed_tools=["records.get"],
            data_kinds=["contact", "matter", "ledger"],
        )
        run = start_run(
            tenant=northwind, role=role, input={}, actor=Actor.system("tests"), via="command"
        )

        advance(run.pk)

        peek = steps(run)["peek"]
        assert [r["reference"] for r in peek.output["records"]] == ["C-2001"]
        assert peek.output["not_found"] == ["C-1001"]
        refused = AuditEvent.objects.get(run_id=run.pk, action="data.refused")
        assert refused.tenant_id == northwind.pk
        assert refused.data["references"] == ["C-1001"]

    def test_a_tool_outside_the_roles_list_is_refused(self, harbor):
        role = self._role_with(
            harbor,
            slug="mailer",
            steps_def=[
                {
                    "key": "mail",
                    "kind": "tool",
                    "category": "client_comms",
                    "tool": "email.send",
                    "args": {"to": "a@example.com", "subject": "s", "body": "b"},
                }
            ],
            allowed_tools=["records.search"],
        )
        run = start_run(
            tenant=harbor, role=role, input={}, actor=Actor.system("tests"), via="command"
        )
        advance(run.pk)  # the call is gated first: even approved, it must be refused
        decide(
            request=ApprovalRequest.objects.get(run=run),
            reviewer=User.objects.get(username="reviewer.harbor"),
            verdict="approve",
        )

        advance(run.pk)

        run.refresh_from_db()
        assert run.status == Run.Status.FAILED
        assert steps(run)["mail"].attempts == 1
        assert AuditEvent.objects.filter(run_id=run.pk, action="tool.refused").count() == 1
        assert OutboxMessage.objects.count() == 0

    def test_a_data_kind_outside_the_roles_list_is_refused(self, harbor):
        role = self._role_with(
            harbor,
            slug="ledger-peek",
            steps_def=[
                {
                    "key": "peek",
                    "kind": "tool",
                    "category": "data_access",
                    "tool": "records.search",
                    "args": {"query": "a", "kind": "matter"},
                }
            ],
            allowed_tools=["records.search"],
            data_kinds=["contact", "matter"],
            stored_kinds=["contact"],
        )
        run = start_run(
            tenant=harbor, role=role, input={}, actor=Actor.system("tests"), via="command"
        )

        advance(run.pk)

        assert "may not read 'matter'" in steps(run)["peek"].error
        assert AuditEvent.objects.filter(run_id=run.pk, action="data.read").count() == 0


class TestLeases:
    def test_a_result_from_a_worker_that_lost_its_lease_is_discarded(self, start_intake):
        run = start_intake()
        first = lease(run, owner="worker-a")
        outcome = execute(first)
        StepRun.objects.filter(pk=first.step.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        services.reap()
        second = lease(run, owner="worker-b")

        kept = engine.checkpoint(first, outcome)

        assert kept.lease is None and kept.settled == 0
        step = StepRun.objects.get(pk=first.step.pk)
        assert step.status == StepRun.Status.RUNNING
        assert step.lease_owner == "worker-b"
        assert step.attempts == 2
        assert second.attempt == 2
        assert step.output is None
        assert AuditEvent.objects.filter(run_id=run.pk, action="step.lease_expired").count() == 1

    def test_a_step_whose_worker_died_too_often_fails_into_an_escalation(
        self, start_intake, settings
    ):
        run = start_intake()
        for _ in range(settings.DESK_STEP_MAX_LOST_LEASES):
            doomed = lease(run, owner="doomed")
            StepRun.objects.filter(pk=doomed.step.pk).update(
                lease_expires_at=timezone.now() - timedelta(seconds=1)
            )
            services.reap()

        advance(run)

        run.refresh_from_db()
        assert run.status == Run.Status.FAILED
        classify = run.steps.get(key="classify")
        assert classify.lost_leases == settings.DESK_STEP_MAX_LOST_LEASES
        assert classify.error == "its worker vanished 5 times (does the step kill it?)"
        assert Escalation.objects.filter(run=run).count() == 1

    def test_a_step_whose_worker_died_once_still_gets_all_its_attempts(
        self, start_intake, settings, monkeypatch
    ):
        # Lost once to a dead worker, then every model call fails: the errors alone count.
        run = start_intake()
        doomed = lease(run, owner="doomed")
        StepRun.objects.filter(pk=doomed.step.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        services.reap()
        provider = FlakyProvider(failures=99)
        monkeypatch.setattr(worker, "get_provider", lambda **_: provider)

        advance(run)

        classify = run.steps.get(key="classify")
        assert provider.calls == settings.DESK_STEP_MAX_ATTEMPTS
        assert (classify.attempts, classify.lost_leases) == (4, 1)
        assert classify.status == StepRun.Status.FAILED

    def test_a_live_lease_keeps_other_workers_off_the_step(self, start_intake):
        run = start_intake()
        lease(run, owner="worker-a")

        assert lease(run, owner="worker-b") is None

    def test_a_heartbeat_keeps_a_slow_step_from_being_taken_over(self, start_intake, settings):
        run = start_intake()
        held = lease(run, owner="worker-a")
        StepRun.objects.filter(pk=held.step.pk).update(
            lease_expires_at=timezone.now() + timedelta(seconds=1)
        )

        renewed = engine.renew_leases(leases=[held])
        services.reap(now=timezone.now() + timedelta(seconds=5))

        assert renewed == 1
        step = StepRun.objects.get(pk=held.step.pk)
        assert step.status == StepRun.Status.RUNNING
        assert step.lease_owner == "worker-a"
        assert step.lease_expires_at > timezone.now() + timedelta(
            seconds=settings.DESK_STEP_LEASE_SECONDS - 5
        )
        assert not AuditEvent.objects.filter(step_id=step.pk, action="step.lease_expired").exists()


class TestOutbox:
    def test_delivery_happens_once_however_often_it_is_asked(self, parked_intake, users):
        decide(
            request=ApprovalRequest.objects.get(run=parked_intake),
            reviewer=users["reviewer.harbor"],
            verdict="approve",
        )
        advance(parked_intake.pk)
        message = OutboxMessage.objects.get(run=parked_intake)

        services.deliver_outbox_message(message_id=message.pk)
        services.deliver_outbox_message(message_id=message.pk)

        message.refresh_from_db()
        assert message.status == OutboxMessage.Status.SENT
        assert len(mail.outbox) == 1
        assert mail.outbox[0].to == ["maya.chen@example.com"]
        assert AuditEvent.objects.filter(action="outbox.sent", run_id=parked_intake.pk).count() == 1

    def test_a_send_step_checkpointed_twice_writes_no_second_message(self, parked_intake, users):
        decide(
            request=ApprovalRequest.objects.get(run=parked_intake),
            reviewer=users["reviewer.harbor"],
            verdict="approve",
        )
        send = parked_intake.steps.get(key="send")
        advance(parked_intake)
        # The same step settled again, as a worker whose lease was taken over would.
        StepRun.objects.filter(pk=send.pk).update(status=StepRun.Status.READY)
        Run.objects.filter(pk=parked_intake.pk).update(status=Run.Status.RUNNING)
        advance(parked_intake)

        assert OutboxMessage.objects.filter(run=parked_intake).count() == 1
        assert (
            AuditEvent.objects.filter(run_id=parked_intake.pk, action="outbox.queued").count() == 1
        )


class TestOpenAIProvider:
    def test_a_run_calls_the_configured_endpoint_and_records_usage(
        self, start_intake, fake_openai, settings
    ):
        settings.DESK_LLM_PROVIDER = "openai"
        settings.OPENAI_BASE_URL = fake_openai.base_url
        settings.OPENAI_API_KEY = "sk-test"
        run = start_intake()

        advance(run.pk)

        run.refresh_from_db()
        assert run.status == Run.Status.WAITING_APPROVAL
        assert fake_openai.request_count == 2  # classify and draft
        classify = steps(run)["classify"]
        assert classify.prompt_tokens > 0
        assert run.prompt_tokens == classify.prompt_tokens + steps(run)["draft"].prompt_tokens
        first = fake_openai.requests[0]
        assert first.headers["authorization"] == "Bearer sk-test"
        assert "Lease question" in first.body["messages"][-1]["content"]


class TestStartRun:
    @pytest.mark.parametrize(
        ("bad_input", "field"),
        [
            ({"subject": "s", "body": "b"}, "(root)"),
            ({"from_email": 5, "subject": "s", "body": "b"}, "from_email"),
            ({"from_email": "a@example.com", "subject": "", "body": "b"}, "subject"),
        ],
    )
    def test_input_not_matching_the_schema_is_refused_and_writes_nothing(
        self, harbor, intake_role, bad_input, field
    ):
        events_before = AuditEvent.objects.count()

        with pytest.raises(services.RunError) as caught:
            start_run(
                tenant=harbor,
                role=intake_role,
                input=bad_input,
                actor=Actor.system("t"),
                via="command",
            )

        assert caught.value.code == "invalid_input"
        assert caught.value.details[0]["field"] == field
        assert Run.objects.count() == 0
        assert AuditEvent.objects.count() == events_before

    def test_a_role_of_another_tenant_is_not_found(self, northwind, intake_role):
        with pytest.raises(services.RunError) as caught:
            start_run(
                tenant=northwind, role=intake_role, input={}, actor=Actor.system("t"), via="command"
            )

        assert caught.value.code == "role_not_found"
        assert Run.objects.count() == 0

    def test_a_suspended_tenant_starts_nothing(self, harbor, intake_role):
        harbor.status = "suspended"
        harbor.save()

        with pytest.raises(services.RunError) as caught:
            start_run(
                tenant=harbor, role=intake_role, input={}, actor=Actor.system("t"), via="command"
            )

        assert caught.value.code == "tenant_inactive"

    def test_the_run_is_pinned_to_the_version_active_when_it_started(
        self, start_intake, intake_role
    ):
        first = start_intake()
        definition = {**intake_role.active_version.definition, "system": "Version two."}
        publish(
            create_role_version(role=intake_role, definition=definition, actor=Actor.system("t"))
        )

        second = start_intake()

        assert first.role_version.number == 1
        assert second.role_version.number == 2

    def test_the_doorbell_rings_only_after_commit(
        self, start_intake, django_capture_on_commit_callbacks, monkeypatch
    ):
        rung = []
        monkeypatch.setattr("desk.doorbell.async_task", lambda func, **kw: rung.append((func, kw)))

        with django_capture_on_commit_callbacks(execute=True):
            run = start_intake()
            assert rung == []

        assert rung == [
            (
                "desk.tasks.advance_run",
                {
                    "run_id": run.pk,
                    "tenant_id": run.tenant_id,
                    "q_options": {"group": "runs", "save": False},
                },
            )
        ]


class TestCancel:
    def test_cancelling_a_parked_run_closes_its_request(self, parked_intake, users):
        run = services.cancel_run(
            run=parked_intake, actor=Actor.for_user(users["ops"]), reason="Client called"
        )

        assert run.status == Run.Status.CANCELLED
        assert ApprovalRequest.objects.get(run=run).status == ApprovalRequest.Status.CANCELLED
        with pytest.raises(services.RunError):
            services.cancel_run(run=run, actor=Actor.for_user(users["ops"]), reason="again")


class TestBrokerOutage:
    def test_a_broker_outage_after_commit_keeps_the_run(
        self, start_intake, monkeypatch, django_capture_on_commit_callbacks
    ):
        def broker_down(*args, **kwargs):
            raise ConnectionError("broker unreachable")

        monkeypatch.setattr("desk.doorbell.async_task", broker_down)

        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            run = start_intake()

        assert len(callbacks) == 1  # the doorbell was rung, failed, and was only logged
        assert Run.objects.get(pk=run.pk).status == Run.Status.RUNNING
