"""Benchmark 5, parked runs: 10,000 runs waiting for approval, then a 2-worker cluster idle
for 60 s (30 s with --quick), on the ORM and on the Redis broker. Figures: worker slots held
(tasks in progress, sampled every second from the cluster's log) and database commits per
minute (pg_stat_database.xact_commit; pg_stat_statements is not loaded on this server and
cannot be without a restart), against the same cluster idle on the same database before any
run existed (the ORM broker polls its queue table: that is the broker's cost, not the parked
runs'). Aim: 0 slots, ~0 commits beyond the empty cluster's.

The runs park at once: their role's first step is a `review` step. They are started through
desk.services.start_run in 10 tenants with no capacity, then admitted, and a cluster parks
them. The worker's sweeper runs the reaper every 5 s, the approvals sweep every 15 s and
the service-level sweep every minute in both windows alike: the parked runs' cost through
these shows as commits and rows read beyond the empty window's.

Run: .venv/bin/python bench/parked.py [--quick]
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

REDIS_DB = 12
TENANTS = 10
SETTLE_SECONDS = 3
# "~0": what the parked runs may add to the empty cluster's commits per minute.
SLACK_COMMITS_PER_MINUTE = 10


def idle_window(db, broker: str, seconds: float, label: str, client) -> dict:
    # The supervisor's probes go through the cluster every few seconds: not work.
    scheduled = {"desk.cluster.probe"}
    client.delete("django_q:agentdesk:q")
    cluster = common.Cluster(db, broker=broker, redis_db=REDIS_DB, name=label)
    try:
        cluster.start()
        time.sleep(SETTLE_SECONDS)
        offset = len(cluster.log_text())
        tables_before = table_reads(db)
        before = common.quiet_stats(db)
        started = time.monotonic()
        in_progress = []
        while time.monotonic() - started < seconds:
            begun, ended = cluster.task_counts()
            in_progress.append(begun - ended)
            cluster.check_alive()
            time.sleep(1)
        cluster.stop()
        delta = common.quiet_stats(db) - before
        elapsed = time.monotonic() - started
        tables = table_reads(db) - tables_before
        log = cluster.log_text()[offset:]
    finally:
        cluster.stop()
    tasks = Counter(re.findall(r" processing \S+ '([^']+)'", log))
    per_minute = 60 / elapsed
    return {
        "slots_max": max(in_progress, default=0),
        "slots_mean": sum(in_progress) / max(len(in_progress), 1),
        "commits": delta.commits * per_minute,
        "rows_read": (delta.rows_returned + delta.rows_fetched) * per_minute,
        "rows_written": delta.rows_written * per_minute,
        "tasks": dict(tasks),
        "tables": {name: n * per_minute for name, n in tables.most_common(4) if n > 0},
        "other_tasks": sum(n for name, n in tasks.items() if name not in scheduled),
        "seconds": elapsed,
    }


def table_reads(db) -> Counter[str]:
    """Rows read so far per table (sequential scans + index fetches). Read just outside a
    window's statistics, so that these statements don't count in it."""
    rows = db.query(
        "SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
        " FROM pg_stat_user_tables"
    )
    return Counter(dict(rows))


def park(db, tenants, roles, per_tenant: int, report, client) -> int:
    from desk.models import Run

    started = time.monotonic()
    for tenant, role in zip(tenants, roles, strict=True):
        common.start_runs(tenant, role, per_tenant)
    report.note(
        f"{per_tenant * len(tenants)} runs started (queued) in {time.monotonic() - started:.0f} s"
    )
    total = per_tenant * len(tenants)
    ids = [t.pk for t in tenants]
    with common.Cluster(db, broker="redis", redis_db=REDIS_DB, name="parking") as cluster:
        started = time.monotonic()
        for tenant in tenants:
            common.open_capacity(tenant, per_tenant)
        common.poll_until(
            lambda: common.run_status_counts(db, ids).get(Run.Status.WAITING_APPROVAL, 0) >= total,
            timeout=120 + total / 20,
            interval=1,
            alive=cluster.check_alive,
        )
        # Reviewers are notified of every gate by tasks of their own: let them finish, so
        # that the idle windows measure parked runs, not the notifications' backlog.
        common.poll_until(
            lambda: (
                not db.scalar(
                    "SELECT count(*) FROM approvals_approvalrequest WHERE notified_at IS NULL"
                )
            ),
            timeout=120 + total / 20,
            interval=1,
            alive=cluster.check_alive,
        )
        counts = common.run_status_counts(db, ids)
        common.note_problems(report, cluster, "parking")
    parked = counts.get(Run.Status.WAITING_APPROVAL, 0)
    report.note(
        f"{parked} of {total} runs parked in {time.monotonic() - started:.0f} s; statuses: {counts}"
    )
    client.flushdb()
    return parked


def body(args, report: common.Report) -> None:
    total = 2000 if args.quick else 10000
    seconds = 30 if args.quick else 60
    per_tenant = total // TENANTS
    client = common.fresh_redis(REDIS_DB)
    with common.bench_database(args, "parked") as db:
        common.setup_django(db, redis_db=REDIS_DB)
        tenants, roles = [], []
        for i in range(TENANTS):
            tenant = common.make_tenant(f"parked-{i}", capacity=0)
            tenants.append(tenant)
            roles.append(
                common.make_role(
                    tenant,
                    "review-first",
                    [common.review_step("check"), common.noop_tool_step("go")],
                )
            )
        windows = {}
        for broker in ("orm", "redis"):
            report.section(f"{broker.upper()} broker: empty cluster idle {seconds} s")
            windows[broker, "empty"] = idle_window(db, broker, seconds, f"{broker}-empty", client)
            print(f"    tasks run: {windows[broker, 'empty']['tasks']}")
        report.section(f"parking {total} runs ({TENANTS} tenants)")
        parked = park(db, tenants, roles, per_tenant, report, client)
        for broker in ("orm", "redis"):
            report.section(f"{broker.upper()} broker: {parked} parked runs, idle {seconds} s")
            windows[broker, "parked"] = idle_window(db, broker, seconds, f"{broker}-parked", client)
            print(f"    tasks run: {windows[broker, 'parked']['tasks']}")
        for broker in ("orm", "redis"):
            empty, full = windows[broker, "empty"], windows[broker, "parked"]
            report.section(f"{broker.upper()} broker: {parked} parked vs empty")
            report.add(
                f"{broker}_slots",
                f"{broker}: worker slots held with {parked} parked runs (max)",
                full["slots_max"],
                "slots",
                aim="0",
                met=full["slots_max"] == 0,
                note=f"mean {full['slots_mean']:.2f}; tasks other than the supervisor's "
                f"probes: {full['other_tasks']}",
            )
            report.add(
                f"{broker}_empty_commits",
                f"{broker}: empty cluster (broker's own cost)",
                empty["commits"],
                "commits/min",
            )
            report.add(
                f"{broker}_parked_commits",
                f"{broker}: with {parked} parked runs",
                full["commits"],
                "commits/min",
            )
            extra = full["commits"] - empty["commits"]
            report.add(
                f"{broker}_extra_commits",
                f"{broker}: parked runs' own cost",
                extra,
                "commits/min",
                aim=f"~0 (<= {SLACK_COMMITS_PER_MINUTE})",
                met=extra <= SLACK_COMMITS_PER_MINUTE,
            )
            report.add(
                f"{broker}_extra_rows",
                f"{broker}: rows read, parked minus empty",
                full["rows_read"] - empty["rows_read"],
                "rows/min",
                note=f"empty {empty['rows_read']:.0f}, parked {full['rows_read']:.0f}; "
                "the sweeps ran alike in both windows",
            )
            tables = ", ".join(f"{name} {n:,.0f}" for name, n in full["tables"].items())
            report.note(f"{broker}: rows fetched per minute with parked runs, by table: {tables}")


if __name__ == "__main__":
    common.main("parked", body)
