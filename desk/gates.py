"""How the runtime asks people for approval and escalates, without importing `approvals`
(which depends on desk). settings.DESK_APPROVAL_GATE names the implementation."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class GateRule:
    required_approvals: int
    due_minutes: int
    # The rest of the policy as the approvals app reads it back (groups, timeout ladder,
    # rounds, bulk); JSON, snapshotted on the request.
    details: dict[str, Any] = field(default_factory=dict)


class Gate(Protocol):
    def rule_for(self, *, run, step) -> GateRule | None:
        """The review rule for this step, or None when it may run on its own. Fails
        closed: a category without a policy is gated; a review step always is."""

    def approval_holds(self, *, run, step) -> bool:
        """Whether the approval `step` went ahead on still has a valid quorum now, checked
        at the moment of effect (a voter may have lost their authority since)."""

    def open_request(
        self, *, run, step, proposal: dict[str, Any], rule: GateRule, author=None
    ) -> None:
        """Write the approval request (inside the caller's transaction); a redraft of a
        draft sent back continues its rounds. `author`: the person who wrote the proposal
        (four eyes keeps them from approving it)."""

    def open_escalation(self, *, run, step, reason: str, kind: str = "step_failed") -> None:
        """Hand a problem to people (inside the caller's transaction)."""

    def cancel_open(self, *, run, reason: str) -> None:
        """Close any pending requests of a run that ended."""

    def resolve_escalations(self, *, run, step, kind: str, user, resolution: str) -> int:
        """Resolve the open escalations of this kind about a step that a person settled
        (inside the caller's transaction); return how many."""


@cache
def get_gate() -> Gate:
    return import_string(settings.DESK_APPROVAL_GATE)()
