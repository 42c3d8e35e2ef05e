"""Benchmark 7, audit export: one tenant with 1,000,000 audit events (100,000 with --quick),
exported by `manage.py audit_export` (CSV and JSON Lines, with the signed manifest), against
`psql \\copy` of the same rows and columns to a CSV file on the same machine, in the same run.
Then the export is checked offline (`python -m audit.proof verify-export`).

Figures: rows per second and the peak resident memory (ru_maxrss of the command's process),
and export time / \\copy time. Aim: >= 50,000 rows/s at < 150 MB RSS.

The events are a real chain (each one sealed with audit.proof, linked to the one before),
loaded with COPY beneath the append-only triggers, as a restore by the owner would.

Run: .venv/bin/python bench/export.py [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit import proof
from bench import common
from tenants.ids import random_id

# The table's columns in the export's order (audit.proof.EXPORT_COLUMNS).
TABLE_COLUMNS = [
    {"tenant": "tenant_id", "actor_user": "actor_user_id"}.get(c, c) for c in proof.EXPORT_COLUMNS
]


def load_events(db: common.BenchDB, tenant_id: int, count: int) -> None:
    """Append `count` sealed events to the tenant's chain with COPY."""
    with common.pg_connect(db.name) as conn:
        head = conn.execute(
            "SELECT last_seq, last_hash FROM audit_auditchain WHERE tenant_id = %s", [tenant_id]
        ).fetchone()
        seq, prev = head if head else (0, "")
        start = datetime(2026, 1, 1, tzinfo=UTC)
        conn.execute("SET session_replication_role = replica")
        with (
            conn.cursor() as cursor,
            # The id is drawn here as the ORM would (tenants.ids): the column generates none.
            cursor.copy(
                f"COPY audit_auditevent (id, {', '.join(TABLE_COLUMNS)}) FROM STDIN"
            ) as copy,
        ):
            for i in range(count):
                seq += 1
                data = {"kind": "client_record", "references": [i % 977], "query": "lease"}
                reason = f"step {i % 5} of run {i // 5}: classify the enquiry"
                fields = {
                    "tenant": tenant_id,
                    "seq": seq,
                    "created_at": (start + timedelta(milliseconds=i * 10)).isoformat(),
                    "actor_type": "ai",
                    "actor_user": None,
                    "actor_label": "intake-coordinator v1",
                    "action": "data.read",
                    "object_type": "desk.StepRun",
                    "object_id": str(i),
                    "run_id": i // 5,
                    "step_id": i,
                    "role_version_id": 1,
                    "request_id": "",
                    "client_ip": None,
                    "user_agent": "",
                    "payload_digest": proof.payload_digest(data=data, reason=reason),
                    "prev_hash": prev,
                }
                digest = proof.event_hash(fields)
                copy.write_row(
                    [
                        random_id(),
                        *(fields[k] for k in proof.HASHED_FIELDS),
                        reason,
                        json.dumps(data),
                        None,
                        digest,
                    ]
                )
                prev = digest
        conn.execute(
            "UPDATE audit_auditchain SET last_seq = %s, last_hash = %s WHERE tenant_id = %s",
            [seq, prev, tenant_id],
        )
        conn.execute("SET session_replication_role = origin")
        conn.execute("ANALYZE audit_auditevent")


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one command."""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=common.REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise common.BenchError(
            f"{' '.join(command[:4])} failed: {process.stderr.read().decode()[-2000:]}"
        )
    return seconds, usage.ru_maxrss / 1024


def body(args, report: common.Report) -> None:
    count = 100_000 if args.quick else 1_000_000
    with common.bench_database(args, "export") as db:
        env = common.child_env(db, redis_url=None)
        subprocess.run(
            [common.PYTHON, common.MANAGE_PY, "audit_key", "--create"],
            cwd=common.REPO,
            env=env,
            check=True,
            capture_output=True,
        )
        tenant_id = db.query("SELECT id FROM tenants_tenant WHERE slug = 'harbor-legal'")[0][0]
        report.section(f"loading {count:,} sealed events into one tenant")
        started = time.monotonic()
        load_events(db, tenant_id, count)
        total = db.query("SELECT count(*) FROM audit_auditevent WHERE tenant_id = %s", [tenant_id])
        rows = total[0][0]
        report.note(
            f"{rows:,} events in the tenant's chain, loaded in {time.monotonic() - started:.0f} s"
        )

        report.section("psql \\copy of the same rows and columns (the baseline)")
        copy_file = db.workdir / "copy.csv"
        select = (
            f"SELECT {', '.join(TABLE_COLUMNS)} FROM audit_auditevent "
            f"WHERE tenant_id = {tenant_id} ORDER BY seq"
        )
        copy_seconds, _copy_rss = timed(
            ["psql", db.url, "-q", "-c", f"\\copy ({select}) TO '{copy_file}' CSV HEADER"], env
        )
        report.add("copy_rows_per_s", "psql \\copy: rows/s", rows / copy_seconds, "rows/s")

        for fmt in ("csv", "jsonl"):
            report.section(f"manage.py audit_export --format {fmt}")
            out = db.workdir / f"export.{fmt}"
            seconds, rss = timed(
                [
                    common.PYTHON,
                    common.MANAGE_PY,
                    "audit_export",
                    "--tenant",
                    "harbor-legal",
                    "--format",
                    fmt,
                    "--out",
                    str(out),
                ],
                env,
            )
            rate = rows / seconds
            report.add(
                f"{fmt}_rows_per_s",
                f"audit_export {fmt}: rows/s",
                rate,
                "rows/s",
                aim=">= 50,000",
                met=rate >= 50_000,
            )
            report.add(
                f"{fmt}_rss_mb",
                f"audit_export {fmt}: peak RSS",
                rss,
                "MB",
                aim="< 150",
                met=rss < 150,
            )
            report.add(
                f"{fmt}_vs_copy",
                f"audit_export {fmt} time / psql \\copy time",
                seconds / copy_seconds,
                "x",
            )
            report.note(
                f"{fmt}: {out.stat().st_size / 1e6:.0f} MB file, \\copy wrote "
                f"{copy_file.stat().st_size / 1e6:.0f} MB"
            )
            if fmt == "csv":
                key = subprocess.run(
                    [common.PYTHON, common.MANAGE_PY, "audit_key"],
                    cwd=common.REPO,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                verify_seconds, verify_rss = timed(
                    [
                        common.PYTHON,
                        "-m",
                        "audit.proof",
                        "verify-export",
                        str(out),
                        "--key",
                        key,
                    ],
                    env,
                )
                report.add(
                    "verify_rows_per_s",
                    "offline verify-export (csv): rows/s",
                    rows / verify_seconds,
                    "rows/s",
                )
                report.add("verify_rss_mb", "offline verify-export: peak RSS", verify_rss, "MB")


if __name__ == "__main__":
    common.main("export", body)
