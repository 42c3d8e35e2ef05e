"""Reused reads of runs and their steps, and of what tenants are using."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import (
    BigIntegerField,
    Count,
    DateTimeField,
    DecimalField,
    DurationField,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce

from audit.models import AuditEvent
from desk.models import Run, StepRun, TenantUsage
from roles.models import RoleVersion
from roles.workflow import BUNDLE_DEFAULTS
from tenants.models import Tenant
from tenants.scoping import scope_to_tenant

THROUGHPUT_WINDOW = timedelta(minutes=5)
# A run is at risk once it has used this share of its role's target turnaround.
SLA_AT_RISK_SHARE = 0.8


def month_start(now) -> date:
    """The first day of `now`'s calendar month (usage and budgets count per month)."""
    return now.date().replace(day=1)


def run_steps(run: Run) -> QuerySet[StepRun]:
    """The run's steps in the order they run."""
    return run.steps.order_by("index")


def steps_before(step: StepRun) -> QuerySet[StepRun]:
    """The steps of the same run that come before `step`."""
    return StepRun.objects.filter(run_id=step.run_id, index__lt=step.index).order_by("index")


def run_audit_events(run: Run) -> QuerySet[AuditEvent]:
    """The audit trail of one run, within the run's own tenant, in chain order."""
    events = AuditEvent.objects.filter(run_id=run.pk)
    return scope_to_tenant(events, run.tenant).order_by("seq")


# --- capacity ------------------------------------------------------------------------------


def _count_per_tenant(queryset: QuerySet) -> Coalesce:
    """How many rows of `queryset` belong to the outer query's tenant (one subquery)."""
    counted = (
        queryset.filter(tenant=OuterRef("pk"))
        .order_by()
        .values("tenant")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def with_capacity(tenants: QuerySet[Tenant], *, now: datetime) -> QuerySet[Tenant]:
    """Annotate each tenant with what it is using now, in the same query.

    queued_runs, running_runs, waiting_runs (for approval), held_runs (on hold);
    recent_steps: steps completed in the last THROUGHPUT_WINDOW; month_tokens and month_cost:
    this calendar month's usage.
    """
    runs = Run.objects.all()
    usage = TenantUsage.objects.filter(tenant=OuterRef("pk"), month=month_start(now))
    return tenants.annotate(
        queued_runs=_count_per_tenant(runs.filter(status=Run.Status.QUEUED)),
        running_runs=_count_per_tenant(runs.filter(status=Run.Status.RUNNING)),
        waiting_runs=_count_per_tenant(runs.filter(status=Run.Status.WAITING_APPROVAL)),
        held_runs=_count_per_tenant(runs.filter(status=Run.Status.ON_HOLD)),
        recent_steps=_count_per_tenant(
            StepRun.objects.filter(
                status=StepRun.Status.COMPLETED, finished_at__gte=now - THROUGHPUT_WINDOW
            )
        ),
        month_tokens=Coalesce(
            Subquery(
                usage.annotate(
                    total=ExpressionWrapper(
                        F("prompt_tokens") + F("completion_tokens"),
                        output_field=BigIntegerField(),
                    )
                ).values("total")[:1],
                output_field=BigIntegerField(),
            ),
            0,
        ),
        month_cost=Coalesce(
            Subquery(
                usage.values("cost")[:1],
                output_field=DecimalField(max_digits=14, decimal_places=6),
            ),
            Value(Decimal(0)),
            output_field=DecimalField(max_digits=14, decimal_places=6),
        ),
    )


# --- service levels ------------------------------------------------------------------------

SERVICE_LEVELS = ("at_risk", "breached")
# How long before its deadline a run is at risk, per minute of its target turnaround.
SLA_AT_RISK_LEAD_PER_MINUTE = timedelta(minutes=1) * (1 - SLA_AT_RISK_SHARE)


def sla_target_minutes(version: RoleVersion) -> int | None:
    """The version's target turnaround in minutes; None when its bundle holds none usable.

    Validation refuses such a bundle (roles.workflow); a run of one written around it has
    no deadline rather than failing to start.
    """
    try:
        return version.target_turnaround_minutes
    except (TypeError, ValueError):
        return None


def sla_due_at(version: RoleVersion, *, created_at: datetime) -> datetime | None:
    """When a run of `version` created at `created_at` misses its target turnaround (the
    value start_run stores in Run.sla_due_at); None when the version has no target."""
    minutes = sla_target_minutes(version)
    return None if minutes is None else created_at + timedelta(minutes=minutes)


def sla_at_risk_lead(version: RoleVersion) -> timedelta:
    """How long before its deadline a run of `version` is at risk."""
    return (sla_target_minutes(version) or 0) * SLA_AT_RISK_LEAD_PER_MINUTE


def _at_risk_from() -> ExpressionWrapper:
    """Run.sla_due_at - sla_at_risk_lead(the pinned version), in the database."""
    # A bundle that leaves the target out means the default (RoleVersion._bundled).
    # Cast: SQLite multiplies a duration by plain integer columns only; the wrappers give
    # each step its type, which Django cannot infer for integer * duration.
    minutes = Coalesce(
        Cast(
            KeyTextTransform("target_turnaround_minutes", "role_version__definition"),
            IntegerField(),
        ),
        Value(BUNDLE_DEFAULTS["target_turnaround_minutes"]),
    )
    lead = ExpressionWrapper(
        minutes * Value(SLA_AT_RISK_LEAD_PER_MINUTE), output_field=DurationField()
    )
    return ExpressionWrapper(F("sla_due_at") - lead, output_field=DateTimeField())


def runs_at_service_level(runs: QuerySet[Run], level: str, *, now: datetime) -> QuerySet[Run]:
    """The open runs that desk.services.sla_state would call `level` ("at_risk" or
    "breached") at `now`: compared in the database against each run's stored deadline
    (Run.sla_due_at), at risk within sla_at_risk_lead of it.

    Raises ValueError for another level.
    """
    if level not in SERVICE_LEVELS:
        raise ValueError(f"unknown service level {level!r}")
    runs = runs.filter(status__in=Run.OPEN_STATUSES)
    if level == "breached":
        return runs.filter(sla_due_at__lte=now)
    return runs.alias(at_risk_from=_at_risk_from()).filter(
        at_risk_from__lte=now, sla_due_at__gt=now
    )
