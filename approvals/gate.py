"""The approvals side of desk.gates.Gate: policies decide, requests and escalations record."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from approvals.models import ApprovalPolicy, ApprovalRequest, Escalation, ReviewerGroup
from approvals.selectors import quorum_holds
from approvals.services import notify_reviewers_after_commit
from audit.services import Actor, record
from desk import events
from desk.gates import GateRule
from roles.workflow import CATEGORY_RANK, tool_category
from tenants import locking
from tenants.locking import Level, lock


def _details(policy: ApprovalPolicy | None, *, source: str) -> dict[str, Any]:
    if policy is None:
        fallback = settings.DESK_DEFAULT_APPROVAL
        return {
            "source": source,
            "groups": [],
            "remind_every_minutes": fallback["remind_every_minutes"],
            "max_reminders": fallback["max_reminders"],
            "escalate_to_group": None,
            "escalate_to_user": None,
            "final_action": ApprovalPolicy.FinalAction.HOLD,
            "max_rounds": fallback["max_rounds"],
            "allow_bulk": False,
            "email_links": False,
        }
    return {
        "source": source,
        "groups": sorted(policy.approver_groups.values_list("pk", flat=True)),
        "remind_every_minutes": policy.remind_every_minutes,
        "max_reminders": policy.max_reminders,
        "escalate_to_group": policy.escalate_to_group_id,
        "escalate_to_user": policy.escalate_to_user_id,
        "final_action": policy.final_action,
        "max_rounds": policy.max_rounds,
        "allow_bulk": policy.allow_bulk,
        "email_links": policy.email_links,
    }


def _rule(policy: ApprovalPolicy | None, *, source: str) -> GateRule:
    if policy is None:
        return GateRule(
            required_approvals=settings.DESK_DEFAULT_APPROVAL["required_approvals"],
            due_minutes=settings.DESK_DEFAULT_APPROVAL["due_minutes"],
            details=_details(None, source=source),
        )
    return GateRule(
        required_approvals=policy.required_approvals,
        due_minutes=policy.due_minutes,
        details=_details(policy, source=source),
    )


def _tighter(a: GateRule, b: GateRule) -> GateRule:
    """The stricter of two rules, field by field."""
    da, db = a.details, b.details
    return GateRule(
        required_approvals=max(a.required_approvals, b.required_approvals),
        due_minutes=min(a.due_minutes, b.due_minutes),
        details={
            **da,
            **{k: v for k, v in db.items() if v is not None},
            "source": f"{da['source']}+{db['source']}",
            "groups": sorted(set(da["groups"]) | set(db["groups"])),
            "max_reminders": min(da["max_reminders"], db["max_reminders"]),
            "remind_every_minutes": min(da["remind_every_minutes"], db["remind_every_minutes"]),
            "final_action": (
                ApprovalPolicy.FinalAction.REJECT
                if ApprovalPolicy.FinalAction.REJECT in (da["final_action"], db["final_action"])
                else ApprovalPolicy.FinalAction.HOLD
            ),
            "max_rounds": min(da["max_rounds"], db["max_rounds"]),
            "allow_bulk": da["allow_bulk"] and db["allow_bulk"],
            "email_links": da.get("email_links", False) and db.get("email_links", False),
        },
    )


def _own_rule(tenant_id: int, rule: dict[str, Any]) -> GateRule:
    """A role version's approval rule (roles.workflow) as a GateRule. Groups are named in
    the bundle; a name the tenant no longer has counts as a group nobody is in, so the step
    waits for a person and escalates (fail closed)."""
    fallback = settings.DESK_DEFAULT_APPROVAL
    names = rule.get("approver_groups", [])
    ids = dict(
        ReviewerGroup.objects.filter(tenant_id=tenant_id, name__in=names).values_list("name", "pk")
    )
    return GateRule(
        required_approvals=rule.get("required_approvals", 1),
        due_minutes=rule.get("due_minutes", fallback["due_minutes"]),
        details={
            **_details(None, source="role version"),
            "groups": sorted(ids.get(name, MISSING_GROUP) for name in names),
            "remind_every_minutes": rule.get(
                "remind_every_minutes", fallback["remind_every_minutes"]
            ),
            "max_reminders": rule.get("max_reminders", fallback["max_reminders"]),
            "final_action": rule.get("final_action", ApprovalPolicy.FinalAction.HOLD),
            "max_rounds": rule.get("max_rounds", fallback["max_rounds"]),
            "allow_bulk": rule.get("allow_bulk", False),
            "email_links": rule.get("email_links", False),
        },
    )


# The id of a group a role's rule names but the tenant does not have: nobody is in it.
MISSING_GROUP = -1


def effective_rule(*, tenant_id: int, own_rules: list[dict], category: str) -> GateRule | None:
    """The rule for a category under a role version: the tenant-wide policy is the floor and
    the version's own rule (from its bundle) may only tighten it. No tenant-wide policy (or
    an unknown category) means gated, one approval, the default due time. None: the
    category runs on its own."""
    floor = ApprovalPolicy.objects.filter(tenant_id=tenant_id, category=category).first()
    if category not in CATEGORY_RANK or floor is None:
        rule = _rule(None, source="no policy")
    elif floor.mode == ApprovalPolicy.Mode.AUTO:
        rule = None
    else:
        rule = _rule(floor, source="tenant")
    own = next((r for r in own_rules if r.get("category") == category), None)
    if own is not None:
        own_rule = _own_rule(tenant_id, own)
        rule = own_rule if rule is None else _tighter(rule, own_rule)
    return rule


def step_rule(*, tenant_id: int, version, index: int) -> GateRule | None:
    """The review rule for step `index` of a role version, or None when it runs on its own
    (what the runtime asks at each step, and what a golden case counts as a gate hit)."""
    step = version.steps[index]
    own_rules = version.approval_rules
    rule = effective_rule(tenant_id=tenant_id, own_rules=own_rules, category=step["category"])
    if step["kind"] == "tool":
        # A tool's own category counts whatever the step is labelled (old versions
        # validated before tools declared one included).
        least = tool_category(step.get("tool", ""))
        if least != step["category"]:
            floor = effective_rule(tenant_id=tenant_id, own_rules=own_rules, category=least)
            if floor is not None:
                rule = floor if rule is None else _tighter(rule, floor)
    if rule is None and step["kind"] == "review":
        # An explicit checkpoint always waits for a person.
        rule = _rule(None, source="checkpoint")
    return rule


class ApprovalGate:
    def rule_for(self, *, run, step) -> GateRule | None:
        return step_rule(tenant_id=run.tenant_id, version=run.role_version, index=step.index)

    def approval_holds(self, *, run, step) -> bool:
        request = (
            ApprovalRequest.objects.filter(step=step, status=ApprovalRequest.Status.APPROVED)
            .select_related("tenant", "run__role_version", "run__api_key")
            .order_by("-created_at", "-pk")
            .first()
        )
        return request is not None and quorum_holds(request)

    def open_request(
        self, *, run, step, proposal: dict[str, Any], rule: GateRule, author=None
    ) -> None:
        previous = (
            ApprovalRequest.objects.filter(step=step, status=ApprovalRequest.Status.RETURNED)
            .order_by("-created_at", "-pk")
            .first()
        )
        due_at = timezone.now() + timedelta(minutes=rule.due_minutes)
        request = ApprovalRequest.objects.create(
            tenant_id=run.tenant_id,
            run=run,
            step=step,
            category=step.category,
            proposal=proposal,
            required_approvals=rule.required_approvals,
            rule=rule.details,
            round=previous.round + 1 if previous else 1,
            previous=previous,
            due_at=due_at,
            next_action_at=due_at,
            assignee_id=previous.assignee_id if previous else None,
            proposal_author=author,
            assigned_group_id=previous.assigned_group_id if previous else None,
        )
        record(
            tenant=run.tenant_id,
            actor=Actor.system("engine"),
            action="approval.requested",
            obj=request,
            run_id=run.pk,
            step_id=step.pk,
            data={
                "key": step.key,
                "category": step.category,
                "required_approvals": rule.required_approvals,
                "groups": rule.details.get("groups", []),
                "policy": rule.details.get("source", ""),
                "round": request.round,
                "version": request.version,
                "due_at": request.due_at,
            },
        )
        events.publish(
            run=run,
            step=step,
            event_type="approval.requested",
            data={
                "approval_request_id": request.pk,
                "category": step.category,
                "required_approvals": rule.required_approvals,
                "due_at": request.due_at,
            },
        )
        notify_reviewers_after_commit(request)

    def open_escalation(self, *, run, step, reason: str, kind: str = "step_failed") -> None:
        escalation = Escalation.objects.create(
            tenant_id=run.tenant_id, run=run, step=step, reason=reason, kind=kind
        )
        record(
            tenant=run.tenant_id,
            actor=Actor.system("engine"),
            action="escalation.opened",
            obj=escalation,
            run_id=run.pk,
            step_id=step.pk if step else None,
            reason=reason,
            data={"kind": kind},
        )
        events.publish(
            run=run,
            step=step,
            event_type="escalation.opened",
            data={"escalation_id": escalation.pk, "kind": kind, "reason": reason},
        )

    def cancel_open(self, *, run, reason: str) -> None:
        locking.note(locking.Level.APPROVAL)  # the UPDATE locks the requests it closes
        ApprovalRequest.objects.filter(run=run, status=ApprovalRequest.Status.PENDING).update(
            status=ApprovalRequest.Status.CANCELLED, decided_at=timezone.now()
        )

    def resolve_escalations(self, *, run, step, kind: str, user, resolution: str) -> int:
        escalations = list(
            lock(
                Escalation.objects.filter(
                    run=run, step=step, kind=kind, status=Escalation.Status.OPEN
                ),
                Level.ROW,
                skip_locked=True,
            )
        )
        now = timezone.now()
        for escalation in escalations:
            escalation.status = Escalation.Status.RESOLVED
            escalation.outcome = Escalation.Outcome.RESOLVED
            escalation.resolved_at = now
            escalation.resolved_by = user
            escalation.resolution = resolution
            escalation.save(
                update_fields=["status", "outcome", "resolved_at", "resolved_by", "resolution"]
            )
            record(
                tenant=run.tenant_id,
                actor=Actor.for_user(user) if user else Actor.system("outbox"),
                action="escalation.resolved",
                obj=escalation,
                run_id=run.pk,
                reason=resolution,
            )
        return len(escalations)
