"""The runtime: lease a run's next step, execute it outside any transaction, checkpoint
its result with its audit events in one transaction, and go on until a gate, the end or
an error. The database is the truth; django-q2 only rings the doorbell (desk.tasks).

Lock order is always Run, then StepRun, everywhere (here, desk.services, approvals).
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from audit.services import Actor, record
from desk import services
from desk.gates import GateRule, get_gate
from desk.models import OutboxMessage, Run, StepRun
from desk.providers import ModelRequest, ProviderError, get_provider
from desk.tools import ToolContext, ToolRefused, get_tool
from roles.workflow import RenderError, render_text, render_value
from tenants import rls

logger = logging.getLogger(__name__)


def new_lease_owner() -> str:
    """host:pid of this process (read now, not at import: django-q2 forks its workers after
    Django has imported this module) and a token that makes every lease unique, so a late
    result from an expired lease can never pass for the current one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


MAX_STEPS_PER_TASK = 100


@dataclass
class Lease:
    run: Run
    step: StepRun
    definition: dict[str, Any]
    step_def: dict[str, Any]
    context: dict[str, Any]
    owner: str
    attempt: int
    gated: Any = None  # GateRule when the step's result must be reviewed before it counts
    # Set when the step was executed and checkpointed inside the leasing transaction (quick
    # database tools): True when the run may go on, False when it stopped.
    settled: bool | None = None


@dataclass
class Outcome:
    output: dict[str, Any] | None = None
    error: str = ""
    error_code: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_ctx: ToolContext | None = None
    refused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


def ai_actor(run: Run) -> Actor:
    return Actor.for_ai(
        role_version_id=run.role_version_id,
        label=f"{run.role.slug} v{run.role_version.number}",
    )


def step_definition(run: Run, step: StepRun) -> dict[str, Any]:
    return run.role_version.definition["steps"][step.index]


def build_context(run: Run, steps: list[StepRun]) -> dict[str, Any]:
    """What templates may refer to: the input, earlier outputs, the tenant and role."""
    return {
        "input": run.input,
        "steps": {s.key: s.output for s in steps if s.status == StepRun.Status.COMPLETED},
        "tenant": {"slug": run.tenant.slug, "name": run.tenant.name},
        "role": {"slug": run.role.slug, "name": run.role.name},
        "run": {"id": run.pk},
    }


def max_attempts(step_def: dict[str, Any], definition: dict[str, Any]) -> int:
    return int(step_def.get("max_attempts", settings.DESK_STEP_MAX_ATTEMPTS))


# --- leasing -----------------------------------------------------------------------------


def _finish_run(run: Run, status: str, *, error: str = "", action: str) -> None:
    now = timezone.now()
    run.status = status
    run.finished_at = now
    run.error = error
    run.save(update_fields=["status", "finished_at", "error", "updated_at"])
    record(
        tenant=run.tenant_id,
        actor=Actor.system("engine"),
        action=action,
        obj=run,
        run_id=run.pk,
        data={"status": status, "error": error} if error else {"status": status},
    )
    services.admit_runs(tenant_id=run.tenant_id)  # after the audit write: see lock_chain


def _park(run: Run, step: StepRun, *, rule, proposal: dict[str, Any]) -> None:
    step.status = StepRun.Status.WAITING_APPROVAL
    step.lease_owner = ""
    step.lease_expires_at = None
    step.save(update_fields=["status", "lease_owner", "lease_expires_at", "output", "rendered"])
    run.status = Run.Status.WAITING_APPROVAL
    run.save(update_fields=["status", "updated_at"])
    get_gate().open_request(run=run, step=step, proposal=proposal, rule=rule)
    services.admit_runs(tenant_id=run.tenant_id)  # a parked run frees its slot


def _fail_step(run: Run, step: StepRun, *, error: str, actor: Actor) -> None:
    step.status = StepRun.Status.FAILED
    step.error = error
    step.lease_owner = ""
    step.lease_expires_at = None
    step.finished_at = timezone.now()
    step.save(update_fields=["status", "error", "lease_owner", "lease_expires_at", "finished_at"])
    record(
        tenant=run.tenant_id,
        actor=actor,
        action="step.failed",
        obj=step,
        run_id=run.pk,
        step_id=step.pk,
        data={"key": step.key, "attempts": step.attempts, "error": error},
    )
    run.steps.filter(status=StepRun.Status.PENDING).update(status=StepRun.Status.CANCELLED)
    _finish_run(
        run, Run.Status.FAILED, error=f"Step '{step.key}' failed: {error}", action="run.failed"
    )
    get_gate().open_escalation(run=run, step=step, reason=f"Step '{step.key}' failed: {error}")


def _is_covered(step_def: dict[str, Any], steps: list[StepRun]) -> bool:
    """A step whose `covered_by` step was approved by people needs no second review."""
    covered_by = step_def.get("covered_by")
    if not covered_by:
        return False
    return any(s.key == covered_by and s.approved_payload is not None for s in steps)


def lease_next_step(
    *, run_id: int, owner: str | None = None, tenant_id: int | None = None
) -> Lease | None:
    """Take the run's next step for execution, or settle the run (done, parked, failed).

    Returns None when there is nothing to execute now.
    """
    if tenant_id is None:
        tenant_id = rls.tenant_of("desk_run", run_id)
        if tenant_id is None:
            return None
    with rls.tenant_context(tenant_id):
        run = (
            Run.objects.select_for_update(of=("self",), no_key=True)
            .select_related("tenant", "role", "role_version")
            .filter(pk=run_id)
            .first()
        )
        if run is None or run.status != Run.Status.RUNNING:
            return None  # not admitted yet, parked, or over
        steps = list(run.steps.select_for_update(no_key=True).order_by("index"))
        step = next((s for s in steps if s.status != StepRun.Status.COMPLETED), None)
        if step is None:
            _finish_run(run, Run.Status.COMPLETED, action="run.completed")
            return None
        now = timezone.now()
        if step.status == StepRun.Status.WAITING_APPROVAL:
            return None
        if (
            step.status == StepRun.Status.RUNNING
            and step.lease_expires_at
            and step.lease_expires_at > now
        ):
            return None  # another worker holds it
        if step.status in (StepRun.Status.FAILED, StepRun.Status.CANCELLED):
            return None
        definition = run.role_version.definition
        step_def = step_definition(run, step)
        if step.attempts >= max_attempts(step_def, definition):
            _fail_step(
                run,
                step,
                error=step.error or f"gave up after {step.attempts} attempts",
                actor=Actor.system("engine"),
            )
            return None
        context = build_context(run, steps)
        gate = get_gate()
        rule = None
        if step.approved_payload is None and not _is_covered(step_def, steps):
            rule = gate.rule_for(run=run, step=step)
            if rule is None and step.kind == "review":
                # An explicit checkpoint always waits for a person, policy or not.
                rule = GateRule(
                    required_approvals=1,
                    due_minutes=int(step_def.get("due_minutes", 240)),
                    on_timeout="remind",
                )
        try:
            if step.kind == "tool":
                args = (
                    step.approved_payload
                    if step.approved_payload is not None
                    else render_value(step_def.get("args", {}), context)
                )
                step.rendered = {"tool": step_def["tool"], "args": args}
            elif step.kind == "llm":
                prompt = render_text(step_def["prompt"], context)
                if step.feedback:
                    previous = step.rendered.get("previous_output")
                    prompt += f"\n\nFeedback: {step.feedback}"
                    if previous:
                        prompt += f"\nPrevious draft: {previous}"
                step.rendered = {
                    "prompt": prompt,
                    "system": render_text(definition.get("system", ""), context),
                    "output_schema": step_def["output_schema"],
                }
            else:
                step.rendered = {
                    "instructions": render_text(step_def.get("instructions", ""), context),
                    "outputs": context["steps"],
                }
        except RenderError as exc:
            step.attempts += 1
            _fail_step(run, step, error=f"template error: {exc}", actor=Actor.system("engine"))
            return None
        if step.kind == "llm" and services.over_budget(run.tenant, now=now):
            services.hold_for_budget(run=run, step=step)
            return None
        if rule is not None and step.kind in ("tool", "review"):
            # Gate before any side effect: the exact call (or the work so far) is proposed.
            _park(run, step, rule=rule, proposal=step.rendered)
            return None
        step.status = StepRun.Status.RUNNING
        step.attempts += 1
        owner = owner or new_lease_owner()
        step.lease_owner = owner
        step.lease_expires_at = now + timedelta(seconds=settings.DESK_STEP_LEASE_SECONDS)
        step.started_at = step.started_at or now
        lease = Lease(
            run=run,
            step=step,
            definition=definition,
            step_def=step_def,
            context=context,
            owner=owner,
            attempt=step.attempts,
            gated=rule,
        )
        if step.kind == "tool" and get_tool(step.rendered["tool"]).runs_inline:
            # A quick database tool runs right here: lease, effect and checkpoint commit
            # together (one commit per step), and a crash rolls all three back.
            lease.settled = _settle(run, step, lease, execute(lease))
            return lease
        step.save(
            update_fields=[
                "status",
                "attempts",
                "lease_owner",
                "lease_expires_at",
                "started_at",
                "rendered",
            ]
        )
        return lease


# --- execution (no transaction open) --------------------------------------------------------


def model_request(lease: Lease) -> ModelRequest:
    model = lease.definition.get("model", {})
    return ModelRequest(
        prompt=lease.step.rendered["prompt"],
        system=lease.step.rendered.get("system", ""),
        output_schema=lease.step_def["output_schema"],
        model=model.get("name", "offline-1"),
        temperature=float(model.get("temperature", 0)),
        max_tokens=int(model.get("max_tokens", 1024)),
        timeout_seconds=float(model.get("timeout_seconds", 30)),
        max_attempts=int(model.get("max_attempts", 3)),
    )


def execute(lease: Lease) -> Outcome:
    """Run the leased step's model call or tool; never raises."""
    step = lease.step
    try:
        if step.kind == "llm":
            response = get_provider().complete(model_request(lease))
            return Outcome(
                output=response.output,
                model=response.model,
                prompt_tokens=response.prompt_tokens,
                completion_tokens=response.completion_tokens,
            )
        return execute_tool(lease)
    except ProviderError as exc:
        return Outcome(error=str(exc), error_code=exc.code)
    except Exception as exc:  # a bug or an outage must fail the step, not lose it
        logger.exception("step %s of run %s crashed", step.pk, lease.run.pk)
        return Outcome(
            error=f"{type(exc).__name__}: {exc}",
            error_code="crash",
            extra={"traceback": traceback.format_exc(limit=5)},
        )


def execute_tool(lease: Lease) -> Outcome:
    run, step = lease.run, lease.step
    name = step.rendered["tool"]
    ctx = ToolContext(
        tenant=run.tenant,
        run_id=run.pk,
        step_id=step.pk,
        idempotency_key=step.idempotency_key,
        allowed_data_kinds=list(run.role.allowed_data_kinds or []),
    )
    allowed_tools = run.role.allowed_tools or []
    try:
        if allowed_tools and name not in allowed_tools:
            raise ToolRefused(f"This role may not use the tool '{name}'.", data={"tool": name})
        # A short read-only transaction scoped to the run's tenant: beneath the tool's own
        # filters, row-level security keeps every other tenant's rows out of reach.
        with rls.tenant_context(run.tenant_id):
            output = get_tool(name).run(step.rendered["args"], ctx)
    except ToolRefused as exc:
        return Outcome(
            error=str(exc), error_code="refused", tool_ctx=ctx, refused=True, extra=exc.data
        )
    return Outcome(output=output, tool_ctx=ctx)


# --- checkpoint ----------------------------------------------------------------------------


def _audit_tool_effects(
    run: Run, step: StepRun, ctx: ToolContext, actor: Actor, reason: str
) -> None:
    for read in ctx.reads:
        record(
            tenant=run.tenant_id,
            actor=actor,
            action="data.read",
            obj=step,
            run_id=run.pk,
            step_id=step.pk,
            reason=reason,
            data={
                "tool": step.rendered.get("tool"),
                "kind": read.kind,
                "references": read.references,
                "query": read.query,
            },
        )
    for refusal in ctx.refusals:
        record(
            tenant=run.tenant_id,
            actor=actor,
            action="data.refused",
            obj=step,
            run_id=run.pk,
            step_id=step.pk,
            reason=reason,
            data=refusal,
        )


def _write_outbox(run: Run, step: StepRun, ctx: ToolContext, actor: Actor) -> list[int]:
    ids = []
    for index, intent in enumerate(ctx.outbox):
        key = step.idempotency_key if index == 0 else f"{step.idempotency_key}:{index}"
        message, created = OutboxMessage.objects.get_or_create(
            idempotency_key=key,
            defaults={
                "tenant_id": run.tenant_id,
                "run": run,
                "step": step,
                "channel": intent.channel,
                "payload": intent.payload,
            },
        )
        if created:
            record(
                tenant=run.tenant_id,
                actor=actor,
                action="outbox.queued",
                obj=message,
                run_id=run.pk,
                step_id=step.pk,
                data={"channel": intent.channel, "to": intent.payload.get("to", "")},
            )
        if message.status == OutboxMessage.Status.PENDING:
            ids.append(message.pk)
    return ids


def checkpoint(lease: Lease, outcome: Outcome) -> bool:
    """Save the step's result and its audit events in one transaction.

    Returns True when the run may go on with its next step now.
    """
    with rls.tenant_context(lease.run.tenant_id):
        run = (
            Run.objects.select_for_update(of=("self",), no_key=True)
            .select_related("tenant", "role", "role_version")
            .get(pk=lease.run.pk)
        )
        step = StepRun.objects.select_for_update(no_key=True).get(pk=lease.step.pk)
        if (
            step.status != StepRun.Status.RUNNING
            or step.lease_owner != lease.owner
            or step.attempts != lease.attempt
        ):
            logger.warning("step %s: lease lost before checkpoint; result discarded", step.pk)
            return False
        return _settle(run, step, lease, outcome)


# Everything leasing and settling change on a step: an inline step is saved only here.
STEP_STATE_FIELDS = [
    "status",
    "attempts",
    "lease_owner",
    "lease_expires_at",
    "started_at",
    "finished_at",
    "rendered",
    "output",
    "error",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost",
]


def _settle(run: Run, step: StepRun, lease: Lease, outcome: Outcome) -> bool:
    """Write a leased step's outcome (inside the caller's transaction, rows locked)."""
    from desk.tasks import enqueue_outbox_delivery

    actor = ai_actor(run)
    reason = lease.step_def.get("reason", "")
    if outcome.tool_ctx is not None:
        _audit_tool_effects(run, step, outcome.tool_ctx, actor, reason)
    step.model = outcome.model
    step.prompt_tokens += outcome.prompt_tokens
    step.completion_tokens += outcome.completion_tokens
    if outcome.prompt_tokens or outcome.completion_tokens:
        cost = services.record_usage(
            run=run,
            model=outcome.model,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
        )
        step.cost += cost
    if not outcome.ok:
        step.error = outcome.error
        record(
            tenant=run.tenant_id,
            actor=actor,
            action="tool.refused" if outcome.refused else "step.error",
            obj=step,
            run_id=run.pk,
            step_id=step.pk,
            reason=reason,
            data={
                "key": step.key,
                "attempt": step.attempts,
                "error": outcome.error,
                "code": outcome.error_code,
                **outcome.extra,
            },
        )
        if outcome.refused or step.attempts >= max_attempts(lease.step_def, lease.definition):
            step.save(update_fields=STEP_STATE_FIELDS)
            _fail_step(run, step, error=outcome.error, actor=actor)
            return False
        step.status = StepRun.Status.READY
        step.lease_owner = ""
        step.lease_expires_at = None
        step.save(update_fields=STEP_STATE_FIELDS)
        return True
    step.output = outcome.output
    step.error = ""
    if lease.gated is not None:
        # A draft is reviewed before anything uses it.
        step.save(update_fields=STEP_STATE_FIELDS)
        record(
            tenant=run.tenant_id,
            actor=actor,
            action="step.proposed",
            obj=step,
            run_id=run.pk,
            step_id=step.pk,
            reason=reason,
            data={"key": step.key, "model": outcome.model},
        )
        _park(run, step, rule=lease.gated, proposal={"draft": outcome.output})
        return False
    step.status = StepRun.Status.COMPLETED
    step.finished_at = timezone.now()
    step.lease_owner = ""
    step.lease_expires_at = None
    step.save(update_fields=STEP_STATE_FIELDS)
    outbox_ids = _write_outbox(run, step, outcome.tool_ctx, actor) if outcome.tool_ctx else []
    record(
        tenant=run.tenant_id,
        actor=actor,
        action="step.completed",
        obj=step,
        run_id=run.pk,
        step_id=step.pk,
        reason=reason,
        data={
            "key": step.key,
            "kind": step.kind,
            "attempt": step.attempts,
            "model": outcome.model,
            "tokens": outcome.prompt_tokens + outcome.completion_tokens,
        },
    )
    run.save(update_fields=["updated_at"])
    for message_id in outbox_ids:
        enqueue_outbox_delivery(message_id)
    return True


def advance_run(*, run_id: int, owner: str | None = None) -> None:
    """Execute the run's steps back to back until a gate, the end or an error."""
    tenant_id = rls.tenant_of("desk_run", run_id)
    if tenant_id is None:
        return
    for _ in range(MAX_STEPS_PER_TASK):
        lease = lease_next_step(run_id=run_id, owner=owner, tenant_id=tenant_id)
        if lease is None:
            return
        settled = lease.settled if lease.settled is not None else checkpoint(lease, execute(lease))
        if not settled:
            return  # parked, failed, or the lease was lost to another worker
