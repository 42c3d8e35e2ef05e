"""Benchmark 2, model-bound: runs of two `llm` steps against an OpenAI-compatible fake that
answers after 500 ms (tests.fakes.openai_server, started in this process), on a 2-worker
cluster. Figures: model steps/s and the peak of calls in flight seen by the fake (aim:
>= 200 steps/s on 2 cores), against a process-per-call design measured on the same cluster
in the same run: one django-q2 task per model call (bench.noop.model_call), each holding
its worker process while the call is out (at most 2 workers / 0.5 s = 4 calls/s).

The runs are started in a tenant with no capacity (queued, no doorbells), then admitted all
at once; the window goes from that admission to the last run's finished_at.

Run: .venv/bin/python bench/model_bound.py [--quick] [--broker redis|orm|both]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

REDIS_DB = 9
LATENCY = 0.5
WORKERS = 2
AIM_RATE = 200


def measure(db, fake, broker: str, count: int, report: common.Report, tenants: int = 1) -> dict:
    from desk.models import Run

    made = []
    for i in range(tenants):
        tenant = common.make_tenant(f"model-{broker}-{i}", capacity=0)
        steps = [common.llm_step("first"), common.llm_step("second")]
        role = common.make_role(tenant, "llm2", steps, model="gpt-bench")
        share = count // tenants + (1 if i < count % tenants else 0)
        common.start_runs(tenant, role, share)
        made.append((tenant, share))
    ids = [t.pk for t, _ in made]
    env = {"DESK_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": fake.base_url}
    with common.Cluster(db, broker=broker, redis_db=REDIS_DB, name=f"{broker}-model", **env) as c:
        fake.reset()
        requests_before = fake.request_count
        started = time.time()
        for tenant, share in made:
            common.open_capacity(tenant, share)
        closed = (Run.Status.COMPLETED, Run.Status.FAILED, Run.Status.WAITING_APPROVAL)

        def settled() -> int:
            counts = common.run_status_counts(db, ids)
            return sum(counts.get(s, 0) for s in closed)

        # 60 s beyond the aim's pace: long enough for a reaper round, not for a lease (300 s).
        common.poll_until(
            lambda: settled() >= count, timeout=60 + 2 * count / 100, alive=c.check_alive
        )
        steps, seconds = common.finished_window(db, ids, started)
        counts = common.run_status_counts(db, ids)
        completed = counts.get(Run.Status.COMPLETED, 0)
        failed = counts.get(Run.Status.FAILED, 0)
        common.note_problems(report, c, broker)
    return {
        "rate": steps / seconds if seconds else 0.0,
        "seconds": seconds,
        "steps": steps,
        "completed": completed,
        "failed": failed,
        "peak": fake.peak_in_flight,
        "calls": fake.request_count - requests_before,
    }


def process_per_call(db, fake, broker: str, count: int, report: common.Report) -> dict:
    """`count` django-q2 tasks of one model call each on the cluster: calls/s from the first
    enqueue to the last call counted."""
    from bench.noop import CALLS

    client = common.fresh_redis(REDIS_DB)
    env = {"DESK_LLM_PROVIDER": "openai", "OPENAI_BASE_URL": fake.base_url}
    name = f"{broker}-per-call"
    with common.Cluster(db, broker=broker, redis_db=REDIS_DB, name=name, **env) as c:
        client.delete(CALLS)
        requests_before = fake.request_count
        started = time.monotonic()
        for i in range(count):
            common.enqueue("bench.noop.model_call", i)
        common.wait_until(
            lambda: int(client.get(CALLS) or 0) >= count,
            what=f"{count} process-per-call model calls",
            timeout=60 + count,
            interval=0.02,
            alive=c.check_alive,
        )
        seconds = time.monotonic() - started
        common.note_problems(report, c, broker)
    calls = fake.request_count - requests_before
    return {"rate": count / seconds, "seconds": seconds, "calls": calls}


def body(args, report: common.Report) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer

    count = 200 if args.quick else 1000
    brokers = ["redis", "orm"] if args.broker == "both" else [args.broker]
    common.fresh_redis(REDIS_DB)
    with (
        FakeOpenAIServer(latency=LATENCY) as fake,
        common.bench_database(args, "model_bound") as db,
    ):
        common.setup_django(db, redis_db=REDIS_DB, llm="openai", base_url=fake.base_url)
        report.section(f"baseline: process per call, {WORKERS} workers, {LATENCY:g} s per call")
        measured = process_per_call(db, fake, brokers[0], 20 if args.quick else 60, report)
        baseline = measured["rate"]
        report.add(
            "baseline_rate",
            "process-per-call design, measured",
            baseline,
            "calls/s",
            note=f"{measured['calls']} tasks in {measured['seconds']:.1f} s on the "
            f"{brokers[0]} broker; at most {WORKERS / LATENCY:g}/s ({WORKERS} workers / "
            f"{LATENCY:g} s)",
        )
        for broker in brokers:
            report.section(
                f"{broker.upper()} broker: {count} runs x 2 model steps, {LATENCY} s, "
                f"{args.tenants} tenant(s)"
            )
            result = measure(db, fake, broker, count, report, args.tenants)
            report.add(
                f"{broker}_rate",
                f"{broker}: model steps",
                result["rate"],
                "steps/s",
                aim=f">= {AIM_RATE} steps/s",
                met=result["rate"] >= AIM_RATE,
                note=f"{result['steps']} steps in {result['seconds']:.1f} s, "
                f"{result['calls']} calls",
            )
            report.add(
                f"{broker}_ratio",
                f"{broker}: against process-per-call (measured)",
                common.ratio(result["rate"], baseline),
                "x",
            )
            report.add(f"{broker}_peak", f"{broker}: peak model calls in flight", result["peak"])
            report.add(
                f"{broker}_unfinished",
                f"{broker}: runs not completed in the window",
                count - result["completed"],
                "runs",
                aim="0",
                met=result["completed"] == count,
                note=f"{result['failed']} failed",
            )


if __name__ == "__main__":
    p = common.parser("model_bound")
    p.add_argument("--broker", choices=["redis", "orm", "both"], default="both")
    p.add_argument("--tenants", type=int, default=1, help="spread the runs over N tenants")
    common.main("model_bound", body, p)
