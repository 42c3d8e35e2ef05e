"""Printable reports and an auditor's questions, read from one tenant's audit trail.

Every selector here reads one tenant's events for one period through the
(tenant, created_at) index, in a fixed number of queries however many rows there are: a
list holds at most its cap and says how many rows there were in all (the CSV or JSON Lines
export has every event).

What the trail does not hold — a run's steps with their prompts and outputs, its cost, the
names of roles — comes from the runtime through `RunRecords`, which settings.AUDIT_RUN_RECORDS
names (audit depends on tenants only; desk implements it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any, Protocol

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, F, Max, Min, Q, QuerySet
from django.db.models.fields.json import KT
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.module_loading import import_string

from audit.models import AuditEvent

SECTION_CAP = 500  # rows one section of a printed report lists (a PDF of 500 takes seconds)
PAGE_SIZE = 200  # rows one page of an auditor's question lists

DATA_ACTIONS = ("data.read", "data.refused")
# "Who approved what": decisions on steps, and the second person of every four-eyes change.
APPROVAL_ACTIONS = (
    "approval.decided",
    "policy.change_applied",
    "policy.change_rejected",
    "role_version.published",
)
# "What changed in roles and policies".
CHANGE_ACTIONS = (
    "role.created",
    "role.updated",
    "role.canary_set",
    "role_version.created",
    "role_version.edited",
    "role_version.publication_requested",
    "role_version.publication_rejected",
    "role_version.publication_withdrawn",
    "role_version.imported",
    "role_version.published",
    "role_version.activated",
    "policy.change_proposed",
    "policy.change_applied",
    "policy.change_rejected",
    "policy.change_withdrawn",
)
VERDICTS = {
    "approve": "approved",
    "edit": "edited and approved",
    "reject": "rejected",
    "revise": "sent back for revision",
}


def stamp(value: dt.datetime | str | None) -> str:
    """2026-12-02 14:03:27 UTC: to the second, in the current time zone, which it names (an
    ISO string, as event data holds times, too)."""
    if isinstance(value, str):
        value = parse_datetime(value) or value
    if not isinstance(value, dt.datetime):
        return "—" if value in (None, "") else str(value)
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return f"{value:%Y-%m-%d %H:%M:%S} {value.tzname() or timezone.get_current_timezone_name()}"


# --- what is asked ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """Whole days from `since` to `until`, both included, in the current time zone."""

    since: dt.date
    until: dt.date

    @property
    def start(self) -> dt.datetime:
        return timezone.make_aware(dt.datetime.combine(self.since, dt.time.min))

    @property
    def end(self) -> dt.datetime:
        """Exclusive: the midnight after `until`."""
        next_day = self.until + dt.timedelta(days=1)
        return timezone.make_aware(dt.datetime.combine(next_day, dt.time.min))

    @property
    def time_zone(self) -> str:
        return timezone.get_current_timezone_name()

    def as_query(self) -> dict[str, str]:
        return {"since": self.since.isoformat(), "until": self.until.isoformat()}

    def __str__(self) -> str:
        return f"{self.since:%Y-%m-%d} to {self.until:%Y-%m-%d} ({self.time_zone})"


# --- what the runtime tells (RunRecords) -------------------------------------------------------


@dataclass(frozen=True)
class AIEmployee:
    """A role of a tenant with its versions: who "AI employee X (role version)" is."""

    tenant_id: int
    role_id: int
    slug: str
    name: str
    versions: tuple[tuple[int, int], ...]  # (role version id, number), oldest first

    def version_ids(self) -> list[int]:
        return [version_id for version_id, _ in self.versions]


@dataclass
class StepRecord:
    index: int
    key: str
    kind: str
    category: str
    status: str
    status_label: str
    attempts: int
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    reason: str  # why the step's definition says it runs
    rendered: dict[str, Any]  # the rendered prompt, tool call or review instructions
    output: Any
    approved_payload: Any
    feedback: str
    error: str
    id: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RunRecord:
    id: int
    tenant_id: int
    role_slug: str
    role_name: str
    role_version_id: int
    version_number: int
    status: str
    status_label: str
    via: str
    started_by: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    error: str
    input: Any
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def employee(self) -> str:
        return f"{self.role_slug} v{self.version_number}"

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RunRow:
    id: int
    employee: str
    status: str
    status_label: str
    via: str
    started_by: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    tokens: int
    cost: Decimal


@dataclass
class RunList:
    rows: list[RunRow]
    total: int
    by_status: list[tuple[str, int]]  # (status label, runs)
    tokens: int
    cost: Decimal

    @property
    def more(self) -> int:
        return self.total - len(self.rows)


class RunRecords(Protocol):
    def run(self, *, tenant_id: int, run_id: int) -> RunRecord | None:
        """One run of the tenant with its steps in order, or None (another tenant's, none)."""

    def runs(self, *, tenant_id: int, start: dt.datetime, end: dt.datetime, limit: int) -> RunList:
        """The tenant's runs created in [start, end): totals, and the first `limit` rows."""

    def ai_employees(self, *, tenant_ids: Iterable[int]) -> list[AIEmployee]:
        """The roles of these tenants with their versions, by tenant and name."""


@cache
def run_records() -> RunRecords:
    return import_string(settings.AUDIT_RUN_RECORDS)()


# --- rows read from the trail -----------------------------------------------------------------


@dataclass
class Rows:
    """At most a cap of rows, and how many there were in all."""

    rows: list
    total: int
    page: int = 1
    pages: int = 1

    @property
    def more(self) -> int:
        return self.total - len(self.rows)

    @property
    def first_number(self) -> int:
        return (self.page - 1) * PAGE_SIZE + 1 if self.rows else 0

    @property
    def last_number(self) -> int:
        return (self.page - 1) * PAGE_SIZE + len(self.rows)


@dataclass
class DataAccess:
    seq: int
    at: dt.datetime
    employee: str
    role_version_id: int | None
    run_id: int | None
    step_id: int | None
    refused: bool
    tool: str
    kind: str
    references: list[str]
    query: Any
    reason: str


@dataclass
class DataAccessSummary:
    employee: str
    role_version_id: int | None
    kind: str
    reads: int
    refusals: int
    removed: int  # events whose payload (the kind among it) retention emptied
    first_at: dt.datetime
    last_at: dt.datetime


@dataclass
class Approval:
    seq: int
    at: dt.datetime
    who: str
    on_behalf_of: str
    verdict: str
    what: str
    version: int | None
    comment: str
    details: list[str]
    run_id: int | None
    step_id: int | None


@dataclass
class Change:
    seq: int
    at: dt.datetime
    who: str
    action: str
    what: str
    details: list[str]
    reason: str


@dataclass
class TrailEvent:
    seq: int
    at: dt.datetime
    who: str
    who_type: str
    action: str
    step_id: int | None
    reason: str
    hash: str


# --- reports ---------------------------------------------------------------------------------


@dataclass
class RunReport:
    tenant: Any
    run: RunRecord
    data_access: Rows
    approvals: list[dict[str, Any]]
    trail: Rows
    step_keys: dict[int, str]


@dataclass
class TenantReport:
    tenant: Any
    period: Period
    runs: RunList
    approvals: Rows
    data_access: list[DataAccessSummary]
    changes: Rows


def tenant_events(tenant_id: int, period: Period | None = None) -> QuerySet[AuditEvent]:
    """One tenant's events, within a period when given (the (tenant, created_at) index)."""
    events = AuditEvent.objects.filter(tenant_id=tenant_id)
    if period is not None:
        events = events.filter(created_at__gte=period.start, created_at__lt=period.end)
    return events


def _capped(events: QuerySet, cap: int) -> tuple[list[AuditEvent], int]:
    rows = list(events[:cap])
    total = len(rows) if len(rows) < cap else events.count()
    return rows, total


def _paged(events: QuerySet, page: int) -> tuple[list[AuditEvent], int, int, int]:
    """The events of one page (1-based; past the last: the last), total, page, pages."""
    total = events.count()
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(max(1, page), pages)
    offset = (page - 1) * PAGE_SIZE
    return list(events[offset : offset + PAGE_SIZE]), total, page, pages


def _page_or_cap(events: QuerySet, page: int | None) -> tuple[list[AuditEvent], int, int, int]:
    if page is None:
        rows, total = _capped(events, SECTION_CAP)
        return rows, total, 1, 1
    return _paged(events, page)


def _usernames(ids: Iterable[Any]) -> dict[int, str]:
    wanted = {int(i) for i in ids if isinstance(i, int) or (isinstance(i, str) and i.isdigit())}
    if not wanted:
        return {}
    users = get_user_model().objects.filter(pk__in=wanted)
    return dict(users.values_list("pk", get_user_model().USERNAME_FIELD))


def _reason(event: AuditEvent) -> str:
    """The event's reason, or what became of it once retention emptied the payload."""
    if event.payload_redacted_at is not None:
        return f"(removed {stamp(event.payload_redacted_at)}, past the tenant's retention)"
    return event.reason


def _show(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "—"
    return str(value)


def _data_access(event: AuditEvent) -> DataAccess:
    data = event.data or {}
    references = data.get("references") or []
    return DataAccess(
        seq=event.seq,
        at=event.created_at,
        employee=event.actor_label,
        role_version_id=event.role_version_id,
        run_id=event.run_id,
        step_id=event.step_id,
        refused=event.action == "data.refused",
        tool=str(data.get("tool") or ""),
        kind=str(data.get("kind") or ""),
        references=[str(r) for r in references] if isinstance(references, list) else [],
        query=data.get("query"),
        reason=_reason(event),
    )


# --- an auditor's questions ----------------------------------------------------------------


def data_reads(
    *,
    tenant_id: int,
    period: Period,
    role_version_ids: list[int] | None = None,
    page: int | None = 1,
) -> Rows:
    """What AI employees (these role versions, or all) read or were refused in the period,
    oldest first: one page, or (page=None) the first SECTION_CAP."""
    events = tenant_events(tenant_id, period).filter(action__in=DATA_ACTIONS)
    if role_version_ids is not None:
        events = events.filter(role_version_id__in=role_version_ids)
    rows, total, number, pages = _page_or_cap(events.order_by("created_at", "seq"), page)
    return Rows([_data_access(e) for e in rows], total, number, pages)


def data_access_summary(
    *, tenant_id: int, period: Period, role_version_ids: list[int] | None = None
) -> list[DataAccessSummary]:
    """Reads and refusals in the period per AI employee (role version) and data kind."""
    events = tenant_events(tenant_id, period).filter(action__in=DATA_ACTIONS)
    if role_version_ids is not None:
        events = events.filter(role_version_id__in=role_version_ids)
    groups = (
        events.order_by()
        .values("role_version_id", "actor_label", data_kind=KT("data__kind"))
        .annotate(
            reads=Count("pk", filter=Q(action="data.read")),
            refusals=Count("pk", filter=Q(action="data.refused")),
            removed=Count("pk", filter=Q(payload_redacted_at__isnull=False)),
            first_at=Min("created_at"),
            last_at=Max("created_at"),
        )
        .order_by("actor_label", "role_version_id", F("data_kind").asc(nulls_first=True))
    )
    return [
        DataAccessSummary(
            employee=g["actor_label"],
            role_version_id=g["role_version_id"],
            kind=g["data_kind"] or "",
            reads=g["reads"],
            refusals=g["refusals"],
            removed=g["removed"],
            first_at=g["first_at"],
            last_at=g["last_at"],
        )
        for g in groups
    ]


def approvals_in(*, tenant_id: int, period: Period, page: int | None = None) -> Rows:
    """Who approved what in the period: every decision on a step (approve, edit, reject,
    send back), every policy change a second operator applied or turned down, every role
    version published; oldest first. One page, or (page=None) the first SECTION_CAP."""
    events = tenant_events(tenant_id, period).filter(action__in=APPROVAL_ACTIONS)
    events = events.order_by("created_at", "seq")
    rows, total, number, pages = _page_or_cap(events, page)
    return Rows(_approvals(tenant_id, rows), total, number, pages)


def _approvals(tenant_id: int, events: list[AuditEvent]) -> list[Approval]:
    decided = [e for e in events if e.action == "approval.decided"]
    # What each request proposed, from its approval.requested event (by run: indexed).
    requested: dict[str, dict] = {}
    run_ids = {e.run_id for e in decided if e.run_id is not None}
    if run_ids:
        for object_id, data in (
            tenant_events(tenant_id)
            .filter(action="approval.requested", run_id__in=run_ids)
            .values_list("object_id", "data")
        ):
            requested[object_id] = data or {}
    people = _usernames(
        [e.data.get("on_behalf_of") for e in decided]
        + [e.data.get("proposed_by") for e in events if e.action == "policy.change_applied"]
    )
    policy_changes = _proposed_policy_changes(
        tenant_id, [e for e in events if e.action == "policy.change_rejected"]
    )
    rows = []
    for event in events:
        data = event.data or {}
        row = Approval(
            seq=event.seq,
            at=event.created_at,
            who=event.actor_label,
            on_behalf_of="",
            verdict="",
            what="",
            version=None,
            comment=_reason(event),
            details=[],
            run_id=event.run_id,
            step_id=event.step_id,
        )
        if event.action == "approval.decided":
            asked = requested.get(event.object_id, {})
            row.verdict = VERDICTS.get(data.get("verdict"), str(data.get("verdict", "")))
            row.version = data.get("version")
            row.what = (
                f"{asked.get('key', 'step')} ({asked.get('category', '—')}) of run "
                f"#{event.run_id}, approval request #{event.object_id}"
            )
            if data.get("on_behalf_of"):
                row.on_behalf_of = people.get(int(data["on_behalf_of"]), "")
            if data.get("diff"):
                row.details.append(str(data["diff"]))
            if data.get("dismissed"):
                row.details.append(f"dismissed earlier approvals: {_show(data['dismissed'])}")
            if data.get("via") and data["via"] != "admin":
                row.details.append(f"via {data['via']}")
        elif event.action == "policy.change_applied":
            row.verdict = "applied"
            row.what = _policy_change_label(data)
            proposer = people.get(data.get("proposed_by") or 0)
            if proposer:
                row.details.append(f"proposed by {proposer}")
            row.details += _policy_diff(data.get("before"), data.get("after"))
        elif event.action == "policy.change_rejected":
            row.verdict = "rejected"
            row.what = _policy_change_label(policy_changes.get(event.object_id, data))
        elif event.action == "role_version.published":
            row.verdict = "published"
            row.what = f"role version {data.get('role', '?')} v{data.get('number', '?')}"
        rows.append(row)
    return rows


def _proposed_policy_changes(tenant_id: int, events: list[AuditEvent]) -> dict[str, dict]:
    """The proposal of each policy change these events settle (proposals are rare: the action
    index finds them)."""
    ids = {e.object_id for e in events}
    if not ids:
        return {}
    proposals = tenant_events(tenant_id).filter(action="policy.change_proposed", object_id__in=ids)
    return dict(proposals.values_list("object_id", "data"))


def _policy_change_label(data: dict) -> str:
    values = data.get("after") or data.get("before") or {}
    category = values.get("category", "?")
    scope = f"role #{values['role']}" if values.get("role") else "the tenant"
    action = data.get("action", "change")
    number = f" #{data['change']}" if data.get("change") else ""
    return f"policy change{number}: {action} of '{category}' for {scope}"


def _policy_diff(before: dict | None, after: dict | None) -> list[str]:
    if before is None and after is not None:
        return [f"{k}: {_show(v)}" for k, v in sorted(after.items())]
    if after is None and before is not None:
        return [f"deleted ({', '.join(f'{k}: {_show(v)}' for k, v in sorted(before.items()))})"]
    before, after = before or {}, after or {}
    return [
        f"{k}: {_show(before.get(k))} → {_show(after.get(k))}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]


def changes_in(*, tenant_id: int, period: Period, page: int | None = None) -> Rows:
    """What changed in roles and policies in the period, oldest first: roles created and
    changed, versions drafted, imported from role files, published and activated (rollbacks),
    canaries, policy changes proposed, applied, rejected and withdrawn. One page, or the first
    SECTION_CAP."""
    events = tenant_events(tenant_id, period).filter(action__in=CHANGE_ACTIONS)
    events = events.order_by("created_at", "seq")
    rows, total, number, pages = _page_or_cap(events, page)
    return Rows(_changes(tenant_id, rows), total, number, pages)


def _changes(tenant_id: int, events: list[AuditEvent]) -> list[Change]:
    role_ids = {e.object_id for e in events if e.action.startswith("role.")}
    roles = {}
    if role_ids:
        roles = {
            str(employee.role_id): employee.slug
            for employee in run_records().ai_employees(tenant_ids=[tenant_id])
        }
    settled = [
        e for e in events if e.action in ("policy.change_rejected", "policy.change_withdrawn")
    ]
    proposals = _proposed_policy_changes(tenant_id, settled)
    people = _usernames(
        e.data.get("proposed_by") or e.data.get("requested_by")
        for e in events
        if e.action in ("policy.change_applied", "role_version.published")
    )
    rows = []
    for event in events:
        data = event.data or {}
        role = roles.get(event.object_id, f"#{event.object_id}")
        what, details = event.action, []
        if event.action == "role.created":
            what = f"role {role} created"
        elif event.action == "role.updated":
            what = f"role {role} changed"
            details = [f"{k}: {_show(v[0])} → {_show(v[1])}" for k, v in sorted(data.items())]
        elif event.action == "role.canary_set":
            if data.get("version"):
                what = f"role {role}: canary v{data['version']} takes {data.get('percent')} %"
            else:
                what = f"role {role}: canary stopped"
        elif event.action == "role_version.created":
            what = f"role version {data.get('role', '?')} v{data.get('number', '?')} drafted"
            if data.get("change_note"):
                details = [f"note: {data['change_note']}"]
        elif event.action == "role_version.edited":
            what = f"role version {data.get('role', '?')} v{data.get('number', '?')} edited"
        elif event.action.startswith("role_version.publication_"):
            verb = event.action.removeprefix("role_version.publication_")
            what = f"role version {data.get('role', '?')} v{data.get('number', '?')}: "
            what += "publication " + ("asked for" if verb == "requested" else verb)
            if data.get("override"):
                details = [f"override of the regression gate: {event.reason}"]
        elif event.action == "role_version.imported":
            what = f"role version {data.get('role', '?')} v{data.get('number', '?')} imported"
            details = ["from a role file"]
            details += [f"golden case {name} created" for name in data.get("cases_created", [])]
            details += [f"golden case {name} updated" for name in data.get("cases_updated", [])]
        elif event.action == "role_version.published":
            what = f"role version {data.get('role', '?')} v{data.get('number', '?')} published"
            proposer = people.get(data.get("requested_by") or 0)
            if proposer:
                details = [f"asked for by {proposer}"]
            if data.get("override"):
                details.append(f"override: {data.get('override_reason', '')}")
        elif event.action == "role_version.activated":
            what = f"role version {data.get('role', '?')} v{data.get('number', '?')} activated"
            if data.get("previous_number"):
                details = [f"replacing v{data['previous_number']}"]
        elif event.action == "policy.change_proposed":
            what = _policy_change_label(data) + " proposed"
            details = _policy_diff(data.get("before"), data.get("after"))
        elif event.action == "policy.change_applied":
            what = _policy_change_label(data) + " applied"
            proposer = people.get(data.get("proposed_by") or 0)
            details = [f"proposed by {proposer}"] if proposer else []
            details += _policy_diff(data.get("before"), data.get("after"))
        else:  # rejected or withdrawn
            proposal = proposals.get(event.object_id, data)
            verb = event.action.rsplit("_", 1)[-1]
            what = f"{_policy_change_label(proposal)} {verb}"
        rows.append(
            Change(
                seq=event.seq,
                at=event.created_at,
                who=event.actor_label,
                action=event.action,
                what=what,
                details=details,
                reason=_reason(event),
            )
        )
    return rows


# --- the printable reports -----------------------------------------------------------------


def run_report(*, tenant, run_id: int) -> RunReport | None:
    """A run of the tenant: its steps (prompts, outputs, cost), the data it read and why, its
    approvals (who, when, which proposal version) and its audit trail; None when the tenant
    has no such run."""
    run = run_records().run(tenant_id=tenant.pk, run_id=run_id)
    if run is None:
        return None
    events = tenant_events(tenant.pk).filter(run_id=run.id).order_by("seq")
    reads, reads_total = _capped(events.filter(action__in=DATA_ACTIONS), SECTION_CAP)
    approval_events, _ = _capped(events.filter(action__startswith="approval."), SECTION_CAP)
    trail, trail_total = _capped(events, SECTION_CAP)
    step_keys = {step.id: step.key for step in run.steps}
    people = _usernames(e.data.get("on_behalf_of") for e in approval_events)
    return RunReport(
        tenant=tenant,
        run=run,
        data_access=Rows([_data_access(e) for e in reads], reads_total),
        approvals=[_run_approval(e, step_keys, people) for e in approval_events],
        trail=Rows(
            [
                TrailEvent(
                    seq=e.seq,
                    at=e.created_at,
                    who=e.actor_label,
                    who_type=e.get_actor_type_display(),
                    action=e.action,
                    step_id=e.step_id,
                    reason=_reason(e),
                    hash=e.hash,
                )
                for e in trail
            ],
            trail_total,
        ),
        step_keys=step_keys,
    )


def _run_approval(event: AuditEvent, step_keys: dict[int, str], people: dict) -> dict[str, Any]:
    data = event.data or {}
    what = event.action.removeprefix("approval.").replace("_", " ")
    details = []
    if event.action == "approval.requested":
        needs = data.get("required_approvals")
        details.append(f"needs {needs} approval{'s' if needs != 1 else ''}")
        if data.get("groups"):
            details.append(f"from groups {_show(data['groups'])}")
        if data.get("round") and data["round"] > 1:
            details.append(f"round {data['round']}")
        if data.get("due_at"):
            details.append(f"due {stamp(data['due_at'])}")
    elif event.action == "approval.decided":
        what = VERDICTS.get(data.get("verdict"), str(data.get("verdict", "decided")))
        if data.get("on_behalf_of"):
            details.append(f"for {people.get(int(data['on_behalf_of']), 'a delegator')}")
        if data.get("diff"):
            details.append(str(data["diff"]))
        if data.get("dismissed"):
            details.append(f"dismissed earlier approvals: {_show(data['dismissed'])}")
        if data.get("via") and data["via"] != "admin":
            details.append(f"via {data['via']}")
    elif data.get("diff"):
        details.append(str(data["diff"]))
    return {
        "seq": event.seq,
        "at": event.created_at,
        "step": step_keys.get(event.step_id, "—"),
        "request": event.object_id,
        "what": what,
        "who": event.actor_label,
        "version": data.get("version"),
        "comment": _reason(event),
        "details": details,
    }


def tenant_report(*, tenant, period: Period) -> TenantReport:
    """A tenant's period: its runs, the decisions taken, data access by AI employee and data
    kind, and the changes to roles and policies."""
    return TenantReport(
        tenant=tenant,
        period=period,
        runs=run_records().runs(
            tenant_id=tenant.pk, start=period.start, end=period.end, limit=SECTION_CAP
        ),
        approvals=approvals_in(tenant_id=tenant.pk, period=period),
        data_access=data_access_summary(tenant_id=tenant.pk, period=period),
        changes=changes_in(tenant_id=tenant.pk, period=period),
    )
