"""How versions of a role did over the same period: the figures a canary is judged by.

`compare_versions` takes the runs of each version started in [since, until) — one cohort
per version — and reports what became of them: completed, failed, the reviewers' decisions
on their drafts and tool calls, escalations, cost and latency. Every rate carries the counts
behind it. The work is four aggregate queries grouped by version, whatever the number of
runs.

Runs, approval requests, decisions and escalations belong to apps above `roles` (desk,
approvals). This module does not import them: it reaches their tables through the reverse
relations those apps declare on RoleVersion and Run, as the ORM offers them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum, Window
from django.db.models.functions import RowNumber

from roles.models import Role, RoleVersion


@dataclass(frozen=True)
class Ratio:
    """A share, with the counts behind it."""

    numerator: int
    denominator: int

    @property
    def value(self) -> float | None:
        return self.numerator / self.denominator if self.denominator else None

    @property
    def percent(self) -> str:
        value = self.value
        return "—" if value is None else f"{value:.0%}"

    def __str__(self) -> str:
        return f"{self.percent} ({self.numerator} of {self.denominator})"


@dataclass(frozen=True)
class VersionFigures:
    """What became of the runs of one version started in the period."""

    version: RoleVersion
    since: datetime
    until: datetime
    runs_started: int
    completed: Ratio  # of the runs started
    failed: Ratio  # of the runs started
    still_open: int
    decisions: int  # standing decisions on these runs' approval requests
    approval_rate: Ratio  # approvals (plain or edited) of the decisions
    edit_rate: Ratio  # approvals with an edited payload, of the approvals
    send_back_rate: Ratio  # of the decisions
    reject_rate: Ratio  # of the decisions
    escalated: Ratio  # runs with at least one escalation, of the runs started
    escalations: int
    total_cost: Decimal
    cost_per_run: Decimal | None  # total cost of the runs started / runs started
    timed_runs: int  # completed runs with a finish time: what latency is over
    mean_latency: timedelta | None  # finished_at - created_at, over completed runs
    median_latency: timedelta | None  # the lower median of the same


def compare_versions(
    role: Role, versions: Iterable[RoleVersion], *, since: datetime, until: datetime
) -> list[VersionFigures]:
    """Figure each version's runs started in [since, until), in the order given.

    Raises ValueError when a version is not one of the role's.
    """
    versions = list(versions)
    foreign = [version for version in versions if version.role_id != role.pk]
    if foreign:
        raise ValueError(f"Not versions of {role.slug}: {', '.join(map(str, foreign))}.")
    relations = _Relations()
    Run = relations.run
    ids = [version.pk for version in versions]
    # One cohort per version, always inside the role's own tenant.
    cohort = {
        "tenant": role.tenant_id,
        "role": role.pk,
        "role_version__in": ids,
        "created_at__gte": since,
        "created_at__lt": until,
    }
    duration = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
    completed = Q(status=Run.Status.COMPLETED, finished_at__isnull=False)

    runs = {
        row["role_version"]: row
        for row in Run.objects.filter(**cohort)
        .values("role_version")
        .annotate(
            started=Count("pk"),
            completed=Count("pk", filter=Q(status=Run.Status.COMPLETED)),
            failed=Count("pk", filter=Q(status=Run.Status.FAILED)),
            still_open=Count("pk", filter=Q(status__in=Run.OPEN_STATUSES)),
            cost=Sum("cost"),
            timed=Count("pk", filter=completed),
            total_latency=Sum(duration, filter=completed),
        )
        .order_by()
    }

    Decision = relations.decision
    approving = Q(verdict__in=(Decision.Verdict.APPROVE, Decision.Verdict.EDIT))
    decisions = {
        row["request__run__role_version"]: row
        for row in Decision.objects.filter(
            tenant=role.tenant_id,
            dismissed_at__isnull=True,  # an edit dismissed them: they were for another proposal
            request__tenant=role.tenant_id,
            **{f"request__run__{key}": value for key, value in cohort.items()},
        )
        .values("request__run__role_version")
        .annotate(
            total=Count("pk"),
            approvals=Count("pk", filter=approving),
            edits=Count("pk", filter=approving & Q(edited_payload__isnull=False)),
            send_backs=Count("pk", filter=Q(verdict=Decision.Verdict.REVISE)),
            rejections=Count("pk", filter=Q(verdict=Decision.Verdict.REJECT)),
        )
        .order_by()
    }

    escalations = {
        row["run__role_version"]: row
        for row in relations.escalation.objects.filter(
            tenant=role.tenant_id, **{f"run__{key}": value for key, value in cohort.items()}
        )
        .values("run__role_version")
        .annotate(total=Count("pk"), runs=Count("run", distinct=True))
        .order_by()
    }

    # The lower median of each version's latencies: rank its completed runs by duration and
    # keep the middle one, in one query (window functions, SQLite 3.25+ and PostgreSQL).
    medians = {
        row["role_version"]: row["latency"]
        for row in Run.objects.filter(completed, **cohort)
        .annotate(
            latency=duration,
            rank=Window(RowNumber(), partition_by=F("role_version"), order_by=duration.asc()),
            count=Window(Count("pk"), partition_by=F("role_version")),
        )
        .filter(rank=(F("count") + 1) / 2)
        .values("role_version", "latency")
        .order_by()
    }

    return [
        _figures(
            version,
            since=since,
            until=until,
            runs=runs.get(version.pk, {}),
            decisions=decisions.get(version.pk, {}),
            escalations=escalations.get(version.pk, {}),
            median=medians.get(version.pk),
        )
        for version in versions
    ]


class _Relations:
    """The models of the apps above roles, found through the relations they declare."""

    def __init__(self):
        self.run = RoleVersion._meta.get_field("runs").related_model
        request = self.run._meta.get_field("approval_requests").related_model
        self.decision = request._meta.get_field("decisions").related_model
        self.escalation = self.run._meta.get_field("escalations").related_model


def _figures(version, *, since, until, runs, decisions, escalations, median) -> VersionFigures:
    started = runs.get("started", 0)
    total_decisions = decisions.get("total", 0)
    approvals = decisions.get("approvals", 0)
    total_cost = runs.get("cost") or Decimal(0)
    timed = runs.get("timed", 0)
    total_latency = runs.get("total_latency")
    return VersionFigures(
        version=version,
        since=since,
        until=until,
        runs_started=started,
        completed=Ratio(runs.get("completed", 0), started),
        failed=Ratio(runs.get("failed", 0), started),
        still_open=runs.get("still_open", 0),
        decisions=total_decisions,
        approval_rate=Ratio(approvals, total_decisions),
        edit_rate=Ratio(decisions.get("edits", 0), approvals),
        send_back_rate=Ratio(decisions.get("send_backs", 0), total_decisions),
        reject_rate=Ratio(decisions.get("rejections", 0), total_decisions),
        escalated=Ratio(escalations.get("runs", 0), started),
        escalations=escalations.get("total", 0),
        total_cost=total_cost,
        cost_per_run=(total_cost / started) if started else None,
        timed_runs=timed,
        mean_latency=(total_latency / timed) if timed and total_latency is not None else None,
        median_latency=median,
    )
