"""Usage and cost, monthly budgets, model prices and service levels."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from django.db.models import F
from django.utils import timezone

from audit.services import Actor, lock_chain, record
from desk import doorbell
from desk.gates import get_gate
from desk.models import ModelPrice, Run, StepRun, TenantUsage
from desk.selectors import month_start, sla_at_risk_lead
from desk.services.runs import admit_runs
from tenants import locking, rls
from tenants.locking import Level, lock
from tenants.models import Tenant


def record_usage(*, run: Run, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Add a model call's tokens and cost to its run and its tenant's month; return the cost.

    Called inside the checkpoint's transaction.
    """
    price = ModelPrice.objects.filter(model=model).first()
    cost = (
        price.cost(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if price
        else Decimal(0)
    )
    Run.objects.filter(pk=run.pk).update(
        prompt_tokens=F("prompt_tokens") + prompt_tokens,
        completion_tokens=F("completion_tokens") + completion_tokens,
        cost=F("cost") + cost,
    )
    usage, _ = TenantUsage.objects.get_or_create(
        tenant_id=run.tenant_id, month=month_start(timezone.now())
    )
    TenantUsage.objects.filter(pk=usage.pk).update(
        prompt_tokens=F("prompt_tokens") + prompt_tokens,
        completion_tokens=F("completion_tokens") + completion_tokens,
        cost=F("cost") + cost,
        steps=F("steps") + 1,
    )
    return cost


def over_budget(tenant: Tenant, *, now) -> bool:
    """Whether the tenant has used its monthly token or cost budget (and nobody lifted it)."""
    if tenant.monthly_token_budget is None and tenant.monthly_cost_budget is None:
        return False
    if tenant.budget_lifted_until and tenant.budget_lifted_until > now:
        return False
    usage = TenantUsage.objects.filter(tenant=tenant, month=month_start(now)).first()
    if usage is None:
        return False
    return (
        tenant.monthly_token_budget is not None
        and usage.total_tokens >= tenant.monthly_token_budget
    ) or (tenant.monthly_cost_budget is not None and usage.cost >= tenant.monthly_cost_budget)


def hold_for_budget(*, run: Run, step: StepRun) -> None:
    """Stop a run before a model call its tenant's budget no longer covers; escalate.

    Inside the caller's transaction, with the run locked.
    """
    run.move("hold")
    run.save(update_fields=["status", "updated_at"])
    reason = f"Monthly budget of {run.tenant.slug} reached before step '{step.key}'."
    record(
        tenant=run.tenant_id,
        actor=Actor.system("budget"),
        action="budget.exceeded",
        obj=run,
        run_id=run.pk,
        step_id=step.pk,
        reason=reason,
    )
    get_gate().open_escalation(run=run, step=step, reason=reason, kind="budget")
    admit_runs(tenant_id=run.tenant_id)


def lift_budget(*, tenant: Tenant, actor: Actor, reason: str) -> list[int]:
    """Let the tenant's work go on past its budget until the month ends; resume held runs.

    Returns the ids of the runs resumed.
    """
    now = timezone.now()
    next_month = (month_start(now) + timedelta(days=32)).replace(day=1)
    with locking.tracked(), rls.tenant_context(tenant.pk):
        held_runs = Run.objects.filter(tenant_id=tenant.pk, status=Run.Status.ON_HOLD)
        held = list(lock(held_runs.order_by("pk"), Level.RUN).values_list("pk", flat=True))
        lock_chain(tenant.pk)
        tenant = lock(Tenant.objects.all(), Level.TENANT).get(pk=tenant.pk)
        tenant.budget_lifted_until = datetime.combine(next_month, time.min, tzinfo=UTC)
        tenant._history_user = actor.user
        tenant.save(update_fields=["budget_lifted_until"])
        Run.objects.filter(pk__in=held).move("release", updated_at=now)
        record(
            tenant=tenant,
            actor=actor,
            action="budget.lifted",
            obj=tenant,
            reason=reason,
            data={"until": tenant.budget_lifted_until, "resumed_runs": held},
        )
        doorbell.ring_runs([(run_id, tenant.pk) for run_id in held])
    return held


def set_model_price(
    *, model: str, prompt_per_million: Decimal, completion_per_million: Decimal, actor: Actor
) -> ModelPrice:
    """Create or change a model's price; calls from then on are costed with it.

    Raises ValidationError on invalid values.
    """
    with rls.platform_context():
        price = ModelPrice.objects.filter(model=model).first() or ModelPrice(model=model)
        before = (
            [str(price.prompt_per_million), str(price.completion_per_million)] if price.pk else None
        )
        price.prompt_per_million = prompt_per_million
        price.completion_per_million = completion_per_million
        price.full_clean()
        price._history_user = actor.user
        price.save()
        record(
            tenant=None,
            actor=actor,
            action="model_price.saved",
            obj=price,
            data={
                "model": model,
                "before": before,
                "after": [str(prompt_per_million), str(completion_per_million)],
            },
        )
    return price


# --- service levels --------------------------------------------------------------------------


def sla_state(run: Run, *, now) -> str:
    """on_track, at_risk or breached against the run's deadline (Run.sla_due_at, at risk
    within desk.selectors.sla_at_risk_lead of it); done when closed, unmeasured when the
    run has no deadline (its version has no target)."""
    if not run.is_open:
        return "done"
    if run.sla_due_at is None:
        return "unmeasured"
    if now >= run.sla_due_at:
        return "breached"
    if now >= run.sla_due_at - sla_at_risk_lead(run.role_version):
        return "at_risk"
    return "on_track"


def escalate_missed_service_level(*, run_id: int, tenant_id: int, now) -> bool:
    """Open one escalation for an open run past its role's target turnaround (once).

    Returns whether it escalated (not when the run closed or was escalated meanwhile).
    """
    with locking.tracked(), rls.tenant_context(tenant_id):
        run = (
            lock(
                Run.objects.select_related("role", "role_version"),
                Level.RUN,
                skip_locked=True,
                of=("self",),
            )
            .filter(pk=run_id, sla_escalated_at__isnull=True)
            .first()
        )
        if run is None or sla_state(run, now=now) != "breached":
            return False
        run.sla_escalated_at = now
        run.save(update_fields=["sla_escalated_at"])
        reason = (
            f"Open for {int((now - run.created_at).total_seconds() // 60)} min; "
            f"the role's target is {run.role_version.target_turnaround_minutes} min."
        )
        record(
            tenant=tenant_id,
            actor=Actor.system("sla"),
            action="sla.breached",
            obj=run,
            run_id=run.pk,
            reason=reason,
        )
        get_gate().open_escalation(run=run, step=None, reason=reason, kind="sla")
    return True
