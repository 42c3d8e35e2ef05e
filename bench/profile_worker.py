"""Investigation helper (not a benchmark): run the batch worker in this process under cProfile
on admitted no-op (or offline-llm) runs, and count the SQL statements and transactions per step.

Run: .venv/bin/python bench/profile_worker.py [--runs 200] [--kind tool|llm] [--top 30]
     [--latency 0.5]  (llm steps against the fake OpenAI server instead of the offline model)
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

REDIS_DB = 14


def body(args, report: common.Report) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer

    client = common.fresh_redis(REDIS_DB)
    with (
        FakeOpenAIServer(latency=args.latency) as fake,
        common.bench_database(args, "profile") as db,
    ):
        if args.latency:
            common.setup_django(db, redis_db=REDIS_DB, llm="openai", base_url=fake.base_url)
        else:
            common.setup_django(db, redis_db=REDIS_DB)
        common.use_broker("redis", REDIS_DB)
        from django.db import connection

        from desk import worker

        tenant = common.make_tenant("profile", capacity=0)
        make = common.noop_tool_step if args.kind == "tool" else common.llm_step
        role = common.make_role(tenant, "p5", [make(f"s{i}") for i in range(5)])
        common.start_runs(tenant, role, args.runs)
        common.open_capacity(tenant, args.runs)
        client.flushdb()  # the doorbells: this process does the work instead

        statements: Counter[str] = Counter()

        def count(execute, sql, params, many, context):
            words = sql.split(None, 2)
            head = words[0].upper() if words else "?"
            if head == "SELECT" and "FOR UPDATE" in sql:
                head = "SELECT FOR UPDATE"
            statements[head] += 1
            return execute(sql, params, many, context)

        profiler = cProfile.Profile()
        before = common.quiet_stats(db)
        started = time.monotonic()
        with connection.execute_wrapper(count):
            profiler.enable()
            result = worker.work(batch=args.batch)
            while result["steps"]:
                result = worker.work(batch=args.batch)
            profiler.disable()
        seconds = time.monotonic() - started
        delta = common.quiet_stats(db) - before
        steps = db.scalar("SELECT count(*) FROM desk_steprun WHERE status = 'completed'")
        report.add("steps", "steps completed", steps)
        report.add("rate", "one process, in-process work()", steps / seconds, "steps/s")
        report.add("commits", "commits per step", delta.commits / steps)
        report.add("statements", "SQL statements per step", sum(statements.values()) / steps)
        for head, n in statements.most_common():
            print(f"    {head:<18} {n / steps:6.2f} per step")
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs()
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    p = common.parser("profile_worker")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--kind", choices=["tool", "llm"], default="tool")
    p.add_argument("--top", type=int, default=35)
    p.add_argument(
        "--latency", type=float, default=0, help="llm steps call the fake OpenAI server (s)"
    )
    common.main("profile_worker", body, p)
