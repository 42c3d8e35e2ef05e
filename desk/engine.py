"""A run's way through its steps: take the next step, settle each result with its audit
events in one transaction, and go on until a gate, the end, an error or a step that must
wait on a model or the network. The engine never waits on the network itself: desk.worker
executes leased steps and hands their outcome back to `checkpoint`.

Both entry points (`advance`, a run's first work in a worker task, and `checkpoint`, a
leased step's outcome) settle the quick steps that follow (database tools run inline) and
end by leasing the next step that must wait, in the same transaction: an autonomous step
costs one commit. Locks are taken in the order tenants.locking enforces.
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
from desk.providers import ModelRequest
from desk.tools import ToolContext, ToolRefused, get_tool
from roles.workflow import (
    RenderError,
    reads_records,
    render_text,
    render_value,
    target_refusal,
    tool_call_refusal,
)
from tenants import locking, rls
from tenants.locking import Level, lock

logger = logging.getLogger(__name__)

# Inline steps settled back to back in one transaction, at most (the run lock is held).
MAX_STEPS_PER_TRANSACTION = 20
# What a non-inline tool call may take, at most.
TOOL_DEADLINE_SECONDS = 120


def new_lease_owner() -> str:
    """host:pid of this process (read now, not at import: django-q2 forks its workers after
    Django has imported this module) and a token that makes every lease unique, so a late
    result from an expired lease can never pass for the current one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(eq=False)  # compared and hashed by identity: a worker keeps its leases in a set
class Lease:
    run: Run
    step: StepRun
    definition: dict[str, Any]
    step_def: dict[str, Any]
    context: dict[str, Any]
    owner: str
    attempt: int
    gated: GateRule | None = None  # set when the step's result must be reviewed to count
    inline: bool = False  # a quick database tool, executed inside the leasing transaction
    # Earlier steps whose records tool read the tenant's records: a target may read them.
    record_steps: set[str] = field(default_factory=set)

    @property
    def deadline_seconds(self) -> float:
        """How long executing this step may take before it counts as a failed attempt: every
        model attempt's timeout plus the longest backoffs between them, with some slack."""
        if self.step.kind != "llm":
            return TOOL_DEADLINE_SECONDS
        request = model_request(self)
        backoff = 32.0  # the provider's longest wait between attempts
        return (
            request.max_attempts * request.timeout_seconds
            + (request.max_attempts - 1) * backoff
            + 10
        )


@dataclass
class Progress:
    """What a transaction of the engine left to do: the step to execute outside it (if any),
    how many steps it settled, and the outbox messages it wrote (the worker delivers them
    once the transaction has committed; the reaper, if the worker dies first)."""

    lease: Lease | None = None
    settled: int = 0
    outbox: list[int] = field(default_factory=list)


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

    @classmethod
    def crashed(cls, exc: BaseException) -> Outcome:
        return cls(
            error=f"{type(exc).__name__}: {exc}",
            error_code="crash",
            extra={"traceback": traceback.format_exc(limit=5)},
        )


def ai_actor(run: Run) -> Actor:
    return Actor.for_ai(
        role_version_id=run.role_version_id,
        label=f"{run.role.slug} v{run.role_version.number}",
    )


def step_definition(run: Run, step: StepRun) -> dict[str, Any]:
    return run.role_version.definition["steps"][step.index]


def build_context(run: Run, steps: list[StepRun]) -> dict[str, Any]:
    """What templates may refer to: the input, earlier outputs, the tenant and role."""
    outputs: dict[str, Any] = {}
    for s in steps:
        if s.status != StepRun.Status.COMPLETED:
            continue
        outputs[s.key] = s.output
        if s.kind == "review" and isinstance(s.output, dict):
            # What a reviewer corrected at a checkpoint is what the steps after it read.
            outputs.update(s.output.get("corrections") or {})
    return template_context(
        input=run.input, outputs=outputs, tenant=run.tenant, role=run.role, run_id=run.pk
    )


def template_context(*, input, outputs: dict[str, Any], tenant, role, run_id) -> dict[str, Any]:
    """The context templates are rendered in, from its parts (pure: golden cases use it)."""
    return {
        "input": input,
        "steps": outputs,
        "tenant": {"slug": tenant.slug, "name": tenant.name},
        "role": {"slug": role.slug, "name": role.name},
        "run": {"id": run_id},
    }


def max_attempts(step_def: dict[str, Any]) -> int:
    return int(step_def.get("max_attempts", settings.DESK_STEP_MAX_ATTEMPTS))


def erred_attempts(step: StepRun) -> int:
    """Attempts that ended in an error (not those whose worker vanished)."""
    return step.attempts - step.lost_leases


def model_request(lease: Lease) -> ModelRequest:
    return model_request_for(
        definition=lease.definition, step_def=lease.step_def, rendered=lease.step.rendered
    )


def model_request_for(
    *, definition: dict[str, Any], step_def: dict[str, Any], rendered: dict[str, Any]
) -> ModelRequest:
    """The model call of a rendered llm step under a definition's model settings (pure)."""
    model = definition.get("model", {})
    return ModelRequest(
        prompt=rendered["prompt"],
        system=rendered.get("system", ""),
        output_schema=step_def["output_schema"],
        model=model.get("name", "offline-1"),
        temperature=float(model.get("temperature", 0)),
        max_tokens=int(model.get("max_tokens", 1024)),
        timeout_seconds=float(model.get("timeout_seconds", 30)),
        max_attempts=int(model.get("max_attempts", 3)),
    )


def _runs_inline(tool_name: str) -> bool:
    try:
        return get_tool(tool_name).runs_inline
    except ToolRefused:
        return True  # refused when executed, inline: the step fails in this transaction


# --- the two transactions ------------------------------------------------------------------


def advance(*, run_id: int, tenant_id: int, owner: str) -> Progress:
    """Settle the run's quick steps and lease its next waiting step, in one transaction.

    A run locked by another worker, not admitted, parked or over is left alone.
    """
    with locking.tracked(), rls.tenant_context(tenant_id):
        runs = Run.objects.filter(pk=run_id).select_related("tenant", "role", "role_version")
        run = lock(runs, Level.RUN, skip_locked=True, of=("self",)).first()
        if run is None or run.status != Run.Status.RUNNING:
            return Progress()
        steps = list(lock(run.steps.order_by("index"), Level.STEP))
        return _go_on(run, steps, owner=owner, progress=Progress())


def checkpoint(lease: Lease, outcome: Outcome, *, go_on: bool = True) -> Progress:
    """Save a leased step's outcome with its audit events, then (unless `go_on` is False)
    settle what follows and lease the next waiting step, in one transaction.

    A result whose lease was lost (expired and taken over) is discarded.
    """
    with locking.tracked(), rls.tenant_context(lease.run.tenant_id):
        run, steps = services.lock_run(lease.run.pk, related=True)
        step = next((s for s in steps if s.pk == lease.step.pk), None)
        if (
            step is None
            or step.status != StepRun.Status.RUNNING
            or step.lease_owner != lease.owner
            or step.attempts != lease.attempt
        ):
            logger.warning("step %s: lease lost before checkpoint; result discarded", lease.step.pk)
            return Progress()
        progress = Progress(settled=1)
        may_go_on = _settle(run, steps, step, lease, outcome, progress)
        if not (may_go_on and go_on):
            return progress
        return _go_on(run, steps, owner=lease.owner, progress=progress)


def renew_leases(*, leases: list[Lease]) -> int:
    """Extend the leases a live worker holds (one statement); return how many it still has."""
    if not leases:
        return 0
    until = timezone.now() + timedelta(seconds=settings.DESK_STEP_LEASE_SECONDS)
    with rls.tenant_context({lease.run.tenant_id for lease in leases}):
        return StepRun.objects.filter(
            status=StepRun.Status.RUNNING, lease_owner__in=[lease.owner for lease in leases]
        ).update(lease_expires_at=until)


# --- inside the transaction (run and steps locked) ------------------------------------------


def _go_on(run: Run, steps: list[StepRun], *, owner: str, progress: Progress) -> Progress:
    for _ in range(MAX_STEPS_PER_TRANSACTION):
        step = next((s for s in steps if s.status != StepRun.Status.COMPLETED), None)
        if step is None:
            services.finish_run(run, "complete", action="run.completed")
            return progress
        if step.status != StepRun.Status.READY:
            return progress  # parked, leased elsewhere, failed or cancelled
        lease = _lease(run, steps, step, owner)
        if lease is None:
            return progress
        if not lease.inline:
            progress.lease = lease
            return progress
        # A quick database tool runs right here: lease, effect and checkpoint commit
        # together, and a crash rolls all of them back.
        progress.settled += 1
        if not _settle(run, steps, step, lease, execute_tool(lease), progress):
            return progress
    return progress


def _approval_relied_on(steps: list[StepRun], step: StepRun, step_def) -> StepRun | None:
    """The step whose approval lets `step` go ahead: itself, or the step covering it."""
    if step.approved_payload is not None:
        return step
    covered_by = step_def.get("covered_by")
    return next((s for s in steps if s.key == covered_by and s.approved_payload is not None), None)


def _gate_rule(run: Run, steps: list[StepRun], step: StepRun, step_def) -> GateRule | None:
    """The rule `step` must wait under, or None when it may go ahead now. An approval it
    relies on is checked again at this moment: one whose quorum no longer holds (a voter is
    no longer a reviewer) gates the step again."""
    gate = get_gate()
    approved = _approval_relied_on(steps, step, step_def)
    if approved is None:
        return gate.rule_for(run=run, step=step)
    if gate.approval_holds(run=run, step=approved):
        return None
    record(
        tenant=run.tenant_id,
        actor=Actor.system("engine"),
        action="approval.no_longer_holds",
        obj=step,
        run_id=run.pk,
        step_id=step.pk,
        reason="An approval this step relied on lost its quorum before the step ran.",
        data={"key": step.key, "approved_step": approved.key},
    )
    return gate.rule_for(run=run, step=step) or GateRule(
        required_approvals=1, due_minutes=240, details={"source": "approval lost"}
    )


def _render(step: StepRun, step_def, definition, context) -> dict[str, Any]:
    return render_step(
        step_def,
        definition,
        context,
        approved_payload=step.approved_payload,
        feedback=step.feedback,
        previous_output=step.rendered.get("previous_output"),
    )


def render_step(
    step_def: dict[str, Any],
    definition: dict[str, Any],
    context: dict[str, Any],
    *,
    approved_payload: Any = None,
    feedback: str = "",
    previous_output: Any = None,
) -> dict[str, Any]:
    """A step's rendered prompt, tool call or checkpoint (pure: golden cases use it).

    Raises RenderError when a template refers to something missing or forbidden.
    """
    kind = step_def["kind"]
    if kind == "tool":
        args = (
            approved_payload
            if approved_payload is not None
            else render_value(step_def.get("args", {}), context)
        )
        return {"tool": step_def["tool"], "args": args}
    if kind == "llm":
        prompt = render_text(step_def["prompt"], context)
        if feedback:
            prompt += f"\n\nFeedback: {feedback}"
            if previous_output:
                prompt += f"\nPrevious draft: {previous_output}"
        return {
            "prompt": prompt,
            "system": render_text(definition.get("system", ""), context),
            "output_schema": step_def["output_schema"],
        }
    return {
        "instructions": render_text(step_def.get("instructions", ""), context),
        "outputs": context["steps"],
    }


def _lease(run: Run, steps: list[StepRun], step: StepRun, owner: str) -> Lease | None:
    """Lease a ready step, or settle why it cannot run now (gate, budget, failure)."""
    definition = run.role_version.definition
    step_def = step_definition(run, step)
    if step.lost_leases >= settings.DESK_STEP_MAX_LOST_LEASES:
        error = f"its worker vanished {step.lost_leases} times (does the step kill it?)"
        services.fail_step(run, step, error=error, actor=Actor.system("engine"))
        return None
    if erred_attempts(step) >= max_attempts(step_def):
        error = step.error or f"gave up after {step.attempts} attempts"
        services.fail_step(run, step, error=error, actor=Actor.system("engine"))
        return None
    context = build_context(run, steps)
    rule = _gate_rule(run, steps, step, step_def)
    try:
        step.rendered = _render(step, step_def, definition, context)
    except RenderError as exc:
        step.attempts += 1
        step.save(update_fields=["attempts"])
        services.fail_step(run, step, error=f"template error: {exc}", actor=Actor.system("engine"))
        return None
    now = timezone.now()
    if step.kind == "llm" and services.over_budget(run.tenant, now=now):
        services.hold_for_budget(run=run, step=step)
        return None
    if rule is not None and step.kind in ("tool", "review"):
        # Gate before any side effect: the exact call (or the work so far) is proposed.
        services.park_step(run, step, verb="gate", rule=rule, proposal=step.rendered)
        return None
    step.move("lease")
    step.attempts += 1
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
        inline=step.kind == "tool" and _runs_inline(step.rendered["tool"]),
        record_steps=_record_steps(steps, step),
    )
    if not lease.inline:
        step.save(update_fields=LEASE_FIELDS)
    return lease


def _record_steps(steps: list[StepRun], step: StepRun) -> set[str]:
    """The completed steps before `step` that read records with a records tool, as they ran
    (their rows, not the bundle, say which tool they called)."""
    return {
        s.key
        for s in steps
        if s.index < step.index
        and s.status == StepRun.Status.COMPLETED
        and s.kind == "tool"
        and reads_records(s.rendered.get("tool", ""))
    }


LEASE_FIELDS = ["status", "attempts", "lease_owner", "lease_expires_at", "started_at", "rendered"]
# Everything leasing and settling change on a step: an inline step is saved only at settling.
STEP_STATE_FIELDS = [
    *LEASE_FIELDS,
    "ready_at",
    "finished_at",
    "output",
    "error",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost",
]


def execute_tool(lease: Lease) -> Outcome:
    """Run the leased step's tool; never raises."""
    run, step = lease.run, lease.step
    name = step.rendered["tool"]
    ctx = ToolContext(
        tenant=run.tenant,
        run_id=run.pk,
        step_id=step.pk,
        idempotency_key=step.idempotency_key,
        allowed_data_kinds=run.role_version.allowed_data_kinds,
    )
    try:
        # The pinned version decides: its allow-list (empty allows nothing), its pin of the
        # tool (code that drifted since is refused) and the argument schema it pinned.
        definition = run.role_version.definition
        args = step.rendered["args"]
        # A target (recipient, record reference) that read model output runs only with the
        # exact arguments a reviewer approved at this step.
        refusal = tool_call_refusal(definition, name, args) or target_refusal(
            definition,
            lease.step_def,
            args,
            record_steps=lease.record_steps,
            approved_here=step.approved_payload is not None,
        )
        if refusal:
            raise ToolRefused(refusal, data={"tool": name})
        # Beneath the tool's own filters, row-level security keeps every other tenant's rows
        # out of reach (a savepoint when the step runs inline).
        with rls.tenant_context(run.tenant_id):
            output = get_tool(name).run(step.rendered["args"], ctx)
    except ToolRefused as exc:
        return Outcome(
            error=str(exc), error_code="refused", tool_ctx=ctx, refused=True, extra=exc.data
        )
    except Exception as exc:  # a bug or an outage must fail the step, not lose it
        logger.exception("step %s of run %s crashed", step.pk, run.pk)
        return Outcome.crashed(exc)
    return Outcome(output=output, tool_ctx=ctx)


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


def _settle(
    run: Run, steps: list[StepRun], step: StepRun, lease: Lease, outcome: Outcome, progress
) -> bool:
    """Write a leased step's outcome. True when the run may go on now (its next step, or
    this one again, is ready)."""
    actor = ai_actor(run)
    reason = lease.step_def.get("reason", "")
    if outcome.tool_ctx is not None:
        _audit_tool_effects(run, step, outcome.tool_ctx, actor, reason)
    step.model = outcome.model
    step.prompt_tokens += outcome.prompt_tokens
    step.completion_tokens += outcome.completion_tokens
    if outcome.prompt_tokens or outcome.completion_tokens:
        step.cost += services.record_usage(
            run=run,
            model=outcome.model,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
        )
    step.lease_owner = ""
    step.lease_expires_at = None
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
        if outcome.refused or erred_attempts(step) >= max_attempts(lease.step_def):
            step.save(update_fields=STEP_STATE_FIELDS)
            services.fail_step(run, step, error=outcome.error, actor=actor)
            return False
        step.move("retry")
        step.ready_at = timezone.now()
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
        services.park_step(
            run, step, verb="propose", rule=lease.gated, proposal={"draft": outcome.output}
        )
        return False
    step.move("complete")
    step.finished_at = timezone.now()
    step.save(update_fields=STEP_STATE_FIELDS)
    if outcome.tool_ctx:
        progress.outbox += _write_outbox(run, step, outcome.tool_ctx, actor)
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
    return services.ready_next_step(run, steps, step) is not None
