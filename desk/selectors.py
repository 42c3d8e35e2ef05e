"""Reused reads of runs and their steps."""

from __future__ import annotations

from django.db.models import QuerySet

from audit.models import AuditEvent
from desk.models import Run, StepRun
from tenants.scoping import scope_to_tenant


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
