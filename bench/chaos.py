"""Benchmark 6, chaos (not part of the quick run): at least 100 SIGKILLs during a 1,000-run
load, then the reaper until quiet. Figures: runs lost (not finished or parked correctly),
effects doubled (outbox rows per (run, step) > 1, e-mails sent more than once) and the
longest stall.

The load is the demo intake coordinator (harbor-legal): classify, look up, draft (parks at
its gate), send (an e-mail through the outbox). The bench approves every parked draft as
reviewer.harbor (approvals.services.decide), so every run should end completed with exactly
one e-mail. Meanwhile it SIGKILLs a random worker process of the cluster (the sentinel
starts a new one) every KILL_INTERVAL s, and every 10th time the whole cluster (its process
group), which it then starts again. Leases are 5 s (DESK_STEP_LEASE_SECONDS) so that
killed steps come back quickly. When the load is in and the kills are done, the bench runs
desk.services.reap_expired_leases() in-process every few seconds until the reaper wakes
nothing, every run is settled and every e-mail is out (the cluster also runs it every
minute by schedule, when it lives long enough).

Run: .venv/bin/python bench/chaos.py [--runs 1000] [--kills 100] [--broker redis|orm]
(--quick: 300 runs, 40 kills, for a try-out; bench/run_all.py --quick leaves chaos out)
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
KILL_INTERVAL = 0.4  # seconds between kills
WHOLE_CLUSTER_EVERY = 10  # every n-th kill takes the whole cluster down
INTAKE_PER_ROUND = 10  # runs started per loop round (the loop paces itself at ~KILL_INTERVAL)
LEASE_SECONDS = 5
RECOVERY_TIMEOUT = 300  # seconds for the reaper to settle everything after the chaos
REAPER_EVERY = 5  # seconds between in-process reaper rounds while recovering
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
        .order_by("pk")
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
    return kills["worker"] + kills["whole cluster"]


def kill_something(cluster: common.Cluster, n: int, report_kills: Counter) -> None:
    if n % WHOLE_CLUSTER_EVERY == 0:
        cluster.kill()
        cluster.start(probe=False)
        report_kills["whole cluster"] += 1
        return
    workers = cluster.worker_pids()
    if not workers:
        report_kills["skipped (no worker up yet)"] += 1
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(random.choice(workers), signal.SIGKILL)
        report_kills["worker"] += 1


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

    A run's progress: its audit events in order; the wait for a reviewer (approval.requested
    -> approval.decided) is the bench's doing and not counted.
    """
    rows = db.query(
        "SELECT run_id, action, extract(epoch FROM created_at) FROM audit_auditevent"
        " WHERE tenant_id = %s AND run_id IS NOT NULL ORDER BY run_id, seq",
        [tenant_id],
    )
    longest_run = 0.0
    previous: tuple[int, str, float] | None = None
    for run_id, action, at in rows:
        at = float(at)
        if previous and previous[0] == run_id and previous[1] != "approval.requested":
            longest_run = max(longest_run, at - previous[2])
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


def body(args, report: common.Report) -> None:
    if args.quick:
        args.runs, args.kills = min(args.runs, 300), min(args.kills, 40)
    random.seed(args.seed)
    common.fresh_redis(REDIS_DB)
    with common.bench_database(args, "chaos") as db:
        common.setup_django(db, redis_db=REDIS_DB)
        from django.contrib.auth import get_user_model

        from desk.models import OutboxMessage, Run
        from desk.services import reap_expired_leases
        from roles.models import Role
        from tenants.models import Tenant

        tenant = Tenant.objects.get(slug="harbor-legal")
        common.set_capacity(tenant, 50)
        role = Role.objects.get(tenant=tenant, slug="intake-coordinator")
        reviewer = get_user_model().objects.get(username="reviewer.harbor")
        cluster = common.Cluster(
            db,
            broker=args.broker,
            redis_db=REDIS_DB,
            name="chaos",
            DESK_STEP_LEASE_SECONDS=LEASE_SECONDS,
        )
        kills: Counter[str] = Counter()
        report.section(
            f"{args.broker.upper()} broker: {args.runs} runs, >= {args.kills} kills "
            f"(every {KILL_INTERVAL} s; every {WHOLE_CLUSTER_EVERY}th the whole cluster)"
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
            time.sleep(max(0.0, KILL_INTERVAL - (time.monotonic() - round_started)))
            if time.monotonic() - started > 900:
                raise common.BenchError("the chaos phase did not end within 900 s")
        chaos_seconds = time.monotonic() - started
        report.note(
            f"chaos: {dict(kills)} in {chaos_seconds:.0f} s while {len(run_ids)} runs were started"
        )
        if cluster.process is None or cluster.process.poll() is not None:
            cluster.start(probe=False)

        # Recovery: approve, and run the reaper in-process until quiet.
        recovery_started = time.monotonic()
        last_reap = 0.0
        quiet_rounds = 0
        reaper_rounds = 0
        woken_total = 0
        while time.monotonic() - recovery_started < RECOVERY_TIMEOUT:
            approve_pending(tenant, reviewer)
            if time.monotonic() - last_reap >= REAPER_EVERY:
                last_reap = time.monotonic()
                woken = common.retry_deadlock(reap_expired_leases)
                reaper_rounds += 1
                woken_total += woken
                statuses = common.run_status_counts(db, [tenant.pk])
                open_runs = sum(
                    statuses.get(s, 0)
                    for s in (Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.WAITING_APPROVAL)
                )
                unsent = OutboxMessage.objects.filter(
                    tenant=tenant, status=OutboxMessage.Status.PENDING
                ).count()
                quiet_rounds = (
                    quiet_rounds + 1 if (not woken and not open_runs and not unsent) else 0
                )
                if quiet_rounds >= 2:
                    break
            cluster.check_alive()
            time.sleep(0.5)
        recovery_seconds = time.monotonic() - recovery_started
        common.note_problems(report, cluster, "chaos")
        cluster.stop()

        statuses = common.run_status_counts(db, [tenant.pk])
        report.note(
            f"recovery: {reaper_rounds} reaper rounds woke {woken_total} runs in "
            f"{recovery_seconds:.0f} s; run statuses: {statuses}"
        )
        completed = statuses.get(Run.Status.COMPLETED, 0)
        failed = statuses.get(Run.Status.FAILED, 0)
        open_runs = sum(
            statuses.get(s, 0) for s in (Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.ON_HOLD)
        )
        still_parked = statuses.get(Run.Status.WAITING_APPROVAL, 0)
        outbox_per_step = db.query(
            "SELECT count(*) FROM (SELECT step_id FROM desk_outboxmessage WHERE tenant_id = %s"
            " GROUP BY run_id, step_id HAVING count(*) > 1) d",
            [tenant.pk],
        )[0][0]
        outbox_sent = OutboxMessage.objects.filter(
            tenant=tenant, status=OutboxMessage.Status.SENT
        ).count()
        outbox_total = OutboxMessage.objects.filter(tenant=tenant).count()
        keys = sent_mail_keys(db.workdir / "outbox-mail")
        doubled_mail = sum(1 for n in keys.values() if n > 1)
        longest_run, longest_global = stalls(db, tenant.pk)

        report.section("after the reaper went quiet")
        report.add(
            "kills",
            "kills (SIGKILL)",
            real_kills(kills),
            aim=f">= {args.kills}",
            met=real_kills(kills) >= args.kills,
            note=f"{kills['worker']} workers, {kills['whole cluster']} whole cluster",
        )
        report.add(
            "lost",
            "runs lost (still open, not parked)",
            open_runs,
            "runs",
            aim="0",
            met=open_runs == 0,
            note=f"{completed} completed, {failed} failed (escalated), {still_parked} parked",
        )
        report.add(
            "not_completed",
            "runs not completed (failed or open)",
            args.runs - completed,
            "runs",
            note="a step killed DESK_STEP_MAX_ATTEMPTS times fails and opens an escalation",
        )
        report.add(
            "outbox_doubled",
            "outbox rows per (run, step) > 1",
            outbox_per_step,
            "steps",
            aim="0",
            met=outbox_per_step == 0,
            note=f"{outbox_total} outbox rows, {outbox_sent} sent",
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
            "mail_missing",
            "completed runs without a sent e-mail",
            max(0, completed - len(keys)),
            "runs",
            aim="0",
            met=completed <= len(keys),
        )
        report.add(
            "stall_run",
            "longest stall of one run (reviewer wait excluded)",
            longest_run,
            "s",
            note=f"leases {LEASE_SECONDS} s; the reaper re-rings runs idle for 60 s",
        )
        report.add(
            "stall_global", "longest time with no step finishing anywhere", longest_global, "s"
        )


if __name__ == "__main__":
    p = common.parser("chaos")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--broker", choices=["redis", "orm"], default="redis")
    p.add_argument("--seed", type=int, default=7)
    common.main("chaos", body, p)
