"""Golden cases and the regression gate: each test tries to get a version past the gate (or a
suite to do harm) and checks that it fails and that nothing changed."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.exceptions import ValidationError

from approvals.models import ApprovalRequest
from approvals.services import decide
from audit.models import AuditEvent
from audit.services import Actor
from desk.demo import INTAKE_INPUT_SCHEMA
from desk.models import OutboxMessage, Run, TenantUsage
from roles import evaluation, golden
from roles.models import CaseResult, GoldenCase, Role, RoleVersion, SuiteRun
from roles.services import create_role_version
from tenants import rls
from tests.conftest import INTAKE_INPUT, on_postgres
from tests.publishing import publish

BUNDLE = {
    "allowed_tools": ["records.search", "email.send"],
    "allowed_data_kinds": ["contact", "matter"],
    "input_schema": INTAKE_INPUT_SCHEMA,
}
GOOD = {
    "fields": [
        {"path": "draft.subject", "op": "equals", "value": "Re: Lease question"},
        {"path": "draft.body", "op": "contains", "value": "Maya"},
        {"path": "send.args.to", "op": "matches", "value": r"^maya\.chen@"},
    ],
    "tools_called": ["records.search", "email.send"],
    "gates_hit": ["draft"],
    "output_schema": {"type": "object", "required": ["to", "subject", "body"]},
    "max_tokens": 5000,
    "max_cost": "1.00",
}

LOOSE = {"gates_hit": ["draft"], "tools_called": ["email.send"]}


def ops(users) -> Actor:
    return Actor.for_user(users["ops"])


def draft_of(role: Role, users, **changes) -> RoleVersion:
    definition = {**role.active_version.definition, **BUNDLE, **changes}
    return create_role_version(role=role, definition=definition, actor=ops(users))


@pytest.fixture
def role(intake_role, users) -> Role:
    """The intake coordinator, with an active version whose bundle carries its tools, data
    kinds and input schema."""
    version = draft_of(intake_role, users)
    publish(version)
    intake_role.refresh_from_db()
    return intake_role


def add_case(role, users, name="Lease question", expectations=GOOD, **input) -> GoldenCase:
    return golden.create_case(
        role=role,
        name=name,
        input={**INTAKE_INPUT, **input},
        expectations=expectations,
        actor=ops(users),
    )


def run(version, users) -> SuiteRun:
    suite = golden.start_suite(version, ops(users))
    golden.run_suite(suite.pk)
    suite.refresh_from_db()
    return suite


def verdicts(report) -> dict[str, str]:
    return {row.case: row.verdict for row in report.rows}


# --- the happy path, for contrast ----------------------------------------------------------


def test_a_passing_suite_of_the_active_version_is_the_baseline_and_opens_the_gate(role, users):
    add_case(role, users)

    suite = run(role.active_version, users)
    report = golden.regression_gate(role.active_version)

    assert suite.status == SuiteRun.Status.PASSED, suite.results.get().checks
    assert suite.is_baseline and suite.cases_done == suite.cases_total == 1
    result = suite.results.get()
    assert result.gates_hit == ["draft"]  # `send` goes ahead on the draft's approval
    assert [c["tool"] for c in result.tools_called] == ["records.search", "email.send"]
    assert result.tokens > 0
    assert report.ok, report.problems
    assert verdicts(report) == {"Lease question": "passed"}  # it is its own baseline


def test_a_draft_that_keeps_passing_opens_the_gate(role, users):
    add_case(role, users)
    run(role.active_version, users)
    draft = draft_of(role, users, system="You are the intake coordinator. Be brief.")

    suite = run(draft, users)
    report = golden.regression_gate(draft)

    assert suite.status == SuiteRun.Status.PASSED and not suite.is_baseline
    assert report.ok, report.problems
    assert verdicts(report) == {"Lease question": "passed"}


def test_a_case_added_after_the_baseline_is_new(role, users):
    add_case(role, users)
    assert run(role.active_version, users).is_baseline
    add_case(role, users, name="Incorporation", expectations=LOOSE, subject="Incorporation")
    draft = draft_of(role, users, system="Short answers.")

    run(draft, users)
    report = golden.regression_gate(draft)

    assert report.ok, report.problems
    assert verdicts(report) == {"Lease question": "passed", "Incorporation": "new"}


def test_a_draft_passing_what_the_active_version_fails_is_fixed(role, users):
    steps = [dict(step) for step in role.active_version.steps]
    add_case(role, users, expectations={"gates_hit": ["send"]})
    assert run(role.active_version, users).status == SuiteRun.Status.FAILED
    steps[3].pop("covered_by")  # the e-mail gets its own review
    draft = draft_of(role, users, steps=steps)

    run(draft, users)
    report = golden.regression_gate(draft)

    assert report.ok, report.problems
    assert verdicts(report) == {"Lease question": "fixed"}


# --- attacks on the gate ---------------------------------------------------------------------


def test_no_cases_fails_closed(role, users):
    before = SuiteRun.objects.count()

    report = golden.regression_gate(role.active_version)
    with pytest.raises(ValidationError):
        golden.start_suite(role.active_version, ops(users))

    assert not report.ok
    assert any("no active golden cases" in p for p in report.problems)
    assert SuiteRun.objects.count() == before


def test_a_version_never_run_fails_the_gate(role, users):
    add_case(role, users)

    report = golden.regression_gate(draft_of(role, users))

    assert not report.ok
    assert any("No suite run" in p for p in report.problems)


def test_an_unfinished_suite_fails_the_gate(role, users):
    add_case(role, users)
    golden.start_suite(role.active_version, ops(users))  # queued, no worker yet

    report = golden.regression_gate(role.active_version)

    assert not report.ok
    assert any("has not finished" in p for p in report.problems)


def test_a_missing_case_fails_the_gate(role, users):
    add_case(role, users)
    run(role.active_version, users)
    add_case(role, users, name="Incorporation", expectations=LOOSE, subject="Incorporation")

    report = golden.regression_gate(role.active_version)

    assert not report.ok
    assert verdicts(report)["Incorporation"] == "missing"


def test_an_erroring_case_fails_the_gate(role, users):
    add_case(role, users)
    # An input the version's schema refuses: the case cannot even start.
    golden.create_case(
        role=role,
        name="Broken input",
        input={"from_email": 42},
        expectations={},
        actor=ops(users),
    )

    suite = run(role.active_version, users)
    report = golden.regression_gate(role.active_version)

    assert suite.status == SuiteRun.Status.ERROR and not suite.is_baseline
    assert suite.results.get(case__name="Broken input").status == CaseResult.Status.ERROR
    assert not report.ok
    assert verdicts(report)["Broken input"] == "error"


def test_a_retired_baseline_case_counts_as_missing(role, users):
    add_case(role, users)
    inconvenient = add_case(role, users, name="Urgent", body="Urgent: call me today")
    baseline = run(role.active_version, users)
    assert baseline.is_baseline
    draft = draft_of(role, users, system="Short answers only.")
    golden.retire_case(case=inconvenient, actor=ops(users), reason="It keeps failing")

    suite = run(draft, users)
    report = golden.regression_gate(draft)

    assert suite.status == SuiteRun.Status.PASSED  # the draft's own run looks fine...
    assert not report.ok  # ...but the gate sees the case that went away
    assert verdicts(report)["Urgent"] == "missing"
    assert GoldenCase.objects.filter(pk=inconvenient.pk).exists()  # retired, not deleted


def test_a_draft_edited_after_its_suite_needs_a_new_suite(role, users):
    add_case(role, users)
    draft = draft_of(role, users)
    assert run(draft, users).status == SuiteRun.Status.PASSED
    changed = {**draft.definition, "system": "Promise anything the client asks."}
    RoleVersion.objects.filter(pk=draft.pk).update(definition=changed)
    draft.refresh_from_db()

    report = golden.regression_gate(draft)

    assert not report.ok
    assert any("No suite run for this version as it is now" in p for p in report.problems)


def test_a_bundle_changed_while_the_suite_runs_ends_it_in_error(role, users):
    add_case(role, users)
    draft = draft_of(role, users)
    suite = golden.start_suite(draft, ops(users))
    RoleVersion.objects.filter(pk=draft.pk).update(definition={**draft.definition, "system": "x"})

    status = golden.run_suite(suite.pk)

    suite.refresh_from_db()
    assert status == SuiteRun.Status.ERROR and "bundle changed" in suite.error
    assert not suite.results.exists()


def test_a_case_edited_after_the_suite_is_stale(role, users):
    case = add_case(role, users)
    run(role.active_version, users)
    loosened = {"fields": [{"path": "draft.subject", "op": "contains", "value": "Re"}]}
    golden.update_case(case=case, actor=ops(users), changes={"expectations": loosened})

    report = golden.regression_gate(role.active_version)

    assert not report.ok
    assert verdicts(report) == {"Lease question": "stale"}


def test_a_failing_run_never_becomes_the_baseline(role, users):
    case = add_case(role, users)
    baseline = run(role.active_version, users)
    wrong = {"fields": [{"path": "draft.subject", "op": "equals", "value": "We accept"}]}
    golden.update_case(case=case, actor=ops(users), changes={"expectations": wrong})

    failing = run(role.active_version, users)

    baseline.refresh_from_db()
    assert failing.status == SuiteRun.Status.FAILED and not failing.is_baseline
    assert baseline.is_baseline
    assert not golden.regression_gate(role.active_version).ok


def test_a_draft_that_breaks_a_baseline_case_is_a_regression(role, users):
    add_case(role, users)
    run(role.active_version, users)
    steps = [dict(step) for step in role.active_version.steps]
    steps[2]["prompt"] = "Subject: Something else\n" + steps[2]["prompt"]
    draft = draft_of(role, users, steps=steps)

    suite = run(draft, users)
    report = golden.regression_gate(draft)

    assert suite.status == SuiteRun.Status.FAILED
    assert not report.ok
    assert verdicts(report) == {"Lease question": "regressed"}


def test_a_suite_of_a_draft_never_becomes_the_baseline(role, users):
    add_case(role, users)

    suite = run(draft_of(role, users), users)

    assert suite.status == SuiteRun.Status.PASSED and not suite.is_baseline
    assert not SuiteRun.objects.filter(role=role, is_baseline=True).exists()


def test_a_rubric_is_graded_by_the_model_and_repeats_on_the_offline_provider(role, users):
    add_case(role, users, expectations={"rubric": "The reply is courteous."})

    first = run(role.active_version, users).results.get()
    second = run(draft_of(role, users), users).results.get()

    assert first.status == CaseResult.Status.PASSED
    assert first.checks == second.checks and first.checks[0]["check"] == "rubric"


def test_a_final_output_outside_the_expected_schema_fails(role, users):
    schema = {"type": "object", "required": ["cc"]}
    add_case(role, users, expectations={"output_schema": schema})

    suite = run(role.active_version, users)

    result = suite.results.get()
    assert result.status == CaseResult.Status.FAILED
    assert "'cc' is a required property" in result.checks[0]["detail"]
    assert suite.status == SuiteRun.Status.FAILED and not suite.is_baseline


# --- attacks through the suite itself --------------------------------------------------------


def test_a_suite_never_sends_email(role, users, harbor):
    add_case(role, users)
    mail.outbox.clear()
    before = (
        OutboxMessage.objects.count(),
        Run.objects.count(),
        list(TenantUsage.objects.filter(tenant=harbor).values()),
    )

    suite = run(role.active_version, users)

    call = suite.results.get().tools_called[-1]
    assert call["tool"] == "email.send" and call["executed"] is False
    assert call["args"]["to"] == INTAKE_INPUT["from_email"]
    assert suite.results.get().output["send"]["output"] == {"simulated": True}
    assert mail.outbox == []
    assert (
        OutboxMessage.objects.count(),
        Run.objects.count(),
        list(TenantUsage.objects.filter(tenant=harbor).values()),
    ) == before


def test_an_empty_tool_allow_list_allows_nothing(role, users):
    add_case(role, users)
    with pytest.raises(ValidationError, match="not in the bundle's allowed tools"):
        draft_of(role, users, allowed_tools=[])
    # Stored behind validation's back, the suite still refuses the call.
    draft = draft_of(role, users, system="Another")
    RoleVersion.objects.filter(pk=draft.pk).update(
        definition={**draft.definition, "allowed_tools": []}
    )
    draft.refresh_from_db()

    suite = run(draft, users)

    result = suite.results.get()
    assert result.status == CaseResult.Status.ERROR
    assert "may not use the tool 'records.search'" in result.error
    assert not golden.regression_gate(draft).ok


def test_an_empty_data_kinds_list_reads_nothing_and_the_refusal_is_audited(role, users, harbor):
    add_case(role, users, expectations={})
    with pytest.raises(ValidationError, match="'allowed_data_kinds' is empty"):
        draft_of(role, users, allowed_data_kinds=[])
    # Stored behind validation's back, the suite still reads nothing.
    draft = draft_of(role, users, system="Another")
    RoleVersion.objects.filter(pk=draft.pk).update(
        definition={**draft.definition, "allowed_data_kinds": []}
    )
    draft.refresh_from_db()

    suite = run(draft, users)

    result = suite.results.get()
    assert result.status == CaseResult.Status.ERROR and "refused" in result.error
    assert AuditEvent.objects.filter(
        tenant=harbor, action="data.refused", object_id=str(result.pk)
    ).exists()


def test_a_stored_draft_sending_to_a_model_chosen_recipient_is_refused(role, users):
    add_case(role, users, subject="attacker@evil.example")  # the draft's subject holds it
    draft = draft_of(role, users, system="Another")
    bundle = draft.definition
    next(s for s in bundle["steps"] if s["key"] == "send")["args"]["to"] = (
        "{{ steps.draft.subject }}"
    )
    RoleVersion.objects.filter(pk=draft.pk).update(definition=bundle)
    draft.refresh_from_db()

    suite = run(draft, users)

    result = suite.results.get()
    assert result.status == CaseResult.Status.ERROR
    assert "the target 'to' of step 'send' reads steps.draft (model output)" in result.error
    assert not golden.regression_gate(draft).ok


def test_reads_are_audited_naming_the_golden_case(role, users, harbor):
    case = add_case(role, users)

    suite = run(role.active_version, users)

    read = AuditEvent.objects.get(tenant=harbor, action="data.read", data__suite_run=suite.pk)
    assert "Golden case “Lease question”" in read.reason
    assert read.data["golden_case"] == case.pk and read.data["references"]
    assert read.role_version_id == role.active_version_id


def test_a_suite_task_run_twice_evaluates_each_case_once(role, users, monkeypatch):
    add_case(role, users)
    add_case(role, users, name="Incorporation", expectations=LOOSE, subject="Incorporation")
    suite = golden.start_suite(role.active_version, ops(users))
    calls = []
    evaluate = evaluation.evaluate
    monkeypatch.setattr(
        evaluation, "evaluate", lambda **kw: calls.append(kw["input"]) or evaluate(**kw)
    )

    first = golden.run_suite(suite.pk)
    events = AuditEvent.objects.count()
    second = golden.run_suite(suite.pk)

    suite.refresh_from_db()
    assert first == second == SuiteRun.Status.PASSED
    assert len(calls) == 2 and suite.results.count() == suite.cases_done == 2
    assert AuditEvent.objects.count() == events  # the second delivery did nothing


def test_a_killed_worker_resumes_where_it_stopped(role, users, monkeypatch):
    first_case = add_case(role, users)
    add_case(role, users, name="Incorporation", expectations=LOOSE, subject="Incorporation")
    suite = golden.start_suite(role.active_version, ops(users))
    # The first worker evaluated one case, saved it, and was killed.
    assert golden._run_case(suite.pk, first_case.pk, suite.tenant_id)
    suite.refresh_from_db()
    assert (suite.status, suite.cases_done) == (SuiteRun.Status.QUEUED, 1)
    calls = []
    evaluate = evaluation.evaluate
    monkeypatch.setattr(
        evaluation, "evaluate", lambda **kw: calls.append(kw["input"]) or evaluate(**kw)
    )

    status = golden.run_suite(suite.pk)

    suite.refresh_from_db()
    assert status == SuiteRun.Status.PASSED
    assert [c["subject"] for c in calls] == ["Incorporation"]
    assert suite.cases_done == 2 and suite.results.count() == 2


def test_start_suite_enqueues_only_the_id_after_commit_and_never_doubles_a_suite(
    role, users, monkeypatch, django_capture_on_commit_callbacks
):
    add_case(role, users)
    sent = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, **kw: sent.append((func, kw)))

    with django_capture_on_commit_callbacks(execute=True):
        suite = golden.start_suite(role.active_version, ops(users))
        again = golden.start_suite(role.active_version, ops(users))

    assert again == suite  # an unfinished suite of the same bundle is not doubled...
    task = (
        "roles.tasks.run_golden_suite",
        {"suite_run_id": suite.pk, "q_options": golden.SUITE_GROUP},
    )
    assert sent == [task, task]  # ...but its task, which may be lost, is rung again
    assert SuiteRun.objects.filter(version=suite.version).count() == 1


# --- making cases -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expectations",
    [
        {"unknown": 1},
        {"fields": [{"path": "draft.subject", "op": "is", "value": "x"}]},
        {"fields": [{"path": "draft.subject", "op": "matches", "value": "("}]},
        {"fields": [{"path": "", "op": "equals", "value": "x"}]},
        {"fields": "draft.subject"},
        {"output_schema": {"type": "no-such-type"}},
        {"tools_called": "email.send"},
        {"max_tokens": -1},
        {"max_tokens": True},
        {"max_cost": 0.05},
        {"max_cost": "lots"},
        {"rubric": ""},
        [],
    ],
)
def test_bad_expectations_write_nothing(role, users, expectations):
    before = (GoldenCase.objects.count(), GoldenCase.history.count(), AuditEvent.objects.count())

    with pytest.raises(ValidationError) as refused:
        add_case(role, users, expectations=expectations)

    assert "expectations" in refused.value.message_dict
    after = (GoldenCase.objects.count(), GoldenCase.history.count(), AuditEvent.objects.count())
    assert after == before


def test_a_taken_name_or_a_non_object_input_writes_nothing(role, users):
    add_case(role, users)
    before = (GoldenCase.objects.count(), AuditEvent.objects.count())

    with pytest.raises(ValidationError) as taken:
        add_case(role, users)
    with pytest.raises(ValidationError) as not_an_object:
        golden.create_case(role=role, name="List", input=["x"], expectations={}, actor=ops(users))

    assert "name" in taken.value.message_dict
    assert "input" in not_an_object.value.message_dict
    assert (GoldenCase.objects.count(), AuditEvent.objects.count()) == before


def edit_and_approve(run, users, subject="Re: Your lease — next steps"):
    """A reviewer's "Edit & approve" of the parked draft; the run then completes."""
    from tests.runtime import advance

    request = ApprovalRequest.objects.get(run=run)
    draft = request.proposal["draft"]
    decision = decide(
        request=request,
        reviewer=users["reviewer.harbor"],
        verdict="edit",
        edited_payload={"draft": {**draft, "subject": subject}},
        comment="Clearer subject",
    )
    advance(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    return decision


def test_case_from_a_decision_keeps_provenance(parked_intake, users, harbor):
    decision = edit_and_approve(parked_intake, users)

    case = golden.case_from_decision(decision, ops(users))

    assert case.source == GoldenCase.Source.DECISION
    assert case.source_decision == decision and case.source_run == parked_intake
    assert case.input == parked_intake.input
    assert {"path": "draft.subject", "op": "equals", "value": "Re: Your lease — next steps"} in (
        case.expectations["fields"]
    )
    created = AuditEvent.objects.get(tenant=harbor, action="golden_case.created")
    assert created.data["decision"] == decision.pk and created.run_id == parked_intake.pk


def test_a_reviewers_edit_is_a_case_the_unchanged_version_fails(parked_intake, users):
    case = golden.case_from_decision(edit_and_approve(parked_intake, users), ops(users))
    version = parked_intake.role_version
    # The demo's version reads tools and data kinds from the role until the bundle carries
    # them; a draft that carries them says the same.
    draft = create_role_version(
        role=case.role, definition={**version.definition, **BUNDLE}, actor=ops(users)
    )

    suite = run(draft, users)

    result = suite.results.get()
    assert result.status == CaseResult.Status.FAILED
    assert [c["check"] for c in result.checks if not c["ok"]] == [
        'draft.subject equals "Re: Your lease \\u2014 next steps"'
    ]


def test_a_plain_approval_or_a_second_copy_makes_no_case(parked_intake, users):
    request = ApprovalRequest.objects.get(run=parked_intake)
    plain = decide(request=request, reviewer=users["reviewer.harbor"], verdict="approve")
    before = GoldenCase.objects.count()

    with pytest.raises(ValidationError):
        golden.case_from_decision(plain, ops(users))

    assert GoldenCase.objects.count() == before


def test_one_decision_makes_one_case(parked_intake, users):
    decision = edit_and_approve(parked_intake, users)
    golden.case_from_decision(decision, ops(users))
    before = GoldenCase.objects.count()

    with pytest.raises(ValidationError):
        golden.case_from_decision(decision, ops(users))

    assert GoldenCase.objects.count() == before


def test_case_from_a_run_needs_a_completed_run(parked_intake, users):
    before = GoldenCase.objects.count()

    with pytest.raises(ValidationError):
        golden.case_from_run(parked_intake, ops(users))

    assert GoldenCase.objects.count() == before


def test_case_from_a_completed_run_expects_its_outputs_and_what_it_sent(parked_intake, users):
    from tests.runtime import advance

    decide(
        request=ApprovalRequest.objects.get(run=parked_intake),
        reviewer=users["reviewer.harbor"],
        verdict="approve",
    )
    advance(parked_intake.pk)
    parked_intake.refresh_from_db()
    assert parked_intake.status == Run.Status.COMPLETED

    case = golden.case_from_run(parked_intake, ops(users))

    paths = {item["path"] for item in case.expectations["fields"]}
    assert {"classify.category", "draft.subject", "send.args.to", "send.args.body"} <= paths
    assert not any(path.startswith("lookup") for path in paths)
    assert case.source == GoldenCase.Source.RUN and case.source_run == parked_intake


# --- tenants ----------------------------------------------------------------------------------


def test_a_case_of_one_tenant_is_never_run_for_another(role, users, northwind):
    harbor_case = add_case(role, users)
    reporter = Role.objects.get(tenant=northwind, slug="month-end-reporter")
    golden.create_case(role=reporter, name="November", input={}, expectations={}, actor=ops(users))

    suite = golden.start_suite(reporter.active_version, ops(users))
    golden.run_suite(suite.pk)

    assert list(suite.results.values_list("case__tenant", flat=True)) == [northwind.pk]
    assert not CaseResult.objects.filter(case=harbor_case).exists()
    if on_postgres():
        with rls.tenant_context(northwind.pk):
            assert not GoldenCase.objects.filter(pk=harbor_case.pk).exists()
            assert not SuiteRun.objects.filter(tenant_id=role.tenant_id).exists()


@pytest.mark.postgres
def test_a_suite_reads_nothing_outside_its_tenant_context(role, users):
    """Run the task and the gate as the application role with no tenant set, as a worker
    does: a query outside the task's tenant context would find nothing and fail."""
    from django.db import connection

    add_case(role, users)
    suite = golden.start_suite(role.active_version, ops(users))
    with connection.cursor() as cursor:
        cursor.execute(f'SET LOCAL ROLE "{rls.APP_ROLE}"')
        cursor.execute("SELECT set_config('agentdesk.tenant_ids', '', true)")
        cursor.execute("SELECT count(*) FROM roles_goldencase")
        assert cursor.fetchone() == (0,)

    status = golden.run_suite(suite.pk)
    report = golden.regression_gate(role.active_version)

    assert status == SuiteRun.Status.PASSED
    assert report.ok, report.problems
