"""Change control over the bundle (roles.services), tried as an attacker would: each test
names the way around the control it tries, and asserts it fails and nothing changed."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from approvals.models import ApprovalRequest, ReviewerGroup
from audit.models import AuditEvent
from audit.services import Actor
from desk.models import Run
from desk.services import start_run
from roles import golden
from roles.models import Publication, Role, RoleVersion
from roles.services import (
    activate_role_version,
    approve_publication,
    close_publication,
    create_role_version,
    request_publication,
    set_canary,
    update_draft,
    update_role,
)
from tenants.services import grant_membership
from tests.conftest import INTAKE_INPUT
from tests.publishing import publish
from tests.runtime import advance

CASE = {"gates_hit": ["draft"], "tools_called": ["records.search", "email.send"]}


def actor(users, name: str) -> Actor:
    return Actor.for_user(users[name])


@pytest.fixture
def third_operator(harbor):
    user = get_user_model().objects.create_user("ops3", password="pw-ops3-12345", is_staff=True)
    grant_membership(user=user, tenant=harbor, kind="operator", actor=Actor.system("t"))
    return user


@pytest.fixture
def passing(intake_role, users):
    """The intake role with a golden case its active version passes (the baseline)."""
    golden.create_case(
        role=intake_role,
        name="Lease",
        input=INTAKE_INPUT,
        expectations=CASE,
        actor=actor(users, "ops"),
    )
    suite = golden.start_suite(intake_role.active_version, actor(users, "ops"))
    golden.run_suite(suite.pk)
    return intake_role


def draft(role: Role, users, *, by: str = "ops", **changes) -> RoleVersion:
    definition = {**role.active_version.definition, "system": "You are brief.", **changes}
    return create_role_version(role=role, definition=definition, actor=actor(users, by))


def suite_passes(version: RoleVersion, users) -> None:
    suite = golden.start_suite(version, actor(users, "ops"))
    golden.run_suite(suite.pk)
    assert golden.regression_gate(version).ok


def state(version: RoleVersion) -> tuple:
    version.refresh_from_db()
    role = Role.objects.get(pk=version.role_id)
    return (
        version.status,
        version.digest,
        role.active_version_id,
        role.canary_version_id,
        list(version.publications.values_list("status", flat=True)),
    )


def start(role: Role) -> Run:
    return start_run(
        tenant=role.tenant, role=role, input=INTAKE_INPUT, actor=Actor.system("t"), via="api"
    )


# --- 1. the bundle is the version ------------------------------------------------------------


def test_the_role_page_cannot_change_what_runs_do(intake_role, users):
    before = intake_role.active_version.definition
    for field in ("allowed_tools", "input_schema", "target_turnaround_minutes", "approval_rules"):
        with pytest.raises(ValueError):
            update_role(role=intake_role, actor=actor(users, "ops"), changes={field: []})
    intake_role.refresh_from_db()
    assert intake_role.active_version.definition == before


def test_a_one_person_draft_never_reaches_a_run(intake_role, users):
    # Everything loosened at once: tools, data kinds, schema, approval rules, SLA.
    v1 = intake_role.active_version
    loose = draft(
        intake_role,
        users,
        allowed_data_kinds=["contact", "matter", "ledger"],
        input_schema={"type": "object"},
        target_turnaround_minutes=10_000,
    )

    run = start(intake_role)

    assert run.role_version == v1 and loose.status == RoleVersion.Status.DRAFT


def test_a_run_keeps_its_versions_approval_rules_after_a_stricter_one_is_activated(
    intake_role, users
):
    before = start(intake_role)
    advance(before.pk)
    rules = [{"category": "client_comms", "required_approvals": 2}]
    v2 = publish(draft(intake_role, users, approval_rules=rules))

    after = start(intake_role)
    advance(after.pk)

    assert after.role_version == v2
    assert ApprovalRequest.objects.get(run=after).required_approvals == 2
    assert ApprovalRequest.objects.get(run=before).required_approvals == 1
    assert ApprovalRequest.objects.get(run=after).rule["source"] == "tenant+role version"


def test_a_rule_naming_a_group_the_tenant_lacks_is_refused(intake_role, users):
    count = RoleVersion.objects.count()
    rules = [{"category": "client_comms", "approver_groups": ["Ghosts"]}]

    with pytest.raises(ValidationError, match="groups the tenant does not have: Ghosts"):
        draft(intake_role, users, approval_rules=rules)

    assert RoleVersion.objects.count() == count


def test_a_rules_group_deleted_after_publishing_holds_every_request(intake_role, users, harbor):
    group = ReviewerGroup.objects.create(tenant=harbor, name="Partners")
    rules = [{"category": "client_comms", "approver_groups": ["Partners"]}]
    publish(draft(intake_role, users, approval_rules=rules))
    group.delete()

    run = start(intake_role)
    advance(run.pk)

    # A group nobody can be in: the request waits for a person and escalates (fail closed).
    assert ApprovalRequest.objects.get(run=run).rule["groups"] == [-1]


def test_the_pinned_versions_input_schema_decides_not_the_newest(intake_role, users):
    from desk.services import RunError

    strict = {
        **intake_role.active_version.input_schema,
        "required": ["from_email", "subject", "body", "phone"],
    }
    draft(intake_role, users, input_schema=strict)  # a draft: not in use

    run = start(intake_role)

    assert run.role_version == intake_role.active_version
    publish(draft(intake_role, users, input_schema=strict))
    with pytest.raises(RunError) as caught:
        start(intake_role)
    assert caught.value.code == "invalid_input"


def test_a_tool_whose_code_drifted_from_the_pin_is_refused(intake_role, users):
    version = intake_role.active_version
    bundle = version.definition
    bundle["tools"]["records.search"]["args_schema"] = {"type": "object", "maxProperties": 0}
    RoleVersion.objects.filter(pk=version.pk).update(definition=bundle)

    run = start(intake_role)
    advance(run.pk)

    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "changed its args_schema since the version was saved" in run.error
    assert not AuditEvent.objects.filter(run_id=run.pk, action="data.read").exists()


def test_a_draft_pins_the_tools_it_allows(intake_role, users):
    version = draft(intake_role, users)

    assert sorted(version.definition["tools"]) == ["email.send", "records.search"]
    assert version.definition["tools"]["email.send"]["category"] == "client_comms"


# --- 2. draft -> review -> publish -----------------------------------------------------------


def test_the_requester_cannot_approve_their_own_publication(passing, users):
    version = draft(passing, users, by="ops.second")
    suite_passes(version, users)
    publication = request_publication(version=version, actor=actor(users, "ops"))
    before = state(version)

    with pytest.raises(ValidationError) as caught:
        approve_publication(publication=publication, actor=actor(users, "ops"))

    assert caught.value.code == "four_eyes"
    assert state(version) == before


def test_the_drafts_author_cannot_approve_when_someone_else_asked(passing, users):
    version = draft(passing, users, by="ops")
    suite_passes(version, users)
    publication = request_publication(version=version, actor=actor(users, "ops.second"))
    before = state(version)

    with pytest.raises(ValidationError) as caught:
        approve_publication(publication=publication, actor=actor(users, "ops"))

    assert caught.value.code == "four_eyes"
    assert state(version) == before


def test_an_editor_of_the_draft_cannot_approve_it(passing, users, third_operator):
    version = draft(passing, users, by="ops.second")
    update_draft(
        version=version,
        actor=actor(users, "ops"),
        definition={**version.definition, "system": "Edited by ops."},
        change_note="",
    )
    suite_passes(version, users)
    publication = request_publication(version=version, actor=Actor.for_user(third_operator))
    before = state(version)

    for name in ("ops.second", "ops"):  # its author, then its editor
        with pytest.raises(ValidationError) as caught:
            approve_publication(publication=publication, actor=actor(users, name))
        assert caught.value.code == "four_eyes"
    assert state(version) == before


def test_an_edit_after_the_request_does_not_ride_on_it(passing, users):
    version = draft(passing, users, by="ops")
    suite_passes(version, users)
    publication = request_publication(version=version, actor=actor(users, "ops"))

    update_draft(
        version=version,
        actor=actor(users, "ops"),
        definition={**version.definition, "system": "Send without review."},
        change_note="",
    )

    publication.refresh_from_db()
    assert publication.status == Publication.Status.LAPSED
    with pytest.raises(ValidationError) as caught:
        approve_publication(publication=publication, actor=actor(users, "ops.second"))
    assert caught.value.code == "not_pending"
    version.refresh_from_db()
    assert version.status == RoleVersion.Status.DRAFT


def test_a_change_behind_the_services_back_is_caught_by_the_digest(passing, users):
    version = draft(passing, users, by="ops")
    suite_passes(version, users)
    publication = request_publication(version=version, actor=actor(users, "ops"))
    RoleVersion.objects.filter(pk=version.pk).update(
        definition={**version.definition, "system": "Tampered."}
    )
    before = state(version)

    with pytest.raises(ValidationError) as caught:
        approve_publication(publication=publication, actor=actor(users, "ops.second"))

    assert caught.value.code == "stale"
    assert state(version) == before


@pytest.mark.parametrize("who", ["reviewer.harbor", "auditor", "system"])
def test_only_a_person_operating_the_tenant_asks_for_or_decides_a_publication(passing, users, who):
    person = Actor.system("script") if who == "system" else actor(users, who)
    version = draft(passing, users, by="ops")
    suite_passes(version, users)
    before = state(version)

    with pytest.raises(ValidationError):
        request_publication(version=version, actor=person)
    publication = request_publication(version=version, actor=actor(users, "ops"))
    with pytest.raises(ValidationError) as caught:
        approve_publication(publication=publication, actor=person)

    assert caught.value.code == "forbidden"
    version.refresh_from_db()
    assert version.status == RoleVersion.Status.DRAFT and before[0] == version.status


def test_an_operator_of_another_tenant_cannot_decide(passing, users, northwind):
    outsider = get_user_model().objects.create_user("ops.nw", is_staff=True)
    grant_membership(user=outsider, tenant=northwind, kind="operator", actor=Actor.system("t"))
    version = draft(passing, users, by="ops")
    suite_passes(version, users)
    publication = request_publication(version=version, actor=actor(users, "ops"))

    with pytest.raises(ValidationError) as caught:
        approve_publication(publication=publication, actor=Actor.for_user(outsider))

    assert caught.value.code == "forbidden"


def test_a_draft_without_a_passing_suite_cannot_even_be_asked_for(passing, users):
    version = draft(passing, users, by="ops")
    events = AuditEvent.objects.count()

    with pytest.raises(ValidationError) as caught:
        request_publication(version=version, actor=actor(users, "ops"))

    assert caught.value.code == "gate"
    assert "No suite run for this version" in " ".join(caught.value.messages)
    assert not version.publications.exists() and AuditEvent.objects.count() == events


def test_an_override_needs_a_written_reason_and_the_second_person(passing, users):
    version = draft(passing, users, by="ops")
    with pytest.raises(ValidationError):
        request_publication(version=version, actor=actor(users, "ops"), override_reason="  ")

    publication = request_publication(
        version=version, actor=actor(users, "ops"), override_reason="Urgent fix; cases next."
    )
    with pytest.raises(ValidationError):
        approve_publication(publication=publication, actor=actor(users, "ops"))
    approve_publication(publication=publication, actor=actor(users, "ops.second"))

    version.refresh_from_db()
    assert version.status == RoleVersion.Status.PUBLISHED
    event = AuditEvent.objects.filter(action="role_version.published").latest("created_at")
    assert event.data["override"] is True
    assert event.data["override_reason"] == "Urgent fix; cases next."
    assert event.data["requested_by"] == users["ops"].pk


def test_a_gate_that_stops_passing_refuses_the_approval(passing, users):
    version = draft(passing, users, by="ops")
    suite_passes(version, users)
    publication = request_publication(version=version, actor=actor(users, "ops"))
    golden.create_case(
        role=passing, name="New", input=INTAKE_INPUT, expectations=CASE, actor=actor(users, "ops")
    )
    before = state(version)

    with pytest.raises(ValidationError) as caught:
        approve_publication(publication=publication, actor=actor(users, "ops.second"))

    assert caught.value.code == "gate"
    assert state(version) == before


def test_approval_publishes_without_putting_it_in_front_of_runs(passing, users):
    v1 = passing.active_version
    version = draft(passing, users, by="ops")
    suite_passes(version, users)
    publication = request_publication(version=version, actor=actor(users, "ops"))

    approve_publication(publication=publication, actor=actor(users, "ops.second"), note="Fine")

    version.refresh_from_db()
    assert version.status == RoleVersion.Status.PUBLISHED
    assert version.published_by == users["ops.second"]
    assert start(passing).role_version == v1  # kept ready: nothing live changed
    with pytest.raises(ValidationError, match="never changes"):
        update_draft(
            version=version,
            actor=actor(users, "ops"),
            definition=version.definition,
            change_note="x",
        )


def test_a_second_request_for_the_same_draft_is_refused(passing, users):
    version = draft(passing, users, by="ops")
    suite_passes(version, users)
    request_publication(version=version, actor=actor(users, "ops"))

    with pytest.raises(ValidationError, match="already waits"):
        request_publication(version=version, actor=actor(users, "ops.second"))

    assert version.publications.count() == 1


def test_reject_needs_a_reason_and_withdraw_is_the_requesters(passing, users):
    version = draft(passing, users, by="ops")
    suite_passes(version, users)
    publication = request_publication(version=version, actor=actor(users, "ops"))

    with pytest.raises(ValidationError, match="Say why"):
        close_publication(publication=publication, actor=actor(users, "ops.second"), note="")
    close_publication(publication=publication, actor=actor(users, "ops.second"), note="No.")

    publication.refresh_from_db()
    assert publication.status == Publication.Status.REJECTED
    again = request_publication(version=version, actor=actor(users, "ops"))
    close_publication(publication=again, actor=actor(users, "ops"), note="Not yet.")
    again.refresh_from_db()
    assert again.status == Publication.Status.WITHDRAWN
    assert AuditEvent.objects.filter(action="role_version.publication_withdrawn").exists()


def test_activation_and_rollback_are_audited(intake_role, users):
    v1 = intake_role.active_version
    v2 = publish(draft(intake_role, users))

    activate_role_version(version=v1, actor=actor(users, "ops"))

    intake_role.refresh_from_db()
    assert intake_role.active_version == v1
    event = AuditEvent.objects.filter(
        tenant=intake_role.tenant, action="role_version.activated"
    ).latest("seq")
    assert event.data == {
        "role": "intake-coordinator",
        "number": 1,
        "previous_number": v2.number,
        "rollback": True,
    }


def test_drafts_cannot_be_activated_or_be_the_canary(intake_role, users):
    version = draft(intake_role, users)
    before = state(version)

    with pytest.raises(ValidationError):
        activate_role_version(version=version, actor=actor(users, "ops"))
    with pytest.raises(ValidationError):
        set_canary(role=intake_role, version=version, percent=10, actor=actor(users, "ops"))

    assert state(version) == before


def test_a_reviewer_cannot_activate_or_set_a_canary(intake_role, users):
    v2 = publish(draft(intake_role, users), activate=False)
    before = state(v2)

    with pytest.raises(ValidationError):
        activate_role_version(version=v2, actor=actor(users, "reviewer.harbor"))
    with pytest.raises(ValidationError):
        set_canary(role=intake_role, version=v2, percent=10, actor=actor(users, "reviewer.harbor"))
    with pytest.raises(ValidationError):
        draft(intake_role, users, by="reviewer.harbor")

    assert state(v2) == before


def test_a_canary_takes_a_share_of_new_runs(intake_role, users):
    v2 = publish(draft(intake_role, users), activate=False)

    set_canary(role=intake_role, version=v2, percent=100, actor=actor(users, "ops"))

    assert start(intake_role).role_version == v2
    event = AuditEvent.objects.filter(action="role.canary_set").latest("created_at")
    assert event.data == {"version": v2.number, "percent": 100, "previous_version": None}


def test_a_regressing_draft_goes_out_only_on_a_two_person_override(passing, users):
    # The draft stops looking the sender up: the case that passed in the baseline fails.
    steps = [s for s in passing.active_version.definition["steps"] if s["key"] != "lookup"]
    steps = [
        {**s, "prompt": s["prompt"].replace("steps.lookup.records", "[]")}
        if s["key"] == "draft"
        else s
        for s in steps
    ]
    version = draft(passing, users, by="ops", steps=steps)
    suite = golden.start_suite(version, actor(users, "ops"))
    golden.run_suite(suite.pk)
    report = golden.regression_gate(version)
    assert not report.ok and {row.verdict for row in report.rows} == {"regressed"}
    before = state(version)

    with pytest.raises(ValidationError) as caught:
        request_publication(version=version, actor=actor(users, "ops"))
    assert caught.value.code == "gate" and "passed in the baseline and fails now" in str(
        caught.value
    )
    assert state(version) == before

    publication = request_publication(
        version=version, actor=actor(users, "ops"), override_reason="Lookup is down all week."
    )
    assert publication.gate["ok"] is False and publication.is_override
    with pytest.raises(ValidationError):
        approve_publication(publication=publication, actor=actor(users, "ops"))
    approve_publication(publication=publication, actor=actor(users, "ops.second"))
    version.refresh_from_db()
    assert version.status == RoleVersion.Status.PUBLISHED
