"""Benchmark 6, chaos (not part of the quick run): SIGKILL any process of the worker again and
again during a 1,000-run load, then no more faults. Figures: runs lost, effects doubled,
the longest stall, and how long after the last fault processing resumed and everything
settled (aim: within 60 s).

The load is the demo intake coordinator (harbor-legal): classify, look up, draft (parks at
its gate), send (an e-mail through the outbox). The bench approves every parked draft as
reviewer.harbor (approvals.services.decide), so every run should end completed with exactly
one e-mail. It runs one `manage.py desk_worker` with production settings and, every
KILL_INTERVAL s, SIGKILLs a random process of it: a worker, the pusher, the monitor, the
sentinel (django-q2's scheduler lives there), the cluster's main process or the sweeper
(the reaper); every WHOLE_WORKER_EVERY-th kill takes the whole desk_worker down (a machine
lost, an OOM kill of the supervisor), and the bench starts it again at once, as systemd's
Restart=always would. Nothing runs the reaper for it: the worker's own sweeper does.

Run: .venv/bin/python bench/chaos.py [--runs 1000] [--kills 60] [--broker redis|orm]
(--quick: 300 runs, 20 kills, for a try-out; bench/run_all.py --quick leaves chaos out)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

REDIS_DB = 13
KILL_INTERVAL = 1.0  # seconds between kills
WHOLE_WORKER_EVERY = 10  # every n-th kill takes the whole desk_worker down
KINDS = ("worker", "pusher", "monitor", "sentinel", "cluster", "sweeper")
INTAKE_PER_ROUND = 20  # runs started per loop round (the loop paces itself at ~KILL_INTERVAL)
RECOVERY_TIMEOUT = 300  # seconds for the worker to settle everything after the chaos
INPUT = {
    "from_email": "maya.chen@example.com",
    "subject": "Lease question",
    "body": "Could we meet next week about the draft lease?",
}


def approve_pending(tenant, reviewer, limit: int = 200) -> int:
    from approvals.models import ApprovalRequest
    from approvals.services import DecisionError, decide

    pending = list(
        ApprovalRequest.objects.filter(tenant=tenant, status=ApprovalRequest.Status.PENDING)
        .order_by("created_at", "pk")
        .only("pk")[:limit]
    )
    decided = 0
    for request in pending:
        try:
            common.retry_deadlock(
                lambda request=request: decide(
                    request=request, reviewer=reviewer, verdict="approve"
                )
            )
            decided += 1
        except DecisionError:
            pass  # decided meanwhile, or its run was closed
    return decided


def real_kills(kills: Counter) -> int:
    return sum(n for kind, n in kills.items() if not kind.startswith("skipped"))


def kill_something(cluster: common.Cluster, n: int, kills: Counter) -> None:
    if n % WHOLE_WORKER_EVERY == 0:
        cluster.kill()
        cluster.start(probe=False)  # what systemd's Restart=always does
        kills["whole desk_worker"] += 1
        return
    roles = cluster.roles()
    kind = random.choice(KINDS)
    if not roles[kind]:
        kills[f"skipped ({kind} not up)"] += 1
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(random.choice(roles[kind]), signal.SIGKILL)
        kills[kind] += 1


def sent_mail_keys(maildir: Path) -> Counter[str]:
    keys: Counter[str] = Counter()
    if maildir.is_dir():
        for path in maildir.iterdir():
            keys.update(
                re.findall(r"^X-AgentDesk-Key: (\S+)", path.read_text(errors="replace"), re.M)
            )
    return keys


def stalls(db, tenant_id: int) -> tuple[float, float]:
    """(longest gap in one run's progress, longest time with no step finishing anywhere).

    A run's progress: its audit events in order, from its admission (waiting in the queue
    for a free slot of its tenant is not a stall); the wait for a reviewer
    (approval.requested -> approval.decided) is the bench's doing and not counted.
    """
    rows = db.query(
        "SELECT e.run_id, e.action, extract(epoch FROM e.created_at),"
        " extract(epoch FROM r.started_at) FROM audit_auditevent e"
        " JOIN desk_run r ON r.id = e.run_id"
        " WHERE e.tenant_id = %s AND e.run_id IS NOT NULL ORDER BY e.run_id, e.seq",
        [tenant_id],
    )
    longest_run = 0.0
    previous: tuple[int, str, float] | None = None
    for run_id, action, at, admitted in rows:
        at = float(at)
        if previous and previous[0] == run_id and previous[1] != "approval.requested":
            since = max(previous[2], float(admitted or previous[2]))
            longest_run = max(longest_run, at - since)
        previous = (run_id, action, at)
    finished = [
        float(t)
        for (t,) in db.query(
            "SELECT extract(epoch FROM finished_at) FROM desk_steprun"
            " WHERE tenant_id = %s AND finished_at IS NOT NULL ORDER BY 1",
            [tenant_id],
        )
    ]
    longest_global = max((b - a for a, b in itertools.pairwise(finished)), default=0)
    return longest_run, longest_global


def settled(db, tenant_id: int) -> tuple[int, int]:
    """(runs still open, outbox messages not settled) of the tenant."""
    open_runs = db.scalar(
        "SELECT count(*) FROM desk_run WHERE tenant_id = %s AND status IN"
        " ('queued', 'running', 'waiting_approval', 'on_hold')",
        [tenant_id],
    )
    unsent = db.scalar(
        "SELECT count(*) FROM desk_outboxmessage WHERE tenant_id = %s AND status IN"
        " ('pending', 'sending')",
        [tenant_id],
    )
    return int(open_runs), int(unsent)


def first_progress_after(db, tenant_id: int, when: float) -> float | None:
    """Seconds from `when` (epoch) to the first step finished after it."""
    first = db.scalar(
        "SELECT extract(epoch FROM min(finished_at)) FROM desk_steprun"
        " WHERE tenant_id = %s AND finished_at > to_timestamp(%s)",
        [tenant_id, when],
    )
    return None if first is None else float(first) - when


def body(args, report: common.Report) -> None:
    if args.quick:
        args.runs, args.kills = min(args.runs, 300), min(args.kills, 20)
    random.seed(args.seed)
    common.fresh_redis(REDIS_DB)
    with common.bench_database(args, "chaos") as db:
        common.setup_django(db, redis_db=REDIS_DB)
        from django.conf import settings
        from django.contrib.auth import get_user_model

        from desk.models import OutboxMessage, Run
        from roles.models import Role
        from tenants.models import Tenant

        tenant = Tenant.objects.get(slug="harbor-legal")
        common.set_capacity(tenant, 50)
        role = Role.objects.get(tenant=tenant, slug="intake-coordinator")
        reviewer = get_user_model().objects.get(username="reviewer.harbor")
        cluster = common.Cluster(db, broker=args.broker, redis_db=REDIS_DB, name="chaos")
        kills: Counter[str] = Counter()
        report.section(
            f"{args.broker.upper()} broker: {args.runs} runs, {args.kills} kills of any process "
            f"(every {KILL_INTERVAL:g} s; every {WHOLE_WORKER_EVERY}th the whole desk_worker)"
        )
        cluster.start()
        started = time.monotonic()
        run_ids: list[int] = []
        n = 0
        while len(run_ids) < args.runs or real_kills(kills) < args.kills:
            round_started = time.monotonic()
            if len(run_ids) < args.runs:
                batch = min(INTAKE_PER_ROUND, args.runs - len(run_ids))
                run_ids += common.start_runs(tenant, role, batch, input_=INPUT)
            approve_pending(tenant, reviewer)
            if real_kills(kills) < args.kills:
                n += 1
                kill_something(cluster, n, kills)
                last_fault = time.time()
            time.sleep(max(0.0, KILL_INTERVAL - (time.monotonic() - round_started)))
            if time.monotonic() - started > 900:
                raise common.BenchError("the chaos phase did not end within 900 s")
        chaos_seconds = time.monotonic() - started
        report.note(
            f"chaos: {dict(kills)} in {chaos_seconds:.0f} s while {len(run_ids)} runs were started"
        )

        # Recovery: nothing but approvals from here; the worker's sweeper does the rest.
        settle_seconds = None
        while time.time() - last_fault < RECOVERY_TIMEOUT:
            approve_pending(tenant, reviewer)
            if settled(db, tenant.pk) == (0, 0):
                settle_seconds = time.time() - last_fault
                break
            cluster.check_alive()
            time.sleep(0.5)
        resume_seconds = first_progress_after(db, tenant.pk, last_fault)
        common.note_problems(report, cluster, "chaos")
        cluster.stop()

        statuses = common.run_status_counts(db, [tenant.pk])
        report.note(f"run statuses at the end: {statuses}")
        completed = statuses.get(Run.Status.COMPLETED, 0)
        failed = statuses.get(Run.Status.FAILED, 0)
        open_runs, unsent = settled(db, tenant.pk)
        outbox_per_step = db.query(
            "SELECT count(*) FROM (SELECT step_id FROM desk_outboxmessage WHERE tenant_id = %s"
            " GROUP BY run_id, step_id HAVING count(*) > 1) d",
            [tenant.pk],
        )[0][0]
        outbox = Counter(
            OutboxMessage.objects.filter(tenant=tenant).values_list("status", flat=True)
        )
        keys = sent_mail_keys(db.workdir / "outbox-mail")
        doubled_mail = sum(1 for n in keys.values() if n > 1)
        longest_run, longest_global = stalls(db, tenant.pk)

        report.section("after the last fault")
        report.add(
            "kills",
            "kills (SIGKILL)",
            real_kills(kills),
            aim=f">= {args.kills}",
            met=real_kills(kills) >= args.kills,
            note=", ".join(f"{n} {k}" for k, n in sorted(kills.items())),
        )
        report.add(
            "resume",
            "processing resumed after the last fault",
            resume_seconds,
            "s",
            aim="<= 60 s",
            met=resume_seconds is not None and resume_seconds <= 60,
            note="the first step finished after it",
        )
        report.add(
            "settle",
            "everything settled after the last fault",
            settle_seconds,
            "s",
            note="every run closed and every message settled, reviewers approving throughout;"
            " includes working off the backlog the faults left",
        )
        report.add(
            "lost",
            "runs lost (still open)",
            open_runs,
            "runs",
            aim="0",
            met=open_runs == 0,
            note=f"{completed} completed, {failed} failed (escalated)",
        )
        report.add(
            "failed",
            "runs failed into an escalation",
            failed,
            "runs",
            note=f"a step whose worker vanished {settings.DESK_STEP_MAX_LOST_LEASES} times fails "
            "(the guard against a step that kills its worker)",
        )
        report.add(
            "outbox_doubled",
            "outbox rows per (run, step) > 1",
            outbox_per_step,
            "steps",
            aim="0",
            met=outbox_per_step == 0,
            note=f"outbox: {dict(outbox)}; {unsent} not settled",
        )
        report.add(
            "mail_doubled",
            "e-mails sent more than once",
            doubled_mail,
            "e-mails",
            aim="0",
            met=doubled_mail == 0,
            note=f"{sum(keys.values())} e-mails for {len(keys)} keys",
        )
        report.add(
            "uncertain",
            "deliveries left uncertain (escalated to a person, not re-sent)",
            outbox.get(OutboxMessage.Status.UNCERTAIN, 0),
            "messages",
        )
        report.add(
            "mail_missing",
            "completed runs without an e-mail sent or escalated",
            max(0, completed - len(keys) - outbox.get(OutboxMessage.Status.UNCERTAIN, 0)),
            "runs",
            aim="0",
            met=completed <= len(keys) + outbox.get(OutboxMessage.Status.UNCERTAIN, 0),
        )
        report.add(
            "stall_run",
            "longest stall of one run (reviewer wait excluded)",
            longest_run,
            "s",
            aim="<= 60 s",
            met=longest_run <= 60,
            note=f"leases {settings.DESK_STEP_LEASE_SECONDS} s, renewed while a step runs",
        )
        report.add(
            "stall_global", "longest time with no step finishing anywhere", longest_global, "s"
        )


if __name__ == "__main__":
    p = common.parser("chaos")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--kills", type=int, default=60)
    p.add_argument("--broker", choices=["redis", "orm"], default="redis")
    p.add_argument("--seed", type=int, default=7)
    common.main("chaos", body, p)
