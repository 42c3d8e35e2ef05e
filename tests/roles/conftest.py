"""A role with two versions in use (v1 active, v2 the canary) and runs of both with known
outcomes, decisions, escalations, costs and timings: what roles.comparison figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from approvals.gate import ApprovalGate
from approvals.models import ApprovalRequest
from approvals.services import decide
from audit.services import Actor
from desk.models import Run
from desk.services import start_run
from roles.models import Role, RoleVersion
from roles.services import create_role_version, set_canary
from tenants.services import grant_membership
from tests.conftest import INTAKE_INPUT
from tests.publishing import publish
from tests.runtime import advance

EDITED_DRAFT = {"draft": {"subject": "Re: Lease question", "body": "Edited by the reviewer."}}


@pytest.fixture
def second_operator(harbor):
    user = get_user_model().objects.create_user("ops2", password="pw-ops2-12345", is_staff=True)
    grant_membership(user=user, tenant=harbor, kind="operator", actor=Actor.system("t"))
    return user


@dataclass
class Canary:
    role: Role
    v1: RoleVersion
    v2: RoleVersion
    reviewer: object
    now: datetime
    runs: dict[str, list[Run]] = field(default_factory=dict)

    @property
    def period(self) -> dict:
        return {"since": self.now - timedelta(days=2), "until": self.now + timedelta(minutes=1)}

    def use(self, version: RoleVersion) -> None:
        """Send every new run to `version` (the canary at 100 %, or no canary)."""
        actor = Actor.system("tests")
        if version == self.v1:
            set_canary(role=self.role, version=None, percent=0, actor=actor)
        else:
            set_canary(role=self.role, version=version, percent=100, actor=actor)
        self.role.refresh_from_db()

    def start(self, version: RoleVersion) -> Run:
        self.use(version)
        run = start_run(
            tenant=self.role.tenant,
            role=self.role,
            input=INTAKE_INPUT,
            actor=Actor.system("tests"),
            via=Run.Via.COMMAND,
        )
        assert run.role_version == version
        self.runs.setdefault(f"v{version.number}", []).append(run)
        return run

    def parked(self, version: RoleVersion) -> tuple[Run, ApprovalRequest]:
        run = self.start(version)
        advance(run.pk)
        return run, ApprovalRequest.objects.get(run=run, status="pending")

    def decided(self, version: RoleVersion, verdict: str, **extra) -> Run:
        """A run parked at its draft, decided, and taken on to where that leads."""
        run, request = self.parked(version)
        decide(request=request, reviewer=self.reviewer, verdict=verdict, **extra)
        advance(run.pk)
        run.refresh_from_db()
        return run

    def set(self, run: Run, *, minutes: float | None = None, cost: str = "0", **fields) -> None:
        """Known timings and cost: started a day ago, finished `minutes` later."""
        created_at = self.now - timedelta(days=1)
        values = {"created_at": created_at, "cost": Decimal(cost), **fields}
        if minutes is not None:
            values["finished_at"] = created_at + timedelta(minutes=minutes)
        Run.objects.filter(pk=run.pk).update(**values)


def build_v1_runs(canary: Canary) -> None:
    """v1: approved (10 min), edited and approved (30 min), rejected, one still open."""
    v1 = canary.v1
    approved = canary.decided(v1, "approve")
    edited = canary.decided(v1, "edit", edited_payload=EDITED_DRAFT)
    rejected = canary.decided(v1, "reject", comment="Wrong client")
    still_open = canary.start(v1)
    assert (approved.status, edited.status, rejected.status) == (
        Run.Status.COMPLETED,
        Run.Status.COMPLETED,
        Run.Status.REJECTED,
    )
    assert still_open.is_open
    canary.set(approved, minutes=10, cost="0.10")
    canary.set(edited, minutes=30, cost="0.30")
    canary.set(rejected, cost="0.20")
    canary.set(still_open)


def build_v2_runs(canary: Canary) -> None:
    """v2: sent back once then approved (6 min), escalated while waiting, failed."""
    v2 = canary.v2
    sent_back = canary.decided(v2, "revise", comment="Mention the meeting")
    decide(
        request=ApprovalRequest.objects.get(run=sent_back, status="pending"),
        reviewer=canary.reviewer,
        verdict="approve",
    )
    advance(sent_back.pk)
    sent_back.refresh_from_db()
    assert sent_back.status == Run.Status.COMPLETED
    waiting, _ = canary.parked(v2)
    with transaction.atomic():
        ApprovalGate().open_escalation(
            run=waiting, step=waiting.steps.get(key="draft"), reason="Sender unknown"
        )
    failed = canary.start(v2)
    canary.set(sent_back, minutes=6, cost="0.50")
    canary.set(waiting, cost="0.10")
    canary.set(failed, minutes=1, status=Run.Status.FAILED)


@pytest.fixture
def canary(intake_role, users, second_operator) -> Canary:
    v1 = intake_role.active_version
    v2 = create_role_version(
        role=intake_role,
        definition={**v1.definition, "system": "You are brief."},
        actor=Actor.for_user(users["ops"]),
        change_note="Shorter",
    )
    publish(v2, activate=False)
    state = Canary(
        role=intake_role, v1=v1, v2=v2, reviewer=users["reviewer.harbor"], now=timezone.now()
    )
    build_v1_runs(state)
    build_v2_runs(state)
    set_canary(role=intake_role, version=v2, percent=20, actor=Actor.system("tests"))
    intake_role.refresh_from_db()
    return state
