"""What reviewers' decisions do to a parked run (called inside approvals.services.decide and
the overdue-approvals sweep, which lock the run and its steps first)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from audit.services import Actor, record
from desk import doorbell
from desk.models import Run, StepRun
from desk.services.runs import RunError, admit_runs, lock_run, ready_next_step


def _locked_parked_step(step: StepRun) -> tuple[Run, list[StepRun], StepRun]:
    run, steps = lock_run(step.run_id)
    step = next(s for s in steps if s.pk == step.pk)
    if not (step.status == StepRun.Status.WAITING_APPROVAL and run.can_resume()):
        raise RunError("not_waiting", "This step is no longer waiting for approval.")
    return run, steps, step


def resume_approved_step(*, step: StepRun, payload: dict[str, Any], actor: Actor) -> Run:
    """Let a parked step go on with what reviewers approved, and wake the run."""
    run, steps, step = _locked_parked_step(step)
    run.move("resume")
    run.save(update_fields=["status", "updated_at"])
    if step.kind == "tool":
        # Exactly the approved arguments run next, not a fresh rendering of the template.
        step.approved_payload = payload["args"]
        step.move("approve")
        step.ready_at = timezone.now()
        step.save(update_fields=["approved_payload", "status", "ready_at"])
    else:
        step.approved_payload = payload
        step.move("accept")
        if step.kind == "llm":
            step.output = payload["draft"]
        else:
            # A checkpoint's corrections are what the steps after it read.
            original = step.rendered.get("outputs") or {}
            corrected = {
                key: value
                for key, value in (payload.get("outputs") or {}).items()
                if original.get(key) != value
            }
            step.output = {"approved": True, **({"corrections": corrected} if corrected else {})}
        step.finished_at = timezone.now()
        step.save(update_fields=["approved_payload", "status", "output", "finished_at"])
    record(
        tenant=run.tenant_id,
        actor=actor,
        action="step.approved",
        obj=step,
        run_id=run.pk,
        step_id=step.pk,
        data={"key": step.key},
    )
    if step.kind != "tool" and ready_next_step(run, steps, step) is None:
        return run  # that was the last step: the run is complete
    doorbell.ring_run(run.pk, run.tenant_id)
    return run


def reject_parked_step(*, step: StepRun, actor: Actor, reason: str) -> Run:
    """End the run of a parked step as rejected."""
    run, _, step = _locked_parked_step(step)
    now = timezone.now()
    step.move("reject")
    step.error = f"Rejected: {reason}"
    step.finished_at = now
    step.save(update_fields=["status", "error", "finished_at"])
    run.steps.filter(index__gt=step.index).move("cancel")
    run.move("reject")
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
    run, _, step = _locked_parked_step(step)
    if step.kind != "llm":
        raise RunError("not_revisable", "Only a drafted step can be sent back for revision.")
    step.rendered = {**step.rendered, "previous_output": step.output}
    step.output = None
    step.feedback = feedback
    step.attempts = 0
    step.move("send_back")
    step.ready_at = timezone.now()
    step.save(update_fields=["rendered", "output", "feedback", "attempts", "status", "ready_at"])
    run.move("resume")
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
    doorbell.ring_run(run.pk, run.tenant_id)
    return run
