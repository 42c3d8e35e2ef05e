"""What the audit reports need from the runtime: a run with its steps, a period's runs, the
roles and their versions (audit.reports.RunRecords; settings.AUDIT_RUN_RECORDS names this)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from decimal import Decimal

from django.db.models import Count, Sum

from audit.reports import AIEmployee, RunList, RunRecord, RunRow, StepRecord
from desk.models import Run
from desk.selectors import run_steps
from roles.models import RoleVersion


class RunRecords:
    def run(self, *, tenant_id: int, run_id: int) -> RunRecord | None:
        run = (
            Run.objects.filter(tenant_id=tenant_id, pk=run_id)
            .select_related("role", "role_version")
            .first()
        )
        if run is None:
            return None
        definitions = run.role_version.steps
        return RunRecord(
            id=run.pk,
            tenant_id=run.tenant_id,
            role_slug=run.role.slug,
            role_name=run.role.name,
            role_version_id=run.role_version_id,
            version_number=run.role_version.number,
            status=run.status,
            status_label=run.get_status_display(),
            via=run.get_via_display(),
            started_by=run.started_by_label,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
            cost=run.cost,
            error=run.error,
            input=run.input,
            steps=[
                StepRecord(
                    id=step.pk,
                    index=step.index,
                    key=step.key,
                    kind=step.kind,
                    category=step.category,
                    status=step.status,
                    status_label=step.get_status_display(),
                    attempts=step.attempts,
                    started_at=step.started_at,
                    finished_at=step.finished_at,
                    model=step.model,
                    prompt_tokens=step.prompt_tokens,
                    completion_tokens=step.completion_tokens,
                    cost=step.cost,
                    reason=(
                        definitions[step.index].get("reason", "")
                        if step.index < len(definitions)
                        else ""
                    ),
                    rendered=step.rendered or {},
                    output=step.output,
                    approved_payload=step.approved_payload,
                    feedback=step.feedback,
                    error=step.error,
                )
                for step in run_steps(run)
            ],
        )

    def runs(self, *, tenant_id: int, start: dt.datetime, end: dt.datetime, limit: int) -> RunList:
        runs = Run.objects.filter(tenant_id=tenant_id, created_at__gte=start, created_at__lt=end)
        labels = dict(Run.Status.choices)
        by_status = list(
            runs.order_by()
            .values("status")
            .annotate(
                runs=Count("pk"),
                prompt=Sum("prompt_tokens"),
                completion=Sum("completion_tokens"),
                cost=Sum("cost"),
            )
            .order_by("status")
        )
        rows = runs.select_related("role", "role_version").order_by("created_at", "pk")[:limit]
        return RunList(
            rows=[
                RunRow(
                    id=run.pk,
                    employee=f"{run.role.slug} v{run.role_version.number}",
                    status=run.status,
                    status_label=run.get_status_display(),
                    via=run.get_via_display(),
                    started_by=run.started_by_label,
                    created_at=run.created_at,
                    finished_at=run.finished_at,
                    tokens=run.total_tokens,
                    cost=run.cost,
                )
                for run in rows
            ],
            total=sum(group["runs"] for group in by_status),
            by_status=[(labels.get(g["status"], g["status"]), g["runs"]) for g in by_status],
            tokens=sum((g["prompt"] or 0) + (g["completion"] or 0) for g in by_status),
            cost=sum((g["cost"] or Decimal(0) for g in by_status), Decimal(0)),
        )

    def ai_employees(self, *, tenant_ids: Iterable[int]) -> list[AIEmployee]:
        versions = (
            RoleVersion.objects.filter(tenant_id__in=list(tenant_ids))
            .select_related("role")
            .order_by("tenant_id", "role__name", "role_id", "number")
        )
        employees: dict[int, AIEmployee] = {}
        for version in versions:
            role = version.role
            known = employees.get(role.pk)
            numbers = (
                (*known.versions, (version.pk, version.number))
                if known
                else ((version.pk, version.number),)
            )
            employees[role.pk] = AIEmployee(
                tenant_id=role.tenant_id,
                role_id=role.pk,
                slug=role.slug,
                name=role.name,
                versions=numbers,
            )
        return list(employees.values())
