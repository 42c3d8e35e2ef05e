"""Starting, admitting and cancelling runs, and the moves every path through a run shares:
ready the next step, park at a gate, fail a step, finish. Functions documented as "inside
the caller's transaction" expect the run and its steps locked (`lock_run`)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError
from django.db.models import F
from django.utils import timezone

from audit.services import Actor, lock_chain, record
from desk import doorbell, events, search
from desk.gates import GateRule, get_gate
from desk.models import Run, StepRun
from desk.selectors import sla_due_at
from roles.models import Role, RoleVersion
from roles.workflow import schema_errors
from tenants import locking, rls, safe_json
from tenants.locking import Level, lock
from tenants.models import ClientRecord, Tenant
from tenants.scoping import scope_to_tenant


@dataclass
class RunError(Exception):
    """A run could not be started or changed; nothing was written."""

    code: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self):
        return self.message


def lock_run(run_id: int, *, related: bool = False) -> tuple[Run | None, list[StepRun]]:
    """Lock a run, then its steps (in the lock order), inside the caller's transaction.

    Returns (None, []) when the run does not exist (or is not visible in this tenant context).
    """
    runs = Run.objects.filter(pk=run_id)
    if related:
        runs = runs.select_related("tenant", "role", "role_version")
    run = lock(runs, Level.RUN, of=("self",)).first()
    if run is None:
        return None, []
    return run, list(lock(run.steps.order_by("index"), Level.STEP))


def _pick_version(role: Role) -> RoleVersion:
    if role.canary_version_id and random.uniform(0, 100) < role.canary_percent:
        return role.canary_version
    return role.active_version


def _checked_start(*, tenant: Tenant, role: Role, input: Any) -> tuple[Role, RoleVersion]:
    """The role read afresh and the version a run would be pinned to, once the tenant, the
    role and the input allow a run. Raises RunError."""
    # Read the role afresh: the version to pin is the one active now, not when `role` was loaded.
    role = Role.objects.select_related("active_version", "canary_version").get(pk=role.pk)
    if role.tenant_id != tenant.pk:
        raise RunError("role_not_found", f"No role '{role.slug}' in tenant '{tenant.slug}'.")
    if not tenant.is_active:
        raise RunError("tenant_inactive", f"Tenant '{tenant.slug}' is suspended.")
    if role.active_version_id is None:
        raise RunError("no_active_version", f"Role '{role.slug}' has no published version yet.")
    if not isinstance(input, dict):
        raise RunError("invalid_input", "The input must be a JSON object.")
    try:
        safe_json.check(input)
    except safe_json.UnsafeJSON as exc:
        raise RunError(
            "invalid_input", f"The input is not safe JSON: {exc}", [exc.as_detail()]
        ) from None
    # The input must fit the version the run is pinned to (a canary may expect another).
    version = _pick_version(role)
    errors = schema_errors(version.input_schema, input)
    if errors:
        raise RunError("invalid_input", "The input does not match the role's input schema.", errors)
    return role, version


def _search_text(tenant: Tenant, role: Role, input: dict[str, Any], actor: Actor) -> str:
    """What the runs list's search finds the run by (desk.search), with the names of the
    tenant's clients whose e-mail the input holds."""
    return search.search_text(
        input=input,
        role_name=role.name,
        role_slug=role.slug,
        started_by=actor.label,
        clients=search.clients_named(scope_to_tenant(ClientRecord.objects.all(), tenant), input),
    )


def _create_run(
    *,
    tenant: Tenant,
    role: Role,
    version: RoleVersion,
    input: dict[str, Any],
    actor: Actor,
    via: str,
    idempotency_key: str,
    api_key,
) -> Run:
    try:
        with locking.atomic():
            # The service level counts from the run's creation: one clock reading for both.
            created_at = timezone.now()
            run = Run.objects.create(
                search_text=_search_text(tenant, role, input, actor),
                created_at=created_at,
                sla_due_at=sla_due_at(version, created_at=created_at),
                tenant=tenant,
                role=role,
                role_version=version,
                input=input,
                via=via,
                started_by=actor.user,
                started_by_label=actor.label,
                idempotency_key=idempotency_key,
                api_key=api_key,
            )
            StepRun.objects.bulk_create(
                StepRun(
                    run=run,
                    tenant=tenant,
                    index=index,
                    key=step["key"],
                    kind=step["kind"],
                    category=step["category"],
                    idempotency_key=f"run-{run.pk}-step-{step['key']}",
                )
                for index, step in enumerate(version.steps)
            )
            # Admission locks the queued runs and their first steps before the audit chain.
            if run.pk in admit_runs(tenant_id=tenant.pk):
                run.move("admit")
            record(
                tenant=tenant,
                actor=actor,
                action="run.started",
                obj=run,
                run_id=run.pk,
                data={"role": role.slug, "version": version.number, "via": via, "input": input},
            )
    except IntegrityError:
        if idempotency_key:
            raise RunError(
                "idempotency_conflict", "A run with this idempotency key already exists."
            ) from None
        raise
    return run


def start_run(
    *,
    tenant: Tenant,
    role: Role,
    input: dict[str, Any],
    actor: Actor,
    via: str,
    idempotency_key: str = "",
    api_key=None,
) -> Run:
    """Validate the input, pin the role's version and queue a run.

    The input must be a safe JSON object (tenants.safe_json) that fits the role's schema.
    Raises RunError (codes: tenant_inactive, role_not_found, no_active_version,
    invalid_input, idempotency_conflict).
    """
    role, version = _checked_start(tenant=tenant, role=role, input=input)
    return _create_run(
        tenant=tenant,
        role=role,
        version=version,
        input=input,
        actor=actor,
        via=via,
        idempotency_key=idempotency_key,
        api_key=api_key,
    )


def start_run_once(
    *,
    tenant: Tenant,
    role: Role,
    input: dict[str, Any],
    actor: Actor,
    via: str,
    idempotency_key: str = "",
    api_key=None,
) -> tuple[Run, bool]:
    """Start a run unless this idempotency key already started the same one.

    The input is validated first, as start_run does, whatever the key. Without a key
    (`""`) every call starts a new run. Returns (run, created). Raises RunError as
    start_run does, and with code idempotency_conflict when the key was used for a
    different role or input.
    """
    role, version = _checked_start(tenant=tenant, role=role, input=input)

    def create() -> Run:
        return _create_run(
            tenant=tenant,
            role=role,
            version=version,
            input=input,
            actor=actor,
            via=via,
            idempotency_key=idempotency_key,
            api_key=api_key,
        )

    if not idempotency_key:
        return create(), True

    def existing() -> Run | None:
        run = Run.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
        if run is not None and (run.role_id != role.pk or run.input != input):
            raise RunError(
                "idempotency_conflict",
                "This Idempotency-Key was already used with a different role or input.",
            )
        return run

    run = existing()
    if run is not None:
        return run, False
    try:
        return create(), True
    except RunError as exc:
        if exc.code != "idempotency_conflict":
            raise
        # Lost a race with the same key: the winner's run answers.
        return existing(), False


def admit_runs(*, tenant_id: int) -> list[int]:
    """Start queued runs of a tenant while it has free capacity: the run nearest its
    service-level deadline first, then the oldest.

    Parked runs hold no capacity; runs resumed after a decision go on without waiting.
    Admissions of one tenant are serialized by its audit chain lock, so that the count of
    running runs cannot change between counting and admitting. Returns the ids of the runs
    admitted (their doorbells ring after commit).
    """
    with locking.tracked(), rls.tenant_context(tenant_id):
        tenant = Tenant.objects.filter(pk=tenant_id).only("status", "max_concurrent_runs").first()
        if tenant is None or not tenant.is_active or tenant.max_concurrent_runs <= 0:
            return []
        queued = Run.objects.filter(tenant_id=tenant_id, status=Run.Status.QUEUED)
        candidates = list(
            lock(
                queued.order_by(F("sla_due_at").asc(nulls_last=True), "created_at", "pk"),
                Level.RUN,
                skip_locked=True,
            ).values_list("pk", flat=True)[: tenant.max_concurrent_runs]
        )
        if not candidates:
            return []
        list(lock(StepRun.objects.filter(run_id__in=candidates, index=0), Level.STEP))
        lock_chain(tenant_id)
        running = Run.objects.filter(tenant_id=tenant_id, status=Run.Status.RUNNING).count()
        admitted = candidates[: max(0, tenant.max_concurrent_runs - running)]
        if admitted:
            now = timezone.now()
            Run.objects.filter(pk__in=admitted).move("admit", started_at=now, updated_at=now)
            StepRun.objects.filter(run_id__in=admitted, index=0).move("ready", ready_at=now)
            doorbell.ring_runs([(run_id, tenant_id) for run_id in admitted])
    return admitted


def cancel_run(*, run: Run, actor: Actor, reason: str) -> Run:
    """Stop an open run; pending approvals are closed.

    Raises RunError (code run_closed) when the run has already ended.
    """
    with locking.atomic():
        run, _ = lock_run(run.pk)
        if not run.can_cancel():
            raise RunError("run_closed", f"The run is already {run.get_status_display().lower()}.")
        run.steps.move("cancel", lease_owner="", lease_expires_at=None)
        run.move("cancel")
        run.finished_at = timezone.now()
        run.error = reason
        run.save(update_fields=["status", "finished_at", "error", "updated_at"])
        get_gate().cancel_open(run=run, reason=reason)
        admit_runs(tenant_id=run.tenant_id)
        record(
            tenant=run.tenant_id,
            actor=actor,
            action="run.cancelled",
            obj=run,
            run_id=run.pk,
            reason=reason,
        )
    return run


# --- moves shared by the engine and the decisions (inside the caller's transaction) -------


def finish_run(run: Run, verb: str, *, action: str, error: str = "") -> None:
    """End the run (`complete` or `fail`), audit it and free its slot."""
    run.move(verb)
    run.finished_at = timezone.now()
    run.error = error
    run.save(update_fields=["status", "finished_at", "error", "updated_at"])
    record(
        tenant=run.tenant_id,
        actor=Actor.system("engine"),
        action=action,
        obj=run,
        run_id=run.pk,
        data={"status": run.status, "error": error} if error else {"status": run.status},
    )
    events.publish(run=run, step=None, event_type=action, data={"error": error} if error else {})
    admit_runs(tenant_id=run.tenant_id)


def ready_next_step(run: Run, steps: list[StepRun], done: StepRun) -> StepRun | None:
    """After `done` completed: make the run's next step ready, or complete the run.

    Returns the step made ready, or None when the run is complete.
    """
    later = [s for s in steps if s.index > done.index]
    if not later:
        finish_run(run, "complete", action="run.completed")
        return None
    step = later[0]
    step.move("ready")
    step.ready_at = timezone.now()
    step.save(update_fields=["status", "ready_at"])
    return step


def park_step(
    run: Run, step: StepRun, *, verb: str, rule: GateRule, proposal: dict[str, Any]
) -> None:
    """Stop the run at a gate (`propose` a draft, or `gate` a call before it runs) and open
    the approval request; a parked run frees its slot."""
    step.move(verb)
    step.lease_owner = ""
    step.lease_expires_at = None
    step.save(update_fields=["status", "lease_owner", "lease_expires_at", "output", "rendered"])
    run.move("park")
    run.save(update_fields=["status", "updated_at"])
    get_gate().open_request(run=run, step=step, proposal=proposal, rule=rule)
    admit_runs(tenant_id=run.tenant_id)


def fail_step(run: Run, step: StepRun, *, error: str, actor: Actor) -> None:
    """Fail the step and its run, cancel what would have come after, and escalate."""
    step.move("fail")
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
    run.steps.filter(index__gt=step.index).move("cancel")
    reason = f"Step '{step.key}' failed: {error}"
    finish_run(run, "fail", action="run.failed", error=reason)
    get_gate().open_escalation(run=run, step=step, reason=reason)
