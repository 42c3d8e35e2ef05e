"""What a person does about a failed step (from its escalation): run it again, or take it
over by providing its output. Called inside approvals' escalation service, which has locked
the escalation; these lock the run and its steps next (the lock order)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from audit.services import Actor, record
from desk.gates import get_gate
from desk.models import Run, StepRun
from desk.services.runs import RunError, admit_runs, lock_run, ready_next_step
from roles.workflow import schema_errors
from tenants import safe_json


def _failed_step(run_id: int, step_id: int) -> tuple[Run, list[StepRun], StepRun]:
    run, steps = lock_run(run_id)
    step = next((s for s in steps if s.pk == step_id), None)
    if run is None or step is None:
        raise RunError("not_found", "This run or step no longer exists.")
    if not (run.status == Run.Status.FAILED and step.status == StepRun.Status.FAILED):
        raise RunError(
            "not_failed", f"The run is {run.get_status_display().lower()}, not failed at this step."
        )
    return run, steps, step


def _restore_later(run: Run, step: StepRun) -> None:
    run.steps.filter(index__gt=step.index, status=StepRun.Status.CANCELLED).move("restore")
    run.error = ""
    run.finished_at = None


def retry_failed_step(*, run_id: int, step_id: int, actor: Actor, reason: str) -> Run:
    """Run a failed step again with a fresh attempt budget; the run queues for a slot."""
    run, _, step = _failed_step(run_id, step_id)
    step.move("retry_failed")
    step.attempts = 0
    step.lost_leases = 0
    step.error = ""
    step.finished_at = None
    step.ready_at = timezone.now()
    step.save(
        update_fields=["status", "attempts", "lost_leases", "error", "finished_at", "ready_at"]
    )
    _restore_later(run, step)
    run.move("retry")
    run.save(update_fields=["status", "error", "finished_at", "updated_at"])
    record(
        tenant=run.tenant_id,
        actor=actor,
        action="step.retried",
        obj=step,
        run_id=run.pk,
        step_id=step.pk,
        reason=reason,
        data={"key": step.key},
    )
    admit_runs(tenant_id=run.tenant_id)
    return run


def output_errors(run: Run, step: StepRun, output: Any) -> list[dict[str, str]]:
    """How a person's output for `step` fails what the step must produce (empty: valid)."""
    if not isinstance(output, dict):
        return [{"field": "(root)", "message": "The output must be a JSON object."}]
    try:
        safe_json.check(output)
    except safe_json.UnsafeJSON as exc:
        return [exc.as_detail()]
    if step.kind == "llm":
        schema = run.role_version.definition["steps"][step.index]["output_schema"]
        return schema_errors(schema, output)
    return []


def take_over_step(
    *, run_id: int, step_id: int, output: dict[str, Any], actor: Actor, reason: str
) -> Run:
    """Let a person's output stand for a failed step. A draft whose category is gated goes
    to the reviewers first, with its author barred from approving it (four eyes); otherwise
    the run goes on from the next step.

    Raises RunError when the step is not failed or the output does not fit its schema.
    """
    run, steps, step = _failed_step(run_id, step_id)
    errors = output_errors(run, step, output)
    if errors:
        raise RunError(
            "invalid_output",
            "The output does not fit the step: "
            + "; ".join(f"{e['field']}: {e['message']}" for e in errors),
        )
    step.output = output
    step.error = ""
    rule = get_gate().rule_for(run=run, step=step) if step.kind == "llm" else None
    record(
        tenant=run.tenant_id,
        actor=actor,
        action="step.taken_over",
        obj=step,
        run_id=run.pk,
        step_id=step.pk,
        reason=reason,
        data={"key": step.key, "output": output, "provided_by": "person", "reviewed": bool(rule)},
    )
    _restore_later(run, step)
    if rule is not None:
        step.move("take_over_for_review")
        step.save(update_fields=["status", "output", "error"])
        run.move("reopen_for_review")
        run.save(update_fields=["status", "error", "finished_at", "updated_at"])
        get_gate().open_request(
            run=run, step=step, proposal={"draft": output}, rule=rule, author=actor.user
        )
        return run
    step.move("take_over")
    step.finished_at = timezone.now()
    step.save(update_fields=["status", "output", "error", "finished_at"])
    run.move("retry")
    run.save(update_fields=["status", "error", "finished_at", "updated_at"])
    # The steps after it wait again, the first one ready; once admitted, the run goes on
    # (or, after its last step, completes).
    steps = list(run.steps.order_by("index"))
    if any(s.index > step.index for s in steps):
        ready_next_step(run, steps, next(s for s in steps if s.pk == step.pk))
    admit_runs(tenant_id=run.tenant_id)
    return run
