"""Writes to runs: start, cancel, the effects of reviewers' decisions, outbox delivery and
the reaper. The engine (desk.engine) executes steps; these functions change state around it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import Actor, lock_chain, record
from desk.gates import get_gate
from desk.models import ModelPrice, OutboxMessage, Run, StepRun, TenantUsage
from roles.models import Role, RoleVersion
from roles.workflow import schema_errors
from tenants import rls
from tenants.models import Tenant

OUTBOX_MAX_ATTEMPTS = 5
STALL_SECONDS = 60


@dataclass
class RunError(Exception):
    """A run could not be started or changed; nothing was written."""

    code: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self):
        return self.message


def _pick_version(role: Role) -> RoleVersion:
    if role.canary_version_id and random.uniform(0, 100) < role.canary_percent:
        return role.canary_version
    return role.active_version


def start_run(
    *,
    tenant: Tenant,
    role: Role,
    input: dict[str, Any],
    actor: Actor,
    via: str,
    idempotency_key: str = "",
    api_key=None,
) -> Run:
    """Validate the input, pin the role's version and queue a run.

    Raises RunError (codes: tenant_inactive, role_not_found, no_active_version,
    invalid_input, idempotency_conflict).
    """
    # Read the role afresh: the version to pin is the one active now, not when `role` was loaded.
    role = Role.objects.select_related("active_version", "canary_version").get(pk=role.pk)
    if role.tenant_id != tenant.pk:
        raise RunError("role_not_found", f"No role '{role.slug}' in tenant '{tenant.slug}'.")
    if not tenant.is_active:
        raise RunError("tenant_inactive", f"Tenant '{tenant.slug}' is suspended.")
    if role.active_version_id is None:
        raise RunError("no_active_version", f"Role '{role.slug}' has no published version yet.")
    if not isinstance(input, dict):
        raise RunError("invalid_input", "The input must be a JSON object.")
    errors = schema_errors(role.input_schema or {}, input)
    if errors:
        raise RunError("invalid_input", "The input does not match the role's input schema.", errors)
    version = _pick_version(role)
    try:
        with transaction.atomic():
            run = Run.objects.create(
                tenant=tenant,
                role=role,
                role_version=version,
                input=input,
                via=via,
                started_by=actor.user,
                started_by_label=actor.label,
                idempotency_key=idempotency_key,
                api_key=api_key,
            )
            StepRun.objects.bulk_create(
                StepRun(
                    run=run,
                    tenant=tenant,
                    index=index,
                    key=step["key"],
                    kind=step["kind"],
                    category=step["category"],
                    idempotency_key=f"run-{run.pk}-step-{step['key']}",
                )
                for index, step in enumerate(version.steps)
            )
            record(
                tenant=tenant,
                actor=actor,
                action="run.started",
                obj=run,
                run_id=run.pk,
                data={"role": role.slug, "version": version.number, "via": via, "input": input},
            )
            admit_runs(tenant_id=tenant.pk)
    except IntegrityError:
        if idempotency_key:
            raise RunError(
                "idempotency_conflict", "A run with this idempotency key already exists."
            ) from None
        raise
    return run


def admit_runs(*, tenant_id: int) -> list[int]:
    """Start queued runs of a tenant, oldest first, while it has free capacity.

    Parked runs hold no capacity; runs resumed after a decision go on without waiting.
    Returns the ids of the runs admitted (their doorbells ring after commit).
    """
    from desk.tasks import enqueue_advance

    with rls.tenant_context(tenant_id):
        lock_chain(tenant_id)
        tenant = Tenant.objects.select_for_update(no_key=True).get(pk=tenant_id)
        if not tenant.is_active:
            return []
        running = Run.objects.filter(tenant_id=tenant_id, status=Run.Status.RUNNING).count()
        free = tenant.max_concurrent_runs - running
        if free <= 0:
            return []
        admitted = list(
            Run.objects.filter(tenant_id=tenant_id, status=Run.Status.QUEUED)
            .order_by("created_at", "pk")
            .select_for_update(no_key=True, skip_locked=True)
            .values_list("pk", flat=True)[:free]
        )
        if admitted:
            now = timezone.now()
            Run.objects.filter(pk__in=admitted).update(
                status=Run.Status.RUNNING, started_at=now, updated_at=now
            )
            StepRun.objects.filter(
                run_id__in=admitted, index=0, status=StepRun.Status.PENDING
            ).update(status=StepRun.Status.READY)
            for run_id in admitted:
                enqueue_advance(run_id)
    return admitted


def start_run_once(
    *, tenant: Tenant, role: Role, idempotency_key: str, **kwargs
) -> tuple[Run, bool]:
    """Start a run unless this idempotency key already started the same one.

    Returns (run, created). Raises RunError as start_run does, and with code
    idempotency_conflict when the key was used for a different role or input.
    """

    def existing() -> Run | None:
        run = Run.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
        if run is not None and (run.role_id != role.pk or run.input != kwargs.get("input")):
            raise RunError(
                "idempotency_conflict",
                "This Idempotency-Key was already used with a different role or input.",
            )
        return run

    run = existing()
    if run is not None:
        return run, False
    try:
        return start_run(tenant=tenant, role=role, idempotency_key=idempotency_key, **kwargs), True
    except RunError as exc:
        if exc.code != "idempotency_conflict":
            raise
        # Lost a race with the same key: the winner's run answers.
        return existing(), False


def cancel_run(*, run: Run, actor: Actor, reason: str) -> Run:
    """Stop an open run; pending approvals are closed.

    Raises RunError (code run_closed) when the run has already ended.
    """
    with transaction.atomic():
        run = Run.objects.select_for_update(no_key=True).get(pk=run.pk)
        if not run.is_open:
            raise RunError("run_closed", f"The run is already {run.get_status_display().lower()}.")
        run.steps.exclude(status=StepRun.Status.COMPLETED).update(
            status=StepRun.Status.CANCELLED, lease_owner="", lease_expires_at=None
        )
        run.status = Run.Status.CANCELLED
        run.finished_at = timezone.now()
        run.error = reason
        run.save(update_fields=["status", "finished_at", "error", "updated_at"])
        get_gate().cancel_open(run=run, reason=reason)
        admit_runs(tenant_id=run.tenant_id)
        record(
            tenant=run.tenant_id,
            actor=actor,
            action="run.cancelled",
            obj=run,
            run_id=run.pk,
            reason=reason,
        )
    return run


# --- effects of reviewers' decisions (called inside approvals.services.decide) ------------


def _locked_parked_step(step: StepRun) -> tuple[Run, StepRun]:
    run = Run.objects.select_for_update(no_key=True).get(pk=step.run_id)
    step = StepRun.objects.select_for_update(no_key=True).get(pk=step.pk)
    if step.status != StepRun.Status.WAITING_APPROVAL or run.status != Run.Status.WAITING_APPROVAL:
        raise RunError("not_waiting", "This step is no longer waiting for approval.")
    return run, step


def resume_approved_step(*, step: StepRun, payload: dict[str, Any], actor: Actor) -> Run:
    """Let a parked step go on with what reviewers approved, and wake the run."""
    from desk.tasks import enqueue_advance

    run, step = _locked_parked_step(step)
    step.approved_payload = payload
    if step.kind == "tool":
        step.status = StepRun.Status.READY  # the approved call runs next
    else:
        step.status = StepRun.Status.COMPLETED
        step.output = payload.get("draft", payload) if step.kind == "llm" else {"approved": True}
        step.finished_at = timezone.now()
    step.save(update_fields=["approved_payload", "status", "output", "finished_at"])
    run.status = Run.Status.RUNNING
    run.save(update_fields=["status", "updated_at"])
    record(
        tenant=run.tenant_id,
        actor=actor,
        action="step.approved",
        obj=step,
        run_id=run.pk,
        step_id=step.pk,
        data={"key": step.key},
    )
    enqueue_advance(run.pk)
    return run


def reject_parked_step(*, step: StepRun, actor: Actor, reason: str) -> Run:
    """End the run of a parked step as rejected."""
    run, step = _locked_parked_step(step)
    now = timezone.now()
    step.status = StepRun.Status.CANCELLED
    step.error = f"Rejected: {reason}"
    step.finished_at = now
    step.save(update_fields=["status", "error", "finished_at"])
    run.steps.filter(status=StepRun.Status.PENDING).update(status=StepRun.Status.CANCELLED)
    run.status = Run.Status.REJECTED
    run.error = reason
    run.finished_at = now
    run.save(update_fields=["status", "error", "finished_at", "updated_at"])
    admit_runs(tenant_id=run.tenant_id)
    record(
        tenant=run.tenant_id,
        actor=actor,
        action="run.rejected",
        obj=run,
        run_id=run.pk,
        step_id=step.pk,
        reason=reason,
    )
    return run


def return_step_for_revision(*, step: StepRun, actor: Actor, feedback: str) -> Run:
    """Send a parked draft back to the AI employee with the reviewer's feedback."""
    from desk.tasks import enqueue_advance

    run, step = _locked_parked_step(step)
    if step.kind != "llm":
        raise RunError("not_revisable", "Only a drafted step can be sent back for revision.")
    step.rendered = {**step.rendered, "previous_output": step.output}
    step.output = None
    step.feedback = feedback
    step.attempts = 0
    step.status = StepRun.Status.READY
    step.save(update_fields=["rendered", "output", "feedback", "attempts", "status"])
    run.status = Run.Status.RUNNING
    run.save(update_fields=["status", "updated_at"])
    record(
        tenant=run.tenant_id,
        actor=actor,
        action="step.returned",
        obj=step,
        run_id=run.pk,
        step_id=step.pk,
        reason=feedback,
    )
    enqueue_advance(run.pk)
    return run


# --- usage, budgets, service levels -------------------------------------------------------


def month_start(now) -> date:
    return now.date().replace(day=1)


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
    """Stop a run before a model call its tenant's budget no longer covers; escalate."""
    run.status = Run.Status.ON_HOLD
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
    from desk.tasks import enqueue_advance

    now = timezone.now()
    next_month = (month_start(now) + timedelta(days=32)).replace(day=1)
    with rls.tenant_context(tenant.pk):
        lock_chain(tenant.pk)
        tenant = Tenant.objects.select_for_update(no_key=True).get(pk=tenant.pk)
        tenant.budget_lifted_until = datetime.combine(next_month, time.min, tzinfo=UTC)
        tenant._history_user = actor.user
        tenant.save(update_fields=["budget_lifted_until"])
        held = list(
            Run.objects.filter(tenant=tenant, status=Run.Status.ON_HOLD).values_list(
                "pk", flat=True
            )
        )
        Run.objects.filter(pk__in=held).update(status=Run.Status.RUNNING, updated_at=now)
        record(
            tenant=tenant,
            actor=actor,
            action="budget.lifted",
            obj=tenant,
            reason=reason,
            data={"until": tenant.budget_lifted_until, "resumed_runs": held},
        )
        for run_id in held:
            enqueue_advance(run_id)
    return held


# A run is at risk once it has used this share of its role's target turnaround.
SLA_AT_RISK_SHARE = 0.8


def sla_state(run: Run, *, now) -> str:
    """on_track, at_risk, or breached against the role's target turnaround; done when closed."""
    if not run.is_open:
        return "done"
    target = timedelta(minutes=run.role.target_turnaround_minutes)
    elapsed = now - run.created_at
    if elapsed >= target:
        return "breached"
    if elapsed >= target * SLA_AT_RISK_SHARE:
        return "at_risk"
    return "on_track"


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


def _escalate_missed_service_levels(*, tenant_id: int, now) -> int:
    """Open one escalation for each open run past its role's target turnaround."""
    late = (
        Run.objects.filter(tenant_id=tenant_id, status__in=Run.OPEN_STATUSES)
        .filter(sla_escalated_at__isnull=True)
        .select_related("role")
        .order_by("created_at")
    )
    count = 0
    for run in late[:500]:
        if sla_state(run, now=now) != "breached":
            continue
        run.sla_escalated_at = now
        run.save(update_fields=["sla_escalated_at"])
        reason = (
            f"Open for {int((now - run.created_at).total_seconds() // 60)} min; "
            f"the role's target is {run.role.target_turnaround_minutes} min."
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
        count += 1
    return count


# --- outbox and reaper ---------------------------------------------------------------------


def deliver_outbox_message(*, message_id: int) -> OutboxMessage | None:
    """Deliver one outbox message unless it already went out."""
    tenant_id = rls.tenant_of("desk_outboxmessage", message_id)
    if tenant_id is None:
        return None
    with rls.tenant_context(tenant_id):
        message = OutboxMessage.objects.select_for_update(no_key=True).filter(pk=message_id).first()
        if message is None or message.status != OutboxMessage.Status.PENDING:
            return message
        message.attempts += 1
        try:
            if message.channel != "email":
                raise ValueError(f"no delivery for channel '{message.channel}'")
            payload = message.payload
            EmailMessage(
                subject=payload["subject"],
                body=payload["body"],
                from_email=settings.DEFAULT_FROM_EMAIL,
                to=[payload["to"]],
                headers={"X-AgentDesk-Key": message.idempotency_key},
            ).send()
        except Exception as exc:
            message.last_error = f"{type(exc).__name__}: {exc}"
            if message.attempts >= OUTBOX_MAX_ATTEMPTS:
                message.status = OutboxMessage.Status.FAILED
                run = Run.objects.get(pk=message.run_id)
                get_gate().open_escalation(
                    run=run,
                    step=message.step,
                    reason=f"Delivery failed: {message.last_error}",
                    kind="delivery",
                )
            message.save(update_fields=["attempts", "last_error", "status"])
            record(
                tenant=message.tenant_id,
                actor=Actor.system("outbox"),
                action="outbox.failed",
                obj=message,
                run_id=message.run_id,
                step_id=message.step_id,
                data={"error": message.last_error, "attempts": message.attempts},
            )
            return message
        message.status = OutboxMessage.Status.SENT
        message.sent_at = timezone.now()
        message.save(update_fields=["attempts", "status", "sent_at"])
        record(
            tenant=message.tenant_id,
            actor=Actor.system("outbox"),
            action="outbox.sent",
            obj=message,
            run_id=message.run_id,
            step_id=message.step_id,
            data={"channel": message.channel, "to": message.payload.get("to", "")},
        )
    return message


def reap_expired_leases(*, now=None) -> int:
    """Make steps whose worker vanished ready again, and re-ring stalled runs.

    Returns how many runs were woken.
    """
    now = now or timezone.now()
    with rls.platform_context():
        # Which tenants exist is all the reaper reads across tenants; the work is per tenant.
        tenant_ids = list(Tenant.objects.values_list("pk", flat=True))
    woken = 0
    for tenant_id in tenant_ids:
        woken += _reap_tenant(tenant_id=tenant_id, now=now)
        with transaction.atomic():
            woken += len(admit_runs(tenant_id=tenant_id))
    return woken


def _reap_tenant(*, tenant_id: int, now) -> int:
    from desk.tasks import enqueue_advance, enqueue_outbox_delivery

    woken: set[int] = set()
    with rls.tenant_context(tenant_id):
        expired = StepRun.objects.filter(
            tenant_id=tenant_id, status=StepRun.Status.RUNNING, lease_expires_at__lt=now
        )
        for step in expired.select_for_update(no_key=True, skip_locked=True)[:500]:
            record(
                tenant=tenant_id,
                actor=Actor.system("reaper"),
                action="step.lease_expired",
                obj=step,
                run_id=step.run_id,
                step_id=step.pk,
                data={"owner": step.lease_owner, "attempts": step.attempts},
            )
            step.status = StepRun.Status.READY
            step.lease_owner = ""
            step.lease_expires_at = None
            step.save(update_fields=["status", "lease_owner", "lease_expires_at"])
            enqueue_advance(step.run_id)
            woken.add(step.run_id)
        # A doorbell can be lost (the Redis broker drops in-flight tasks on a crash):
        # re-ring runs that should be moving but have not changed for a while.
        # advance_run is idempotent, so a needless ring costs one lookup.
        stalled = (
            Run.objects.filter(
                tenant_id=tenant_id,
                status__in=(Run.Status.QUEUED, Run.Status.RUNNING),
                updated_at__lt=now - timedelta(seconds=STALL_SECONDS),
            )
            .exclude(steps__status=StepRun.Status.RUNNING)
            .exclude(pk__in=woken)
            .values_list("pk", flat=True)[:500]
        )
        for run_id in stalled:
            enqueue_advance(run_id)
            woken.add(run_id)
        pending = OutboxMessage.objects.filter(
            tenant_id=tenant_id,
            status=OutboxMessage.Status.PENDING,
            created_at__lt=now - timedelta(seconds=STALL_SECONDS),
        ).values_list("pk", flat=True)[:500]
        for message_id in pending:
            enqueue_outbox_delivery(message_id)
        _escalate_missed_service_levels(tenant_id=tenant_id, now=now)
    return len(woken)
