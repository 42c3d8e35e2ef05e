"""Usage and cost per step, run and tenant; monthly budgets; service levels."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from approvals.models import Escalation
from approvals.services import DecisionError, resolve_escalation
from audit.models import AuditEvent
from desk import services
from desk.models import ModelPrice, Run, TenantUsage
from tests.runtime import advance, backdate


@pytest.fixture
def priced(db):
    return ModelPrice.objects.create(
        model="offline-1", prompt_per_million=Decimal("2"), completion_per_million=Decimal("8")
    )


def test_cost_is_recorded_per_step_run_and_tenant_month(priced, parked_intake, harbor):
    steps = list(parked_intake.steps.order_by("index"))
    classify = steps[0]

    expected = (classify.prompt_tokens * 2 + classify.completion_tokens * 8) / Decimal(1_000_000)

    assert classify.cost == expected.quantize(Decimal("0.000001"))
    parked_intake.refresh_from_db()
    assert parked_intake.cost == sum(s.cost for s in parked_intake.steps.all())
    usage = TenantUsage.objects.get(tenant=harbor)
    assert usage.cost == parked_intake.cost
    assert usage.prompt_tokens == parked_intake.prompt_tokens
    assert usage.steps == 2  # the two model calls


def test_at_the_budget_model_calls_stop_and_the_run_is_held(harbor, start_intake):
    harbor.monthly_token_budget = 1
    harbor.save()
    first = start_intake()
    advance(first.pk)  # its first call uses the whole budget

    second = start_intake()
    advance(second.pk)

    second.refresh_from_db()
    assert second.status == Run.Status.ON_HOLD
    assert second.steps.get(key="classify").attempts == 0
    escalation = Escalation.objects.get(run=second)
    assert escalation.kind == Escalation.Kind.BUDGET
    assert AuditEvent.objects.filter(run_id=second.pk, action="budget.exceeded").count() == 1


def test_an_operator_lifts_the_budget_and_held_runs_go_on(harbor, start_intake, users):
    harbor.monthly_token_budget = 1
    harbor.save()
    advance(start_intake().pk)
    held = start_intake()
    advance(held.pk)
    escalation = Escalation.objects.get(run=held)

    resolve_escalation(escalation=escalation, user=users["ops"], resolution="Approved overage")
    advance(held.pk)

    held.refresh_from_db()
    assert held.status == Run.Status.WAITING_APPROVAL
    harbor.refresh_from_db()
    assert harbor.budget_lifted_until > timezone.now()
    assert AuditEvent.objects.filter(tenant=harbor, action="budget.lifted").count() == 1


def test_only_operators_resolve_escalations(harbor, start_intake, users):
    harbor.monthly_token_budget = 1
    harbor.save()
    advance(start_intake().pk)
    held = start_intake()
    advance(held.pk)

    with pytest.raises(DecisionError):
        resolve_escalation(
            escalation=Escalation.objects.get(run=held),
            user=users["reviewer.harbor"],
            resolution="not mine to lift",
        )

    held.refresh_from_db()
    assert held.status == Run.Status.ON_HOLD


def test_a_run_past_its_roles_turnaround_is_flagged_and_escalated_once(parked_intake):
    now = timezone.now()
    backdate(parked_intake, created_at=now - timedelta(minutes=50))
    assert services.sla_state(parked_intake, now=now) == "at_risk"  # target is 60 min

    later = now + timedelta(minutes=15)
    services.escalate_service_levels(now=later)
    services.escalate_service_levels(now=later)

    parked_intake.refresh_from_db()
    assert services.sla_state(parked_intake, now=later) == "breached"
    assert parked_intake.sla_escalated_at == later
    assert Escalation.objects.filter(run=parked_intake, kind="sla").count() == 1


def test_prices_are_set_with_a_platform_audit_event(users):
    from audit.services import Actor

    services.set_model_price(
        model="gpt-x",
        prompt_per_million=Decimal("1.5"),
        completion_per_million=Decimal("6"),
        actor=Actor.for_user(users["ops"]),
    )
    services.set_model_price(
        model="gpt-x",
        prompt_per_million=Decimal("1.0"),
        completion_per_million=Decimal("6"),
        actor=Actor.for_user(users["ops"]),
    )

    assert ModelPrice.objects.get(model="gpt-x").prompt_per_million == Decimal("1.0")
    event = AuditEvent.objects.filter(tenant=None, action="model_price.saved").latest("seq")
    assert event.data["before"] == ["1.5000", "6.0000"]
    assert event.data["after"] == ["1.0", "6"]
