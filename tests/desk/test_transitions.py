"""Run and step statuses change only through their transition tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

from desk.models import Run, StepRun
from desk.transitions import InvalidTransition
from tests.runtime import advance

SOURCE_DIRS = ("desk", "tenants", "roles", "approvals", "audit")


@pytest.mark.parametrize("model", [Run, StepRun], ids=lambda m: m.__name__)
def test_every_transition_leads_between_known_statuses(model):
    statuses = set(model.Status.values)

    for verb, (sources, target) in model.TRANSITIONS.items():
        assert sources <= statuses, verb
        assert target in statuses, verb
        assert callable(getattr(model, f"can_{verb}")), verb


def test_the_predicates_follow_the_table():
    run = Run(status=Run.Status.WAITING_APPROVAL)

    assert run.can_resume() and run.can_reject() and run.can_cancel()
    assert not run.can_admit() and not run.can_complete() and not run.can_park()


@pytest.mark.parametrize(
    ("status", "verb"),
    [
        (Run.Status.COMPLETED, "cancel"),  # a finished run cannot be reopened by cancelling
        (Run.Status.REJECTED, "resume"),  # a late approval cannot revive a rejected run
        (Run.Status.QUEUED, "complete"),  # nothing completes before it was admitted
        (Run.Status.ON_HOLD, "park"),
    ],
)
def test_a_move_the_table_does_not_allow_raises_and_changes_nothing(status, verb):
    run = Run(status=status)

    with pytest.raises(InvalidTransition):
        run.move(verb)

    assert run.status == status


def test_a_bulk_move_only_touches_rows_whose_status_allows_it(parked_intake):
    steps = parked_intake.steps.order_by("index")
    before = list(steps.values_list("status", flat=True))

    moved = parked_intake.steps.move("accept")

    assert moved == 1  # only the draft waiting for approval
    after = list(steps.values_list("status", flat=True))
    assert after == [s if s != "waiting_approval" else "completed" for s in before]


def test_a_step_of_a_finished_run_is_not_taken_again(parked_intake, users):
    from approvals.models import ApprovalRequest
    from approvals.services import decide

    decide(
        request=ApprovalRequest.objects.get(run=parked_intake),
        reviewer=users["reviewer.harbor"],
        verdict="reject",
        comment="No",
    )

    advance(parked_intake)

    parked_intake.refresh_from_db()
    assert parked_intake.status == Run.Status.REJECTED
    statuses = set(parked_intake.steps.values_list("status", flat=True))
    assert statuses == {StepRun.Status.COMPLETED, StepRun.Status.CANCELLED}


# Statements that write a Run's or a StepRun's status directly.
DIRECT_WRITES = [
    re.compile(r"\b(run|step|s|later|next_step)\.status\s*=(?!=)"),
    re.compile(r"\.update\([^)]*\bstatus=(Run|StepRun)\.Status"),
    re.compile(r"(Run|StepRun)\.objects\.[^\n]*\.update\([^)]*\bstatus="),
]


def test_no_status_is_written_outside_the_transition_tables():
    offenders = []
    for directory in SOURCE_DIRS:
        for path in sorted((Path(settings.BASE_DIR) / directory).rglob("*.py")):
            if "migrations" in path.parts or path.name == "transitions.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if any(pattern.search(line) for pattern in DIRECT_WRITES):
                    offenders.append(f"{path.relative_to(settings.BASE_DIR)}:{number}: {line}")

    assert offenders == []
