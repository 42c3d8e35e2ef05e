"""Benchmark 3, resume latency: a reviewer's decision committed -> the next step started,
against a bare django-q2 task enqueued -> started, on the same broker (aim: p95 <= 1.3x).

Runs of the demo intake coordinator (harbor-legal) park at their `draft` gate; the bench
approves them one at a time through approvals.services.decide as reviewer.harbor, on an
otherwise idle 2-worker cluster. The decision's commit time is taken by an on_commit hook
registered before decide's own (so it fires right after COMMIT, before the doorbell); the
next step's start is the `send` StepRun's started_at. The baseline enqueues
bench.noop.stamp, which records when a worker started it.

Run: .venv/bin/python bench/resume.py [--quick] [--broker orm|redis|both]
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common
from bench.noop import STAMPS

REDIS_DB = 10
SETTLE_TIMEOUT = 5  # seconds a resumed run gets to finish before the next decision
INPUT = {
    "from_email": "maya.chen@example.com",
    "subject": "Lease question",
    "body": "Could we meet next week about the draft lease?",
}


def pause() -> None:
    """A random gap between samples, so that they don't fall in step with the ORM broker's
    0.2 s polling (which would make every sample wait about the same)."""
    time.sleep(random.uniform(0.02, 0.27))


def bare_latencies(client, count: int, cluster: common.Cluster) -> list[float]:
    latencies = []
    for _ in range(count):
        token = uuid.uuid4().hex
        enqueued = time.time()
        common.enqueue("bench.noop.stamp", token)
        value = common.wait_until(
            lambda token=token: client.hget(STAMPS, token),
            what="a bare task to start",
            timeout=30,
            interval=0.002,
            alive=cluster.check_alive,
        )
        latencies.append(float(value) - enqueued)
        pause()
    return latencies


def park_runs(db, tenant, role, count: int, cluster) -> list[int]:
    from desk.models import Run

    ids = common.start_runs(tenant, role, count, input_=INPUT)
    common.wait_until(
        lambda: (
            db.scalar(
                "SELECT count(*) FROM desk_run WHERE id = ANY(%s) AND status <> 'running'"
                " AND status <> 'queued'",
                [ids],
            )
            >= count
        ),
        what=f"{count} runs to park at their gate",
        timeout=120 + count,
        interval=0.5,
        alive=cluster.check_alive,
    )
    parked = Run.objects.filter(pk__in=ids, status=Run.Status.WAITING_APPROVAL).count()
    if parked != count:
        raise common.BenchError(f"only {parked} of {count} runs parked at the gate")
    return ids


def resume_latencies(db, run_ids: list[int], reviewer, cluster) -> tuple[list[float], int]:
    from django.db import transaction

    from approvals.models import ApprovalRequest
    from approvals.services import decide

    latencies = []
    late = 0
    for run_id in run_ids:
        request = ApprovalRequest.objects.get(run_id=run_id, status=ApprovalRequest.Status.PENDING)
        committed: list[float] = []

        def approve(request=request, committed=committed):
            committed.clear()
            with transaction.atomic():
                transaction.on_commit(lambda: committed.append(time.time()))
                decide(request=request, reviewer=reviewer, verdict="approve")

        common.retry_deadlock(approve)
        started = common.wait_until(
            lambda run_id=run_id: db.scalar(
                "SELECT extract(epoch FROM started_at) FROM desk_steprun"
                " WHERE run_id = %s AND key = 'send'",
                [run_id],
            ),
            what=f"run {run_id} to resume",
            timeout=60,
            interval=0.005,
            alive=cluster.check_alive,
        )
        latencies.append(float(started) - committed[0])
        # Let the run finish and its e-mail go out, so that the next decision meets an idle
        # cluster, as the next bare task does.
        done = common.poll_until(
            lambda run_id=run_id: db.scalar(
                "SELECT count(*) FROM desk_run r JOIN desk_outboxmessage o ON o.run_id = r.id"
                " WHERE r.id = %s AND r.status = 'completed' AND o.status = 'sent'",
                [run_id],
            ),
            timeout=SETTLE_TIMEOUT,
            interval=0.01,
        )
        late += not done
        pause()
    return latencies, late


def body(args, report: common.Report) -> None:
    count = 50 if args.quick else 200
    brokers = ["orm", "redis"] if args.broker == "both" else [args.broker]
    client = common.fresh_redis(REDIS_DB)
    with common.bench_database(args, "resume") as db:
        common.setup_django(db, redis_db=REDIS_DB)
        from django.contrib.auth import get_user_model

        from roles.models import Role
        from tenants.models import Tenant

        tenant = Tenant.objects.get(slug="harbor-legal")
        role = Role.objects.get(tenant=tenant, slug="intake-coordinator")
        reviewer = get_user_model().objects.get(username="reviewer.harbor")
        for broker in brokers:
            report.section(f"{broker.upper()} broker: {count} decisions vs {count} bare tasks")
            with common.Cluster(db, broker=broker, redis_db=REDIS_DB, name=broker) as cluster:
                run_ids = park_runs(db, tenant, role, count, cluster)
                time.sleep(2)  # let the parking tasks (and their e-mail-less doorbells) end
                bare = bare_latencies(client, count, cluster)
                resumed, late = resume_latencies(db, run_ids, reviewer, cluster)
                common.note_problems(report, cluster, broker)
            if late:
                report.note(
                    f"{broker}: {late} runs had not completed (e-mail sent) "
                    f"{SETTLE_TIMEOUT} s after resuming"
                )
            for q in (50, 95):
                b, r = common.percentile(bare, q), common.percentile(resumed, q)
                report.add(
                    f"{broker}_bare_p{q}", f"{broker}: bare enqueue -> start p{q}", b * 1e3, "ms"
                )
                report.add(
                    f"{broker}_resume_p{q}",
                    f"{broker}: decision committed -> next step started p{q}",
                    r * 1e3,
                    "ms",
                )
            ratio = common.ratio(common.percentile(resumed, 95), common.percentile(bare, 95))
            report.add(
                f"{broker}_ratio_p95",
                f"{broker}: resume p95 / bare p95",
                ratio,
                "x",
                aim="<= 1.3x",
                met=ratio is not None and ratio <= 1.3,
            )
            p50 = common.ratio(common.percentile(resumed, 50), common.percentile(bare, 50))
            report.add(f"{broker}_ratio_p50", f"{broker}: resume p50 / bare p50", p50, "x")


if __name__ == "__main__":
    p = common.parser("resume")
    p.add_argument("--broker", choices=["orm", "redis", "both"], default="both")
    common.main("resume", body, p)
