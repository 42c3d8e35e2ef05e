"""Writes of the approvals app, by topic: `decisions` (decide, four eyes, versions),
`escalations` (what people do about them), `policies` (changes by a second operator),
`routing` (assignment, delegation, reviewer groups), `ladder` (the timeout sweep) and
`notifications` (e-mail to the people a request waits for)."""

from approvals.services.decisions import (
    active_delegators,
    close_request,
    decide,
    escalate_request,
)
from approvals.services.errors import DecisionError
from approvals.services.escalations import (
    APPROVAL_KINDS,
    OUTCOMES,
    outcomes_for,
    resolve_escalation,
)
from approvals.services.ladder import notify_lost, sweep_approvals
from approvals.services.notifications import notify_reviewers, notify_reviewers_after_commit
from approvals.services.policies import (
    POLICY_FIELDS,
    approve_policy_change,
    policy_values,
    propose_policy_change,
    reject_policy_change,
)
from approvals.services.routing import (
    assign_request,
    create_delegation,
    revoke_delegation,
    save_reviewer_group,
)

__all__ = [
    "APPROVAL_KINDS",
    "OUTCOMES",
    "POLICY_FIELDS",
    "DecisionError",
    "active_delegators",
    "approve_policy_change",
    "assign_request",
    "close_request",
    "create_delegation",
    "decide",
    "escalate_request",
    "notify_lost",
    "notify_reviewers",
    "notify_reviewers_after_commit",
    "outcomes_for",
    "policy_values",
    "propose_policy_change",
    "reject_policy_change",
    "resolve_escalation",
    "revoke_delegation",
    "save_reviewer_group",
    "sweep_approvals",
]
