import pytest

from approvals.models import ApprovalRequest, Decision
from approvals.services import DecisionError, decide
from audit.models import AuditEvent
from desk.models import Run


@pytest.fixture
def request_(parked_intake):
    return ApprovalRequest.objects.get(run=parked_intake)


def nothing_changed(request_, events_before):
    request_.refresh_from_db()
    return (
        request_.status == ApprovalRequest.Status.PENDING
        and Decision.objects.count() == 0
        and AuditEvent.objects.count() == events_before
        and Run.objects.get(pk=request_.run_id).status == Run.Status.WAITING_APPROVAL
    )


@pytest.mark.parametrize("username", ["reviewer.northwind", "auditor"])
def test_only_the_tenants_reviewers_decide(request_, users, username):
    events_before = AuditEvent.objects.count()

    with pytest.raises(DecisionError) as caught:
        decide(request=request_, reviewer=users[username], verdict="approve")

    assert caught.value.code == "forbidden"
    assert nothing_changed(request_, events_before)


@pytest.mark.parametrize("verdict", ["reject", "revise"])
def test_reject_and_revise_need_a_reason(request_, users, verdict):
    events_before = AuditEvent.objects.count()

    with pytest.raises(DecisionError) as caught:
        decide(request=request_, reviewer=users["reviewer.harbor"], verdict=verdict, comment="  ")

    assert caught.value.code == "reason_required"
    assert nothing_changed(request_, events_before)


def test_edit_needs_a_payload(request_, users):
    with pytest.raises(DecisionError):
        decide(request=request_, reviewer=users["reviewer.harbor"], verdict="edit")


def test_a_decided_request_takes_no_more_decisions(request_, users):
    decide(request=request_, reviewer=users["reviewer.harbor"], verdict="approve")

    with pytest.raises(DecisionError) as caught:
        decide(request=request_, reviewer=users["ops"], verdict="reject", comment="late")

    assert caught.value.code == "not_pending"
    assert Decision.objects.count() == 1


def test_the_resume_is_enqueued_only_after_the_decision_commits(
    request_, users, django_capture_on_commit_callbacks, monkeypatch
):
    rung = []
    monkeypatch.setattr("desk.doorbell.async_task", lambda func, **kw: rung.append(kw["run_id"]))

    with django_capture_on_commit_callbacks(execute=True):
        decide(request=request_, reviewer=users["reviewer.harbor"], verdict="approve")
        assert rung == []

    assert rung == [request_.run_id]
