"""Benchmark 4, noisy neighbour: tenant A floods 5,000 runs while tenant B submits 50;
B's p95 turnaround (created -> completed) against B alone, the same 50 runs with no flood
(aim: <= 1.5x). Both tenants use the same short autonomous role (2 no-op steps).

Two floods, each measured: A at its default capacity (10 concurrent runs: the flood waits
in the database and is admitted as A's runs finish), and A with capacity for the whole
flood, admitted at once (5,000 ready runs and 5,000 doorbells in the broker ahead of B's,
the worst case for B). B submits its runs one every 0.1 s, as it does alone.

Run: .venv/bin/python bench/noisy.py [--quick] [--broker redis|orm]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

REDIS_DB = 11
B_RUNS = 50
B_GAP = 0.1  # seconds between B's submissions
B_TIMEOUT = 120  # seconds B's runs get to finish after the last one was submitted


def submit_b(db, tenant, role, cluster) -> tuple[list[float], int]:
    """Start B's runs one every B_GAP s; return turnarounds (s) and how many did not finish.

    A run still open at the timeout counts with its age then (a lower bound).
    """
    from desk.models import Run

    ids = []
    for i in range(B_RUNS):
        ids += common.start_runs(tenant, role, 1, input_={"topic": f"b {i}"})
        time.sleep(B_GAP)
    closed = (Run.Status.COMPLETED, Run.Status.FAILED, Run.Status.WAITING_APPROVAL)
    common.poll_until(
        lambda: (
            db.scalar(
                "SELECT count(*) FROM desk_run WHERE id = ANY(%s) AND status = ANY(%s)",
                [ids, list(closed)],
            )
            >= B_RUNS
        ),
        timeout=B_TIMEOUT,
        alive=cluster.check_alive,
    )
    rows = db.query(
        "SELECT extract(epoch FROM coalesce(finished_at, now()) - created_at), finished_at IS NULL"
        " FROM desk_run WHERE id = ANY(%s)",
        [ids],
    )
    return [float(seconds) for seconds, _ in rows], sum(1 for _, open_ in rows if open_)


def flood_phase(db, report, broker, tenant_a, tenant_b, role_b, *, label, capacity) -> dict:
    """B submits its runs while A's flood is on; returns B's turnarounds and A's progress."""
    from desk.models import Run

    with common.Cluster(db, broker=broker, redis_db=REDIS_DB, name=label) as cluster:
        # Only now (the cluster is up): a busy cluster would not run the readiness probe.
        flood_started = time.time()
        common.open_capacity(tenant_a, capacity)
        turnarounds, still_open = submit_b(db, tenant_b, role_b, cluster)
        a_open = common.count_runs(db, tenant_a.pk, (Run.Status.QUEUED, Run.Status.RUNNING))
        a_steps, a_seconds = common.finished_window(db, [tenant_a.pk], flood_started)
        common.note_problems(report, cluster, label)
    report.note(
        f"{label}: {a_open} of A's runs still open when B's were done; "
        f"A ran {a_steps} steps in {a_seconds:.0f} s meanwhile"
    )
    if not a_open:
        report.note(f"{label}: A's flood was over before B finished: the comparison is too kind")
    return {"values": turnarounds, "open": still_open}


def add_turnarounds(report, key: str, label: str, result: dict) -> None:
    values = result["values"]
    report.add(f"{key}_p50", f"{label}: B's turnaround p50", common.percentile(values, 50), "s")
    still_open = result["open"]
    report.add(
        f"{key}_p95",
        f"{label}: B's turnaround p95",
        common.percentile(values, 95),
        "s",
        note=f"{still_open} of {B_RUNS} not finished (counted at their age)" if still_open else "",
    )


def body(args, report: common.Report) -> None:
    a_runs = 2000 if args.quick else 5000
    broker = args.broker
    common.fresh_redis(REDIS_DB)
    with common.bench_database(args, "noisy") as db:
        common.setup_django(db, redis_db=REDIS_DB)
        from tenants.models import Tenant

        steps = [common.noop_tool_step("first"), common.noop_tool_step("second")]
        tenant_b = common.make_tenant("quiet-b", capacity=B_RUNS)
        role_b = common.make_role(tenant_b, "short", steps)
        # Both floods are created queued (no capacity yet). A1 then gets the default capacity
        # (10): its flood waits in the database, admitted as runs finish. A2 gets capacity
        # for its whole flood, admitted at once.
        tenant_a1 = common.make_tenant("flood-a1", capacity=0)
        role_a1 = common.make_role(tenant_a1, "short", steps)
        tenant_a2 = common.make_tenant("flood-a2", capacity=0)
        role_a2 = common.make_role(tenant_a2, "short", steps)

        report.section(f"{broker.upper()} broker: B alone ({B_RUNS} runs, one every {B_GAP} s)")
        with common.Cluster(db, broker=broker, redis_db=REDIS_DB, name="alone") as cluster:
            values, still_open = submit_b(db, tenant_b, role_b, cluster)
            common.note_problems(report, cluster, "alone")
        alone = {"values": values, "open": still_open}

        started = time.monotonic()
        common.start_runs(tenant_a1, role_a1, a_runs)
        common.start_runs(tenant_a2, role_a2, a_runs)
        report.note(f"2 x {a_runs} flood runs created in {time.monotonic() - started:.0f} s")

        report.section(f"B while A floods {a_runs} runs, A at its default capacity (10)")
        capped = flood_phase(
            db, report, broker, tenant_a1, tenant_b, role_b, label="flood-capped", capacity=10
        )
        Tenant.objects.filter(pk=tenant_a1.pk).update(status=Tenant.Status.SUSPENDED)

        report.section(f"B while A floods {a_runs} runs, all admitted at once")
        full = flood_phase(
            db, report, broker, tenant_a2, tenant_b, role_b, label="flood-admitted", capacity=a_runs
        )

        report.section("B's turnaround (created -> completed)")
        add_turnarounds(report, "alone", "alone", alone)
        add_turnarounds(report, "capped", "A capped at 10", capped)
        add_turnarounds(report, "admitted", "A all admitted", full)
        for key, label, result in (
            ("capped", "A capped at 10", capped),
            ("admitted", "A all admitted", full),
        ):
            r = common.ratio(
                common.percentile(result["values"], 95), common.percentile(alone["values"], 95)
            )
            report.add(
                f"ratio_{key}",
                f"{label}: B's p95 / alone",
                r,
                "x",
                aim="<= 1.5x",
                met=r is not None and r <= 1.5,
            )


if __name__ == "__main__":
    p = common.parser("noisy")
    p.add_argument("--broker", choices=["redis", "orm"], default="redis")
    common.main("noisy", body, p)
