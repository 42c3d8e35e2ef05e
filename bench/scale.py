"""Benchmark 8, the admin at a firm's size: 200 tenants, 1,000,000 runs (one tenant holding
30 %), four steps a run, 20,000 pending approval requests and about ten million audit
events (`--scale 0.01` for a quick look at a hundredth of that).

The data set is real rows, made by the services once per tenant (a completed run and one
parked at its review, with their steps, decisions and audit events) and then copied with
SQL (`INSERT ... SELECT ... generate_series`) beneath the triggers, as a restore would.
Every page is then asked for 20 times by a logged-in test client in this process, which
works in row-level security as `agentdesk_app` as the web app does: for a reviewer of the
big tenant, a reviewer of a tenant with 100 runs (the baseline, in the same run) and an
operator of three tenants. Printed per page: p50, p95, the queries of one request
(row-level-security context statements left out) and big ÷ small. Then the plan of the
slowest query seen.

Aims (issue 12): p95 <= 300 ms, <= 15 queries, big/small <= 1.5x.

Run: .venv/bin/python bench/scale.py [--scale 0.01] [--keep-db]
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

TENANTS = 200
RUNS = 1_000_000
BIG_SHARE = 0.30
SMALL_RUNS = 100
PENDING = 20_000
REPEATS = 20
# Copies of a template row get ids offset by multiples of this (templates' ids are below it).
STRIDE = 1_000_000
AIM_P95_MS = 300
AIM_QUERIES = 15
AIM_RATIO = 1.5
# Statements row-level security adds around each transaction (tenants.rls), not the page's,
# and transaction control (as tests/queries.py leaves out the savepoints tests see instead).
CONTEXT_STATEMENT = re.compile(
    r"^\s*(SET LOCAL ROLE|SELECT set_config|SELECT current_user|SAVEPOINT|RELEASE SAVEPOINT"
    r"|ROLLBACK TO SAVEPOINT|BEGIN|COMMIT|ROLLBACK)\b",
    re.IGNORECASE,
)
PEOPLE = ("staff.big", "staff.small", "ops.three", "bench.reviewer")
STEPS = [
    common.llm_step("classify"),
    common.noop_tool_step("lookup"),
    common.llm_step("draft"),
    common.review_step("check"),
]


@dataclass
class Plan:
    """How many runs each tenant gets: completed copies and copies parked at review."""

    tenant_id: int
    completed: int
    pending: int


# --- the data set --------------------------------------------------------------------------------


def make_people(tenants):
    """The people the pages are measured for (a reviewer, operator and auditor of the big
    tenant; the same of the small one; an operator of three tenants), and one reviewer
    who decides the templates."""
    from django.contrib.auth import get_user_model

    from tenants.services import grant_membership

    users = get_user_model().objects
    people = {name: users.create_user(username=name, is_staff=True) for name in PEOPLE}
    actor = common.bench_actor()
    big, small, mid_a, mid_b = tenants[0], tenants[1], tenants[2], tenants[3]
    for kind in ("reviewer", "operator", "auditor"):
        grant_membership(user=people["staff.big"], tenant=big, kind=kind, actor=actor)
        grant_membership(user=people["staff.small"], tenant=small, kind=kind, actor=actor)
    for tenant in (big, mid_a, mid_b):
        grant_membership(user=people["ops.three"], tenant=tenant, kind="operator", actor=actor)
    for tenant in tenants:
        grant_membership(user=people["bench.reviewer"], tenant=tenant, kind="reviewer", actor=actor)
    return people


def make_templates(tenant, role, reviewer) -> tuple[int, int]:
    """A completed run and a run parked at its review, made by the production code."""
    from approvals.models import ApprovalRequest
    from approvals.services import decide
    from desk import worker
    from desk.models import Run
    from desk.services import start_run

    ids = []
    for label in ("done", "waiting"):
        run = start_run(
            tenant=tenant,
            role=role,
            input={"topic": f"{label} enquiry", "email": "template@example.com", "name": "T"},
            actor=common.bench_actor(),
            via=Run.Via.COMMAND,
        )
        common.open_capacity(tenant, 10)
        worker.work(run_id=run.pk, only=[run.pk])
        ids.append(run.pk)
    done, waiting = ids
    request = ApprovalRequest.objects.get(run_id=done, status=ApprovalRequest.Status.PENDING)
    decide(request=request, reviewer=reviewer, verdict="approve")
    worker.work(run_id=done, only=[done])
    statuses = dict(Run.objects.filter(pk__in=ids).values_list("pk", "status"))
    if (
        statuses[done] != Run.Status.COMPLETED
        or not ApprovalRequest.objects.filter(
            run_id=waiting, status=ApprovalRequest.Status.PENDING
        ).exists()
    ):
        raise common.BenchError(f"templates did not reach their states: {statuses}")
    return done, waiting


def plans(tenant_ids: list[int], scale: float) -> list[Plan]:
    runs, pending = round(RUNS * scale), round(PENDING * scale)
    big_runs, big_pending = round(runs * BIG_SHARE), round(pending * BIG_SHARE)
    rest = len(tenant_ids) - 2
    other_runs = (runs - big_runs - SMALL_RUNS) // rest
    other_pending = (pending - big_pending - 2) // rest
    result = [
        Plan(tenant_ids[0], big_runs - big_pending, big_pending),
        Plan(tenant_ids[1], SMALL_RUNS - 2, 2),
    ]
    result += [Plan(t, other_runs - other_pending, other_pending) for t in tenant_ids[2:]]
    return result


def columns(cursor, table: str) -> list[str]:
    cursor.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
        [table],
    )
    return [row[0] for row in cursor.fetchall()]


# How a copy's columns differ from its template's (`src` the template row, `g.n` the copy
# number, from 1). Columns not named are copied as they are.
SHIFT = f"g.n::bigint * {STRIDE}"
AGE = "g.n * interval '37 seconds'"
COPIES = {
    "desk_run": {
        "id": f"src.id + {SHIFT}",
        "input": "jsonb_build_object('topic', 'enquiry ' || g.n, 'email',"
        " 'client' || g.n || '@t' || src.tenant_id || '.example', 'name', 'Client ' || g.n)",
        # What desk.search would write for that input (shortest strings first).
        "search_text": "lower('client ' || g.n || ' enquiry ' || g.n || ' client' || g.n"
        " || '@t' || src.tenant_id || '.example')",
        "created_at": f"src.created_at - {AGE}",
        "sla_due_at": f"src.sla_due_at - {AGE}",
        "updated_at": f"src.updated_at - {AGE}",
        "started_at": f"src.started_at - {AGE}",
        "finished_at": f"src.finished_at - {AGE}",
    },
    "desk_steprun": {
        "id": f"src.id + {SHIFT}",
        "run_id": f"src.run_id + {SHIFT}",
        "idempotency_key": "src.idempotency_key || '.' || g.n",
        "ready_at": f"src.ready_at - {AGE}",
        "started_at": f"src.started_at - {AGE}",
        "finished_at": f"src.finished_at - {AGE}",
    },
    "approvals_approvalrequest": {
        "id": f"src.id + {SHIFT}",
        "run_id": f"src.run_id + {SHIFT}",
        "step_id": f"src.step_id + {SHIFT}",
        "created_at": f"src.created_at - {AGE}",
        "due_at": "src.due_at + g.n * interval '1 second'",
    },
    "approvals_decision": {
        "id": f"src.id + {SHIFT}",
        "request_id": f"src.request_id + {SHIFT}",
    },
    "audit_auditevent": {
        "id": f"src.id + {SHIFT}",
        "seq": f"src.seq + {SHIFT}",
        "run_id": f"src.run_id + {SHIFT}",
        "step_id": f"src.step_id + {SHIFT}",
        "object_id": f"(src.object_id::bigint + {SHIFT})::text",
        "hash": "md5(src.hash || g.n) || md5(g.n || src.hash)",
        "prev_hash": "md5(src.prev_hash || g.n) || md5(g.n || src.prev_hash)",
        "created_at": f"src.created_at - {AGE}",
    },
}
# Which template rows each table copies, given the template run's id as %(run)s.
TEMPLATE_ROWS = {
    "desk_run": "src.id = %(run)s",
    "desk_steprun": "src.run_id = %(run)s",
    "approvals_approvalrequest": "src.run_id = %(run)s",
    "approvals_decision": "src.request_id IN"
    " (SELECT id FROM approvals_approvalrequest WHERE run_id = %(run)s)",
    # Events about the run and its steps (object ids are numeric there).
    "audit_auditevent": "src.run_id = %(run)s AND src.object_id ~ '^[0-9]+$'",
}


def copy_sql(cursor, table: str) -> str:
    names = columns(cursor, table)
    shifts = COPIES[table]
    values = ", ".join(shifts.get(name, f"src.{name}") for name in names)
    return (
        f"INSERT INTO {table} ({', '.join(names)}) SELECT {values}"
        f" FROM {table} src, generate_series(1, %(copies)s) g(n) WHERE {TEMPLATE_ROWS[table]}"
    )


def load(db: common.BenchDB, plan: list[Plan], templates: dict[int, tuple[int, int]]) -> float:
    """Copy each tenant's templates; returns the seconds it took (with ANALYZE)."""
    started = time.monotonic()
    with common.pg_connect(db.name) as conn, conn.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")  # no triggers, no FK checks
        statements = {table: copy_sql(cursor, table) for table in COPIES}
        for item in plan:
            done, waiting = templates[item.tenant_id]
            for run, copies in ((done, item.completed), (waiting, item.pending)):
                if copies <= 0:
                    continue
                for sql in statements.values():
                    cursor.execute(sql, {"run": run, "copies": copies})
            conn.commit()
        conn.autocommit = True
        for table in COPIES:
            cursor.execute(f"VACUUM ANALYZE {table}")
    return time.monotonic() - started


def build(db: common.BenchDB, scale: float, report: common.Report) -> dict:
    from roles.models import Role

    report.section("building the data set")
    started = time.monotonic()
    tenants = [
        common.make_tenant(f"t{i:03d}", capacity=10) for i in range(TENANTS)
    ]  # t000 is the big tenant, t001 the small one
    people = make_people(tenants)
    role = common.make_role(tenants[0], "enquiries", STEPS)
    templates = {}
    for tenant in tenants:
        tenant_role = (
            role
            if tenant.pk == tenants[0].pk
            else Role.objects.get(pk=common.make_role(tenant, "enquiries", STEPS).pk)
        )
        templates[tenant.pk] = make_templates(tenant, tenant_role, people["bench.reviewer"])
    made = time.monotonic() - started
    plan = plans([t.pk for t in tenants], scale)
    seconds = load(db, plan, templates)
    counts = {
        table: db.scalar(f"SELECT reltuples::bigint FROM pg_class WHERE relname = '{table}'")
        for table in COPIES
    }
    pending = db.scalar("SELECT count(*) FROM approvals_approvalrequest WHERE status = 'pending'")
    report.add("scale_tenants", "tenants", len(tenants))
    report.add("scale_runs", "runs", counts["desk_run"])
    report.add("scale_steps", "steps", counts["desk_steprun"])
    report.add("scale_pending", "pending approval requests", pending)
    report.add("scale_events", "audit events", counts["audit_auditevent"])
    report.add(
        "scale_build_s", "built in", round(made + seconds), "s", note=f"copies {seconds:.0f} s"
    )
    return {"tenants": tenants, "people": people, "templates": templates}


# --- the pages -----------------------------------------------------------------------------------


def page_urls(tenant, waiting_run: int) -> dict[str, str]:
    """The pages a reviewer, operator or auditor lives in, for one tenant's own objects."""
    from approvals.models import ApprovalRequest

    request_id = (
        ApprovalRequest.objects.filter(run_id=waiting_run).values_list("pk", flat=True).first()
    )
    return {
        "admin index": "/admin/",
        "runs list, page 1": "/admin/desk/run/",
        "runs list, page 200": "/admin/desk/run/?p=200",
        "runs list, status filter": "/admin/desk/run/?status__exact=completed",
        "runs list, search": "/admin/desk/run/?q=client77%40",
        "pending approvals queue": "/admin/approvals/approvalrequest/",
        "escalations": "/admin/approvals/escalation/",
        "audit events": "/admin/audit/auditevent/",
        "outbox": "/admin/desk/outboxmessage/",
        "tenants list": "/admin/tenants/tenant/",
        "the tenant's page": f"/admin/tenants/tenant/{tenant.pk}/change/",
        "audit reports (exports' start)": "/admin/audit/reports/",
        "one run's page": f"/admin/desk/run/{waiting_run}/change/",
        "one review page": f"/admin/approvals/approvalrequest/{request_id}/change/",
    }


@dataclass
class Timing:
    p50: float | None
    p95: float | None
    queries: int
    status: int
    slowest: tuple[float, str, list[str]]  # seconds, SQL, the context statements before it


def measure(client, url: str) -> Timing:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url, secure=True)  # warm: templates compiled, caches filled
    seconds, queries, slowest, status = [], 0, (0.0, "", []), 0
    for i in range(REPEATS):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url, secure=True)
            seconds.append(time.perf_counter() - started)
        status = response.status_code
        context: list[str] = []
        page_queries = 0
        for query in captured.captured_queries:
            if CONTEXT_STATEMENT.match(query["sql"]):
                if query["sql"].lstrip().upper().startswith(("SET LOCAL ROLE", "SELECT SET_")):
                    context.append(query["sql"])
                continue
            page_queries += 1
            took = float(query["time"])
            if took > slowest[0]:
                slowest = (took, query["sql"], context[-2:])
        if i == 0:
            queries = page_queries
    ms = [s * 1000 for s in seconds]
    return Timing(common.percentile(ms, 50), common.percentile(ms, 95), queries, status, slowest)


def signed_in(user):
    """A test client signed in as `user`, password and second factor both passed (the
    session holds a confirmed TOTP device's id, as django_otp.login leaves it)."""
    from django.test import Client
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    client = Client()
    client.force_login(user)
    device, _ = TOTPDevice.objects.get_or_create(user=user, name="bench", confirmed=True)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return client


def explain(db: common.BenchDB, sql: str, context: list[str]) -> str:
    """The query's plan, run in the row-level-security context it ran in (one transaction:
    the context's settings are transaction-local)."""
    with (
        common.pg_connect(db.name) as conn,
        conn.transaction(force_rollback=True),
        conn.cursor() as cursor,
    ):
        for statement in context:
            cursor.execute(statement)
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


def reused(db: common.BenchDB, report: common.Report) -> dict:
    """The data set a run with --keep-db left, migrated to this checkout."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from desk.models import Run
    from tenants.models import Tenant

    call_command("migrate", "--noinput", verbosity=0)
    tenants = list(Tenant.objects.filter(slug__startswith="t").order_by("slug"))
    people = {u.username: u for u in get_user_model().objects.filter(username__in=PEOPLE)}
    templates = {}
    for tenant in tenants[:2]:
        waiting = (
            Run.objects.filter(tenant=tenant, status=Run.Status.WAITING_APPROVAL)
            .order_by("pk")
            .values_list("pk", flat=True)
            .first()
        )
        templates[tenant.pk] = (None, waiting)
    report.note(f"reused the data set in {db.name} (made by an earlier --keep-db run)")
    return {"tenants": tenants, "people": people, "templates": templates}


@contextlib.contextmanager
def database(args):
    if not args.reuse:
        with common.bench_database(args, "scale", seed=False) as db:
            yield db
        return
    with common.workdir("scale") as path:
        db = common.BenchDB("agentdesk_bench_scale", path)
        yield db


def body(args, report: common.Report) -> None:
    scale = args.scale if args.scale is not None else (0.01 if args.quick else 1.0)
    with database(args) as db:
        os.environ["DESK_ALLOWED_HOSTS"] = "testserver"
        common.setup_django(db, redis_db=14)
        import logging

        logging.getLogger("django.request").setLevel(logging.ERROR)
        built = reused(db, report) if args.reuse else build(db, scale, report)
        tenants, people, templates = built["tenants"], built["people"], built["templates"]
        big, small = tenants[0], tenants[1]
        slowest = (0.0, "", [], "")
        report.section(f"pages, {REPEATS} requests each (p50 / p95 ms, queries)")
        who = [
            ("reviewer, operator and auditor", people["staff.big"], people["staff.small"]),
            ("operator of 3 tenants", people["ops.three"], people["staff.small"]),
        ]
        for label, big_user, small_user in who:
            big_client, small_client = signed_in(big_user), signed_in(small_user)
            big_urls = page_urls(big, templates[big.pk][1])
            small_urls = page_urls(small, templates[small.pk][1])
            # The small tenant has one page of runs: its page 1 is the baseline for page 200.
            small_urls["runs list, page 200"] = small_urls["runs list, page 1"]
            for page, url in big_urls.items():
                if label == who[1][0] and page not in ("runs list, page 1", "runs list, page 200"):
                    continue
                large = measure(big_client, url)
                baseline = measure(small_client, small_urls[page])
                key = re.sub(r"[^a-z0-9]+", "_", f"{label} {page}").strip("_")
                both_ok = large.status == 200 and baseline.status == 200
                times = common.ratio(large.p95, baseline.p95)
                met = (
                    both_ok
                    and large.p95 <= AIM_P95_MS
                    and large.queries <= AIM_QUERIES
                    and times is not None
                    and times <= AIM_RATIO
                )
                report.add(
                    f"scale_{key}",
                    f"{label}: {page}",
                    f"{common.fmt(large.p50)} / {common.fmt(large.p95)} ms, {large.queries} q"
                    f" | small {common.fmt(baseline.p50)} / {common.fmt(baseline.p95)} ms,"
                    f" {baseline.queries} q | {common.fmt(times)}x",
                    aim=f"p95 <= {AIM_P95_MS} ms, <= {AIM_QUERIES} q, <= {AIM_RATIO}x",
                    met=met,
                    note="" if both_ok else f"status {large.status} / {baseline.status}",
                )
                if large.slowest[0] > slowest[0]:
                    slowest = (*large.slowest, f"{label}: {page}")
        if slowest[1]:
            report.section(f"the slowest query ({slowest[0] * 1000:.0f} ms, {slowest[3]})")
            print(slowest[1][:2000])
            print(explain(db, slowest[1], slowest[2]), flush=True)


if __name__ == "__main__":
    p = common.parser("scale")
    p.add_argument("--scale", type=float, help="fraction of the full data set (1.0: 1M runs)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="measure the data set an earlier --keep-db run left (migrated first), not a new one",
    )
    common.main("scale", body, p)
