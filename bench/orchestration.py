"""Benchmark 1, orchestration: 5-step autonomous runs of no-op steps against bare django-q2
no-op tasks, on the same broker, in the same run; on the ORM and on the Redis broker.

Figures: steps/s against bare tasks/s (aim: steps/s >= 2x tasks/s, because one task runs a
run's autonomous steps back to back), database commits per step (aim <= 2; the bench
database's pg_stat_database.xact_commit delta over the window, divided by the steps run),
and PostgreSQL's own ceiling (`pgbench -N`) beside them.

How: the runs are started first in a tenant with no capacity (queued, no doorbells), then
the capacity is raised and `admit_runs` admits them all at once: the window goes from that
admission to the last run's finished_at. The bare tasks are enqueued in a loop; the window
goes from the first enqueue to the last task done (bench.noop.tick counts in Redis). Each
window runs on a freshly started cluster (2 workers) that is stopped at the end, so that
PostgreSQL has published every backend's counters when the window is read.

Run: .venv/bin/python bench/orchestration.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.noop import TICKS

REDIS_DB = 8
STEPS_PER_RUN = 5
SETTLE_SECONDS = 3


def queue_length(db: common.BenchDB, broker: str, client) -> int:
    if broker == "orm":
        return db.scalar("SELECT count(*) FROM django_q_ormq")
    return client.llen("django_q:agentdesk:q")


def drain(db, broker, client, cluster: common.Cluster, timeout: float) -> None:
    """Wait until the broker's queue is empty and every task the cluster took is done."""

    def drained():
        if queue_length(db, broker, client):
            return False
        started, finished = cluster.task_counts()
        return started == finished

    common.wait_until(drained, what="the queue to drain", timeout=timeout, interval=0.25)


def idle_commit_rate(db: common.BenchDB, seconds: float) -> float:
    time.sleep(SETTLE_SECONDS)
    before = db.stats()
    time.sleep(seconds)
    return (db.stats() - before).commits / seconds


def timed_ticks(client, count: int, cluster, **q_options) -> dict[str, float]:
    """Enqueue `count` bench.noop.tick tasks; seconds until all were enqueued, executed
    (the Redis counter) and done (django-q2's monitor handled their results: the log)."""
    func = "bench.noop.tick"
    client.delete(TICKS)
    before = cluster.processed(func)
    started = time.monotonic()
    for _ in range(count):
        common.enqueue(func, q_options=q_options)
    enqueued = time.monotonic()
    common.wait_until(
        lambda: int(client.get(TICKS) or 0) >= count,
        what=f"{count} bare tasks to run",
        timeout=120 + count / 5,
        interval=0.01,
        alive=cluster.check_alive,
    )
    executed = time.monotonic()
    common.wait_until(
        lambda: cluster.processed(func) - before >= count,
        what=f"{count} bare tasks' results",
        timeout=120 + count / 5,
        interval=0.02,
        alive=cluster.check_alive,
    )
    done = time.monotonic()
    return {
        "enqueued": enqueued - started,
        "executed": executed - started,
        "done": done - started,
    }


def bare_tasks(db, broker, client, count: int) -> dict:
    """Enqueue `count` bare tasks; time first enqueue -> all done; count commits.

    A task is done when django-q2 has handled its result (saved it: save_limit 1000, so
    once 1000 are kept every save also prunes the oldest). The measure starts once that
    table is full, as it is for the runs' doorbells.
    """
    from django_q.conf import Conf

    with common.Cluster(db, broker=broker, redis_db=REDIS_DB, name=f"{broker}-bare") as cluster:
        idle = idle_commit_rate(db, 5)
        timed_ticks(client, max(Conf.SAVE_LIMIT, 0), cluster)  # warm-up: results table full
        unsaved = timed_ticks(client, count, cluster, save=False)
        drain(db, broker, client, cluster, timeout=60)
        before = common.quiet_stats(db)
        polls = db.polls
        saved = timed_ticks(client, count, cluster)
        drain(db, broker, client, cluster, timeout=60)
        cluster.stop()
        delta = common.quiet_stats(db) - before
    commits = delta.commits - (db.polls - polls)
    return {
        "rate": count / saved["done"],
        "executed_rate": count / saved["executed"],
        "enqueue_rate": count / saved["enqueued"],
        "unsaved_rate": count / unsaved["done"],
        "commits": commits / count,
        "idle_commits_per_s": idle,
        "seconds": saved["done"],
    }


def runs(db, broker, client, tenant, role, count: int) -> dict:
    """Admit `count` queued 5-step runs at once; time admission -> last run finished."""
    from desk.models import Run

    common.start_runs(tenant, role, count)  # queued: the tenant has no capacity yet
    queued = common.count_runs(db, tenant.pk, (Run.Status.QUEUED,))
    if queued != count:
        raise common.BenchError(f"expected {count} queued runs, found {queued}")
    with common.Cluster(db, broker=broker, redis_db=REDIS_DB, name=f"{broker}-runs") as cluster:
        time.sleep(SETTLE_SECONDS)
        before = common.quiet_stats(db)
        polls = db.polls
        started = time.time()
        admitted = common.open_capacity(tenant, count)
        if len(admitted) != count:
            raise common.BenchError(f"admitted {len(admitted)} of {count} runs")
        closed = (Run.Status.COMPLETED, Run.Status.FAILED, Run.Status.WAITING_APPROVAL)
        common.wait_until(
            lambda: common.count_runs(db, tenant.pk, closed) >= count,
            what=f"{count} runs to finish",
            timeout=120 + count,
            interval=0.25,
            alive=cluster.check_alive,
        )
        finished = db.scalar(
            "SELECT extract(epoch FROM max(finished_at)) FROM desk_run WHERE tenant_id = %s",
            [tenant.pk],
        )
        completed = common.count_runs(db, tenant.pk, (Run.Status.COMPLETED,))
        steps = db.scalar(
            "SELECT count(*) FROM desk_steprun WHERE tenant_id = %s AND status = 'completed'",
            [tenant.pk],
        )
        drain(db, broker, client, cluster, timeout=120)
        tasks = cluster.task_counts(r"desk\.tasks\.advance_run")[1]
        cluster.stop()
        delta = common.quiet_stats(db) - before
    commits = delta.commits - (db.polls - polls)
    seconds = float(finished) - started
    return {
        "rate": steps / seconds,
        "runs_per_s": count / seconds,
        "seconds": seconds,
        "completed": completed,
        "steps": steps,
        "commits": commits / max(steps, 1),
        "rows_written": delta.rows_written / max(steps, 1),
        "tasks": tasks,
    }


def body(args, report: common.Report) -> None:
    n_tasks = 500 if args.quick else 2000
    n_runs = 100 if args.quick else 400
    client = common.fresh_redis(REDIS_DB)
    with common.bench_database(args, "orchestration") as db:
        common.setup_django(db, redis_db=REDIS_DB)
        tps, pgbench = common.pgbench_tps(db, seconds=5 if args.quick else 10)
        report.section("PostgreSQL ceiling")
        report.add("pg_tps", "pgbench -N (commits/s)", tps, "commits/s", note=pgbench)
        for broker in ("orm", "redis"):
            report.section(f"{broker.upper()} broker: {n_tasks} bare tasks vs {n_runs} runs")
            tenant = common.make_tenant(f"orch-{broker}", capacity=0)
            role = common.make_role(
                tenant, "noop5", [common.noop_tool_step(f"s{i}") for i in range(STEPS_PER_RUN)]
            )
            bare = bare_tasks(db, broker, client, n_tasks)
            report.add(
                f"{broker}_bare_rate",
                f"{broker}: bare no-op tasks",
                bare["rate"],
                "tasks/s",
                note=f"{n_tasks} done (results saved) in {bare['seconds']:.1f} s; executed "
                f"{bare['executed_rate']:.0f}/s, enqueued {bare['enqueue_rate']:.0f}/s",
            )
            report.add(
                f"{broker}_bare_unsaved",
                f"{broker}: bare tasks, results not saved (save=False)",
                bare["unsaved_rate"],
                "tasks/s",
                note="django-q2's dispatch without its result table",
            )
            report.add(
                f"{broker}_bare_commits", f"{broker}: commits per bare task", bare["commits"]
            )
            report.add(
                f"{broker}_idle_commits",
                f"{broker}: idle cluster commits (broker polling)",
                bare["idle_commits_per_s"],
                "commits/s",
            )
            result = runs(db, broker, client, tenant, role, n_runs)
            if result["completed"] != n_runs:
                report.note(f"{broker}: only {result['completed']} of {n_runs} runs completed")
            report.add(
                f"{broker}_step_rate",
                f"{broker}: no-op steps ({STEPS_PER_RUN}-step runs)",
                result["rate"],
                "steps/s",
                note=(
                    f"{result['steps']} steps, {n_runs} runs in {result['seconds']:.1f} s; "
                    f"{result['tasks']} advance tasks"
                ),
            )
            r = common.ratio(result["rate"], bare["rate"])
            report.add(
                f"{broker}_ratio",
                f"{broker}: steps/s / bare tasks/s",
                r,
                "x",
                aim=">= 2x",
                met=r is not None and r >= 2,
            )
            report.add(
                f"{broker}_commits_per_step",
                f"{broker}: commits per step",
                result["commits"],
                "commits/step",
                aim="<= 2",
                met=result["commits"] <= 2,
                note=f"incl. broker polling and doorbells; {result['rows_written']:.1f} rows "
                "written/step",
            )
            if tps:
                ceiling = tps / max(result["commits"], 1e-9)
                report.add(
                    f"{broker}_pg_ceiling_steps",
                    f"{broker}: PostgreSQL ceiling at this commits/step",
                    ceiling,
                    "steps/s",
                    note="pgbench commits/s / commits per step",
                )


if __name__ == "__main__":
    common.main("orchestration", body)
