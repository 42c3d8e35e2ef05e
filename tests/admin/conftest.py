"""Fixtures of the admin tests: people (tenant members and platform staff) and a world with
one object of every kind in both demo tenants."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction

from approvals.gate import ApprovalGate
from approvals.models import ApprovalRequest
from approvals.services import decide
from audit.services import Actor
from desk.models import OutboxAttempt, Run
from desk.services import start_run
from roles.models import Role
from roles.services import create_role_version
from tenants.models import Tenant
from tenants.services import (
    create_api_key,
    grant_membership,
    grant_platform_staff,
    open_break_glass,
)
from tests.conftest import INTAKE_INPUT
from tests.runtime import advance
from webhooks.services import create_webhook_endpoint

BREAK_GLASS_REASON = "Ticket 4521: client reports a missing reply"

NORTHWIND_INPUT = {
    "from_email": "priya@example.org",
    "subject": "Invoice query",
    "body": "Could you explain the November invoice?",
}


def start_intake(tenant: Tenant, user, input=INTAKE_INPUT) -> Run:
    role = Role.objects.get(tenant=tenant, slug="intake-coordinator")
    return start_run(
        tenant=tenant, role=role, input=input, actor=Actor.for_user(user), via=Run.Via.ADMIN
    )


def parked(tenant: Tenant, user, input=INTAKE_INPUT) -> Run:
    """An intake run taken to its review gate (the drafted reply)."""
    run = start_intake(tenant, user, input)
    advance(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.WAITING_APPROVAL
    return run


@pytest.fixture
def ops_northwind(demo):
    """An operator and auditor of northwind-accounting only."""
    user = get_user_model().objects.create_user(
        "ops.northwind", "ops.northwind@example.com", "pw-ops-northwind-1", is_staff=True
    )
    northwind = Tenant.objects.get(slug="northwind-accounting")
    for kind in ("operator", "auditor"):
        grant_membership(user=user, tenant=northwind, kind=kind, actor=Actor.system("tests"))
    return user


@pytest.fixture
def ops_harbor(demo):
    """A second operator of harbor-legal: publishes what `ops` writes (four eyes)."""
    user = get_user_model().objects.create_user(
        "ops.harbor", "ops.harbor@example.com", "pw-ops-harbor-1", is_staff=True
    )
    grant_membership(
        user=user,
        tenant=Tenant.objects.get(slug="harbor-legal"),
        kind="operator",
        actor=Actor.system("tests"),
    )
    return user


def make_platform_staff(username: str, **extra):
    user = get_user_model().objects.create_user(
        username, f"{username}@example.com", f"pw-{username}-1", is_staff=True, **extra
    )
    grant_platform_staff(user=user, actor=Actor.system("tests"))
    return user


@pytest.fixture
def staff(db):
    """Platform staff: no tenant's member, so no tenant's data without a break-glass grant."""
    return make_platform_staff("sre")


@pytest.fixture
def platform_operator(db):
    """A superuser who is also flagged platform staff: every platform admin is open to them."""
    return make_platform_staff("root.staff", is_superuser=True)


@dataclass
class World:
    harbor: Tenant
    northwind: Tenant
    completed_run: Run
    parked_run: Run
    request: ApprovalRequest


def build_world(harbor: Tenant, northwind: Tenant, users) -> World:
    """For each tenant: a completed run (decision, outbox message and its delivery attempt),
    a golden case made from it and a suite run with its result, a run parked at its gate with
    a pending request, an escalation, a draft role version, an API key, a webhook endpoint;
    plus the demo's roles, versions, policies, memberships and
    records. And platform staff's break-glass grant to harbor-legal."""
    worlds = {}
    for tenant, reviewer, input in (
        (harbor, users["reviewer.harbor"], INTAKE_INPUT),
        (northwind, users["reviewer.northwind"], NORTHWIND_INPUT),
    ):
        done = parked(tenant, users["ops"], input)
        decide(
            request=ApprovalRequest.objects.get(run=done),
            reviewer=reviewer,
            verdict="approve",
            comment="fine",
        )
        advance(done.pk)
        done.refresh_from_db()
        assert done.status == Run.Status.COMPLETED
        # A golden case made from the completed run, and a suite run with its result.
        from roles import golden

        golden.case_from_run(done, Actor.for_user(users["ops"]))
        suite = golden.start_suite(done.role_version, Actor.for_user(users["ops"]))
        golden.run_suite(suite.pk)
        waiting = parked(tenant, users["ops"], input)
        with transaction.atomic():
            ApprovalGate().open_escalation(
                run=waiting, step=waiting.steps.get(key="draft"), reason="Sender unknown"
            )
        role = Role.objects.get(tenant=tenant, slug="intake-coordinator")
        create_role_version(
            role=role,
            definition=role.active_version.definition,
            actor=Actor.for_user(users["ops"]),
            change_note="Same again",
        )
        create_api_key(
            tenant=tenant,
            name="Website intake",
            actor=Actor.for_user(users["ops"]),
            role_slugs=["intake-coordinator"],
        )
        from approvals.models import ApprovalPolicy
        from approvals.services import policy_values, propose_policy_change

        policy = ApprovalPolicy.objects.get(tenant=tenant, category="client_comms")
        propose_policy_change(
            tenant=tenant,
            actor=Actor.for_user(users["ops"]),
            values={**policy_values(policy), "required_approvals": 2},
            policy=policy,
            reason="Two for client e-mail",
        )
        create_webhook_endpoint(
            tenant=tenant,
            url=f"https://hooks.{tenant.pk}.example.net/agentdesk",
            event_types=["run.completed"],
            description="CRM hook",
            actor=Actor.for_user(users["ops"]),
        )
        assert OutboxAttempt.objects.filter(tenant=tenant, succeeded=True).exists()
        from datetime import timedelta

        from django.utils import timezone

        from approvals.services import create_delegation, save_reviewer_group

        save_reviewer_group(
            tenant=tenant,
            name=f"{tenant.name} seniors",
            members=[reviewer],
            actor=Actor.for_user(users["ops"]),
        )
        create_delegation(
            tenant=tenant,
            delegator=reviewer,
            delegate=users["ops"],
            starts_at=timezone.now(),
            ends_at=timezone.now() + timedelta(days=7),
            actor=Actor.for_user(reviewer),
            reason="Holiday",
        )
        worlds[tenant.slug] = (done, waiting)
    open_break_glass(
        user=make_platform_staff("sre.world"), tenant=harbor, reason=BREAK_GLASS_REASON
    )
    done, waiting = worlds[harbor.slug]
    return World(
        harbor=harbor,
        northwind=northwind,
        completed_run=done,
        parked_run=waiting,
        request=ApprovalRequest.objects.get(run=waiting),
    )


@pytest.fixture
def world(harbor, northwind, users, ops_northwind) -> World:
    return build_world(harbor, northwind, users)
