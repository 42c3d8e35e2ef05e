"""Writes to runs, by topic: `runs` (start, admit, cancel, the moves every path shares),
`decisions` (what reviewers' verdicts do to a parked run), `usage` (tokens, cost, budgets,
prices, service levels), `outbox` (delivering side effects once) and `maintenance` (the
sweeps and the workers' heartbeats). The engine (desk.engine) executes steps; these
functions change state around it."""

from desk.selectors import SLA_AT_RISK_SHARE
from desk.services.decisions import (
    reject_parked_step,
    resume_approved_step,
    return_step_for_revision,
)
from desk.services.maintenance import (
    claim_sweep,
    escalate_service_levels,
    expire_leases,
    forget_worker,
    reap,
    record_cluster_restart,
    record_worker_heartbeat,
    run_due_sweeps,
    run_sweep,
    sweep_specs,
)
from desk.services.outbox import (
    deliver_due_outbox,
    deliver_outbox_message,
    settle_outbox_message,
)
from desk.services.runs import (
    RunError,
    admit_runs,
    cancel_run,
    fail_step,
    finish_run,
    lock_run,
    park_step,
    ready_next_step,
    start_run,
    start_run_once,
)
from desk.services.takeover import output_errors, retry_failed_step, take_over_step
from desk.services.usage import (
    escalate_missed_service_level,
    hold_for_budget,
    lift_budget,
    month_start,
    over_budget,
    record_usage,
    set_model_price,
    sla_state,
)

__all__ = [
    "SLA_AT_RISK_SHARE",
    "RunError",
    "admit_runs",
    "cancel_run",
    "claim_sweep",
    "deliver_due_outbox",
    "deliver_outbox_message",
    "escalate_missed_service_level",
    "escalate_service_levels",
    "expire_leases",
    "fail_step",
    "finish_run",
    "forget_worker",
    "hold_for_budget",
    "lift_budget",
    "lock_run",
    "month_start",
    "output_errors",
    "over_budget",
    "park_step",
    "ready_next_step",
    "reap",
    "record_cluster_restart",
    "record_usage",
    "record_worker_heartbeat",
    "reject_parked_step",
    "resume_approved_step",
    "retry_failed_step",
    "return_step_for_revision",
    "run_due_sweeps",
    "run_sweep",
    "set_model_price",
    "settle_outbox_message",
    "sla_state",
    "start_run",
    "start_run_once",
    "sweep_specs",
    "take_over_step",
]
