"""What the benchmark scripts share: a scratch PostgreSQL database per script, a Redis db
number per script, `manage.py desk_worker` subprocesses (a supervised django-q2 cluster and
the sweeper, as production runs them; always stopped), Django set up in the
bench process on the same database, the workload roles, and how figures are printed.

Figures are printed as `label: value unit (aim ...) met|not met` and, with `--json PATH`,
written for bench/run_all.py to summarise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PYTHON = sys.executable
MANAGE_PY = str(REPO / "manage.py")
# The PostgreSQL server (no database name) and the Redis server (no db number).
PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgres://postgres@127.0.0.1:5432").rstrip("/")
REDIS_SERVER = os.environ.get("BENCH_REDIS_SERVER", "redis://127.0.0.1:6379").rstrip("/")

T = TypeVar("T")
# Production settings refuse to start without a real secret key: one for this bench run.
SECRET_KEY = secrets.token_urlsafe(50)


class BenchError(RuntimeError):
    """The benchmark could not run (as opposed to: it ran and missed its aim)."""


# --- figures -----------------------------------------------------------------------------------


@dataclass
class Figure:
    key: str
    label: str
    value: float | int | str | None
    unit: str = ""
    aim: str = ""
    met: bool | None = None  # None: informational, no aim
    note: str = ""

    def text(self) -> str:
        value = fmt(self.value)
        unit = f" {self.unit}" if self.unit else ""
        line = f"  {self.label}: {value}{unit}"
        if self.aim:
            line += f"  (aim: {self.aim}) -> {'met' if self.met else 'NOT MET'}"
        if self.note:
            line += f"  [{self.note}]"
        return line


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "n/a" if value is None else str(value)


@dataclass
class Report:
    name: str
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def add(self, key: str, label: str, value, unit: str = "", aim: str = "", met=None, note=""):
        figure = Figure(key, label, value, unit, aim, met, note)
        self.figures.append(figure)
        print(figure.text(), flush=True)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def section(self, title: str) -> None:
        print(f"\n-- {title}", flush=True)

    def write(self, path: str | None, *, error: str = "") -> None:
        if not path:
            return
        data = {
            "name": self.name,
            "quick": self.quick,
            "seconds": round(time.time() - self.started, 1),
            "error": error,
            "figures": [asdict(f) for f in self.figures],
            "notes": self.notes,
        }
        Path(path).write_text(json.dumps(data, indent=2))


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def poll_until(
    check: Callable[[], T], *, timeout: float, interval: float = 0.25, alive=None
) -> T | None:
    """Like wait_until, but return the last (falsy) value on timeout instead of raising."""
    try:
        return wait_until(check, what="", timeout=timeout, interval=interval, alive=alive)
    except BenchError as exc:
        if str(exc).startswith("timed out"):
            return None
        raise


def wait_until(
    check: Callable[[], T],
    *,
    what: str,
    timeout: float,
    interval: float = 0.2,
    alive: Callable[[], None] | None = None,
) -> T:
    """Call `check` until it returns something truthy, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if alive is not None:
            alive()
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- command line and the script's life ----------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    p.add_argument("--json", metavar="PATH", help="also write the figures here (for run_all)")
    p.add_argument("--keep-db", action="store_true", help="leave the scratch database behind")
    p.add_argument(
        "--cluster-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for every cluster (what-if runs, e.g. DESK_WORKER_BATCH=16)",
    )
    return p


def _terminate(signum, frame):  # SIGTERM/SIGHUP: unwind so that `finally` stops the clusters
    raise SystemExit(128 + signum)


def main(name: str, body: Callable[[argparse.Namespace, Report], None], p=None) -> None:
    """Run a benchmark body; exit 0 when it ran (aims met or not), 1 when it could not."""
    args = (p or parser(name)).parse_args()
    for item in args.cluster_env:
        key, _, value = item.partition("=")
        EXTRA_CLUSTER_ENV[key] = value
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    report = Report(name=name, quick=args.quick)
    print(f"== {name}{' (quick)' if args.quick else ''}  {time.strftime('%Y-%m-%d %H:%M:%S')}")
    postmaster = postmaster_started()
    try:
        body(args, report)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, BenchError | KeyboardInterrupt | SystemExit):
            traceback.print_exc()
        if postmaster_started() != postmaster:
            error = f"{POSTGRES_RESTARTED}; {error}"
        print(f"\n{name}: could not run: {error}", file=sys.stderr, flush=True)
        report.write(args.json, error=error)
        sys.exit(1)
    finally:
        stop_all_clusters()
    if postmaster_started() != postmaster:
        report.note(f"{POSTGRES_RESTARTED}: the figures are disturbed")
    if INTAKE_DEADLOCKS["count"]:
        report.note(
            f"this process's own service calls (start_run, decide) were aborted by a deadlock "
            f"and retried {INTAKE_DEADLOCKS['count']} times"
        )
    if EXTRA_CLUSTER_ENV:
        report.note(f"clusters ran with extra environment {EXTRA_CLUSTER_ENV}")
    report.write(args.json)
    print(f"== {name} done in {time.time() - report.started:.0f} s", flush=True)


POSTGRES_RESTARTED = "PostgreSQL was restarted during the run (not by the bench)"


def postmaster_started() -> str:
    """When the PostgreSQL server last started: something else on a shared machine may
    restart it (the project's fault-injection tests do), which spoils a measurement."""
    for _ in range(30):
        try:
            with pg_connect("postgres") as conn:
                return str(conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0])
        except psycopg.OperationalError:
            time.sleep(1)  # starting up
    return "unknown"


# --- PostgreSQL --------------------------------------------------------------------------------


def pg_connect(dbname: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(f"{PG_SERVER}/{dbname}", autocommit=True, **kwargs)


@dataclass
class DbStats:
    commits: int
    rollbacks: int
    rows_returned: int
    rows_fetched: int
    rows_written: int
    at: float

    def __sub__(self, other: DbStats) -> DbStats:
        return DbStats(
            self.commits - other.commits,
            self.rollbacks - other.rollbacks,
            self.rows_returned - other.rows_returned,
            self.rows_fetched - other.rows_fetched,
            self.rows_written - other.rows_written,
            self.at - other.at,
        )


class BenchDB:
    """A scratch database on the PostgreSQL server: dropped, created, migrated, seeded."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.url = f"{PG_SERVER}/{name}"
        self.workdir = workdir
        self._admin: psycopg.Connection | None = None
        self._poll: psycopg.Connection | None = None
        self.polls = 0  # statements this process ran on the poll connection (each one commit)

    @property
    def admin(self) -> psycopg.Connection:
        """A connection to the maintenance database (its statements don't count here)."""
        if self._admin is None or self._admin.closed:
            self._admin = pg_connect("postgres")
        return self._admin

    def recreate(self) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self.close_poll()
        with contextlib.suppress(psycopg.Error):
            self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def prepare(self, *, seed: bool = True) -> None:
        """Recreate, `manage.py migrate`, `manage.py seed_demo` (subprocesses)."""
        self.recreate()
        env = child_env(self, redis_url=None)
        commands = [("migrate", "--noinput", "-v0")] + ([("seed_demo",)] if seed else [])
        for command in commands:
            result = subprocess.run(
                [PYTHON, MANAGE_PY, *command],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if result.returncode:
                raise BenchError(f"manage.py {' '.join(command)} failed:\n{result.stderr[-3000:]}")

    def stats(self) -> DbStats:
        row = self.admin.execute(
            "SELECT xact_commit, xact_rollback, tup_returned, tup_fetched,"
            " tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = %s",
            [self.name],
        ).fetchone()
        return DbStats(*row, at=time.monotonic())

    def query(self, sql: str, params=None) -> list[tuple]:
        """One autocommit statement on the bench database (counted in `polls`)."""
        if self._poll is None or self._poll.closed:
            self._poll = pg_connect(self.name)
        self.polls += 1
        return self._poll.execute(sql, params).fetchall()

    def scalar(self, sql: str, params=None):
        return self.query(sql, params)[0][0]

    def close_poll(self) -> None:
        """Close the poll connection (its backend flushes its statistics as it exits)."""
        if self._poll is not None:
            self._poll.close()
            self._poll = None

    def server_version(self) -> str:
        return self.admin.execute("SHOW server_version").fetchone()[0]


def quiet_stats(db: BenchDB) -> DbStats:
    """Statistics with every connection of this process to the bench database closed.

    PostgreSQL 15 publishes a backend's counters up to ~10 s late, but at once when the
    backend exits: close ours (and stop the clusters) before reading the end of a window.
    """
    from django.db import connections

    connections.close_all()
    db.close_poll()
    time.sleep(0.3)
    return db.stats()


def pgbench_tps(db: BenchDB, *, seconds: int, clients: int = 4) -> tuple[float | None, str]:
    """PostgreSQL's own commit ceiling here: `pgbench -N` on a scratch database."""
    exe = shutil.which("pgbench")
    if exe is None:
        return None, "pgbench not installed"
    name = "agentdesk_bench_pgbench"
    db.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    db.admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER}/{name}"
    try:
        subprocess.run(
            [exe, "-i", "-q", "-s", "1", url], capture_output=True, text=True, timeout=120
        ).check_returncode()
        command = [exe, "-N", "-n", f"-c{clients}", "-j2", f"-T{seconds}", url]
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
        match = re.search(r"tps = ([\d.]+)", out.stdout)
        if not match:
            return None, f"pgbench printed no tps: {out.stderr[-500:]}"
        return float(match.group(1)), " ".join(["pgbench", *command[1:-1]])
    finally:
        db.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- Redis -------------------------------------------------------------------------------------


def redis_url(db_number: int) -> str:
    return f"{REDIS_SERVER}/{db_number}"


def fresh_redis(db_number: int) -> redis.Redis:
    client = redis.Redis.from_url(redis_url(db_number))
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis at {redis_url(db_number)} is not reachable: {exc}") from exc
    client.flushdb()
    return client


# --- Django in this process ------------------------------------------------------------------


def setup_django(db: BenchDB, *, redis_db: int, llm: str = "offline", base_url: str = "") -> None:
    """Django in the bench process, on the bench database (as the superuser: sees all rows)."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "desk.settings"
    os.environ["DATABASE_URL"] = db.url
    os.environ["DESK_VAR_DIR"] = str(db.workdir)
    os.environ["DESK_LLM_PROVIDER"] = llm
    os.environ["BENCH_REDIS_URL"] = redis_url(redis_db)
    os.environ["DESK_LOG_LEVEL"] = "WARNING"
    os.environ["DESK_SECRET_KEY"] = SECRET_KEY
    if base_url:
        os.environ["OPENAI_BASE_URL"] = base_url
    os.environ.pop("REDIS_URL", None)
    import django

    django.setup()


def use_broker(kind: str, redis_db: int) -> None:
    """Point this process's django-q2 (async_task) at the broker the cluster reads.

    django-q2 reads its configuration once, at import; get_broker() looks at Conf.ORM and
    Conf.REDIS on every call, so switching these two switches where doorbells go.
    """
    from django_q.conf import Conf

    if kind == "orm":
        Conf.ORM, Conf.REDIS = "default", None
        Conf.BROKER_CLASS = "desk.cluster.SupervisedORM"
    elif kind == "redis":
        Conf.ORM, Conf.REDIS = None, redis_url(redis_db)
        Conf.BROKER_CLASS = "desk.cluster.SupervisedRedis"
    else:
        raise ValueError(kind)


def enqueue(func: str, *args, **kwargs) -> str:
    from django_q.tasks import async_task

    return async_task(func, *args, **kwargs)


def broker_queue_size() -> int:
    from django_q.brokers import get_broker

    return int(get_broker().queue_size() or 0)


# --- clusters ----------------------------------------------------------------------------------


def child_env(db: BenchDB, *, redis_url: str | None, **overrides: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DESK_", "DJANGO_", "OPENAI_")) and k not in ("DATABASE_URL",)
    }
    env.pop("REDIS_URL", None)
    env.update(
        DATABASE_URL=db.url,
        DESK_VAR_DIR=str(db.workdir),
        PYTHONUNBUFFERED="1",
        DESK_LOG_LEVEL="INFO",
        DESK_Q_WORKERS="2",
        DESK_LLM_PROVIDER="offline",
        DESK_SECRET_KEY=SECRET_KEY,
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


_LIVE: list[Cluster] = []
EXTRA_CLUSTER_ENV: dict[str, str] = {}  # --cluster-env: applied to every cluster, last


def stop_all_clusters() -> None:
    for cluster in list(_LIVE):
        with contextlib.suppress(Exception):
            cluster.stop()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        after = stat.rsplit(")", 1)[1].split()
        if after[0] in ("Z", "X"):
            continue
        tree.setdefault(int(after[1]), []).append(int(name))
    return tree


def descendants(pid: int) -> list[int]:
    tree = _children()
    found, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            after = f.read().rsplit(")", 1)[1].split()
        return int(after[11]) + int(after[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


class Cluster:
    """A `manage.py desk_worker` subprocess (supervisor, django-q2 cluster, sweeper) in its
    own process group, logging to a file."""

    def __init__(self, db: BenchDB, *, broker: str, redis_db: int, name: str = "cluster", **env):
        self.db = db
        self.broker = broker
        self.redis_db = redis_db
        self.name = name
        self.env = child_env(db, redis_url=redis_url(redis_db) if broker == "redis" else None)
        self.env["BENCH_REDIS_URL"] = redis_url(redis_db)
        self.env.update({k: str(v) for k, v in env.items() if v is not None})
        self.env.update(EXTRA_CLUSTER_ENV)
        self.process: subprocess.Popen | None = None
        self.log_path = db.workdir / f"{name}.log"
        self.starts = 0
        self._processed: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, *, ready_timeout: float = 90, probe: bool = True) -> Cluster:
        use_broker(self.broker, self.redis_db)
        log = open(self.log_path, "a")  # noqa: SIM115 - handed to the child
        log.write(f"\n===== start {self.starts} at {time.time():.3f}\n")
        log.flush()
        self.process = subprocess.Popen(
            [PYTHON, MANAGE_PY, "desk_worker", f"--name=bench-{self.name}"],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        log.close()
        self.starts += 1
        _LIVE.append(self)
        if probe:
            self.probe(timeout=ready_timeout)
        return self

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise BenchError(f"{self.name} exited ({code}); log tail:\n{self.log_tail()}")

    def probe(self, *, timeout: float = 60) -> float:
        """Enqueue a bare task and wait until a worker ran it; return the seconds taken.

        Re-enqueued every 15 s: a probe can be lost (say, a Redis list flushed under it).
        """
        from bench.noop import STAMPS

        client = redis.Redis.from_url(redis_url(self.redis_db))
        started = time.monotonic()
        deadline = started + timeout
        tokens: list[str] = []
        while True:
            token = f"probe-{uuid.uuid4().hex}"
            tokens.append(token)
            enqueue("bench.noop.stamp", token)
            seen = poll_until(
                lambda: any(client.hexists(STAMPS, t) for t in tokens),
                timeout=max(0.1, min(15, deadline - time.monotonic())),
                interval=0.05,
                alive=self.check_alive,
            )
            if seen:
                break
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"{self.name} ran no probe task in {timeout:g} s; log tail:\n" + self.log_tail()
                )
        client.hdel(STAMPS, *tokens)
        return time.monotonic() - started

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def pids(self) -> list[int]:
        return descendants(self.pid) if self.pid else []

    def roles(self) -> dict[str, list[int]]:
        """Live pids by role: the cluster's main process, its sentinel, workers, pusher and
        monitor (from /proc and the log), and the sweeper."""
        roles: dict[str, list[int]] = {
            r: [] for r in ("cluster", "sentinel", "worker", "pusher", "monitor", "sweeper")
        }
        if not self.pid:
            return roles
        tree = _children()
        text = self.log_text()
        kinds = {}
        for kind, pattern in (
            ("worker", r"ready for work at (\d+)"),
            ("monitor", r"monitoring at (\d+)"),
            ("pusher", r"pushing tasks at (\d+)"),
        ):
            kinds.update({int(pid): kind for pid in re.findall(pattern, text)})
        for child in tree.get(self.pid, []):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"desk_sweeper" in command:
                roles["sweeper"].append(child)
            elif b"qcluster" in command:
                roles["cluster"].append(child)
                for sentinel in tree.get(child, []):
                    roles["sentinel"].append(sentinel)
                    for member in tree.get(sentinel, []):
                        if member in kinds:
                            roles[kinds[member]].append(member)
        return roles

    def worker_pids(self) -> list[int]:
        """Live worker processes (their pids are in the log: 'ready for work at PID')."""
        alive = set(self.pids())
        logged = {int(m) for m in re.findall(r"ready for work at (\d+)", self.log_text())}
        return sorted(alive & logged)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def task_counts(self, func: str = r"[^']+") -> tuple[int, int]:
        """(tasks started, tasks finished) by this cluster's workers, from its log."""
        text = self.log_text()
        started = len(re.findall(rf" processing \S+ '{func}'", text))
        finished = len(re.findall(rf"^(?:Processed|Failed) '{func}'", text, re.M))
        return started, finished

    def processed(self, func: str) -> int:
        """Tasks of `func` (exact name) whose result the monitor has handled, from the log.

        Reads only what the log gained since the last call (cheap to poll).
        """
        offset, count = self._processed.get(func, (0, 0))
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            return count
        end = chunk.rfind(b"\n") + 1  # whole lines only
        needle = re.compile(rb"^(?:Processed|Failed) '" + re.escape(func.encode()) + rb"'", re.M)
        count += len(needle.findall(chunk[:end]))
        self._processed[func] = (offset + end, count)
        return count

    def problems(self) -> dict[str, int]:
        """Counts of trouble the cluster logged (deadlocks, runs whose advancing failed)."""
        text = self.log_text()
        return {
            "deadlocks": text.count("DeadlockDetected: deadlock detected"),
            "advancing failed": text.count(": advancing failed"),
            "lease lost": text.count("lease lost before checkpoint"),
            "tasks failed": len(re.findall(r"^Failed '", text, re.M)),
        }

    def kill(self) -> None:
        """SIGKILL the worker and every process it started, at once (a machine lost)."""
        if self.process is None:
            return
        members = self.pids()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._forget()

    def stop(self, *, timeout: float = 30) -> None:
        """SIGTERM, a bounded wait for a clean stop, then SIGKILL of the process group."""
        process = self.process
        if process is None:
            return
        members = self.pids()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        for pid in members:  # whatever did not stop with it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        self._forget()

    def _forget(self) -> None:
        self.process = None
        if self in _LIVE:
            _LIVE.remove(self)


# --- workload ----------------------------------------------------------------------------------

NOOP_OUTPUT = {
    "type": "object",
    "properties": {"summary": {"type": "string"}},
    "required": ["summary"],
    "additionalProperties": False,
}


def noop_tool_step(key: str) -> dict[str, Any]:
    """A step that does (almost) nothing: a database tool reading no records."""
    return {
        "key": key,
        "kind": "tool",
        "category": "data_access",
        "tool": "records.get",
        "args": {"references": []},
    }


def llm_step(key: str) -> dict[str, Any]:
    return {
        "key": key,
        "kind": "llm",
        "category": "internal",
        "prompt": "Summarise in one line: {{ input.topic }}",
        "output_schema": NOOP_OUTPUT,
    }


def review_step(key: str) -> dict[str, Any]:
    return {"key": key, "kind": "review", "category": "internal", "instructions": "Check it."}


def bench_actor():
    from audit.services import Actor

    return Actor.system("bench")


def make_tenant(slug: str, *, capacity: int, weight: int = 1):
    from approvals.models import ApprovalPolicy
    from tenants.services import create_tenant

    tenant = create_tenant(
        slug=slug,
        name=f"Bench {slug}",
        actor=bench_actor(),
        max_concurrent_runs=capacity,
        priority_weight=weight,
    )
    # Without a policy a category is gated (fail closed): the bench's internal steps and
    # record reads run on their own, as a firm's would after its operators set that policy.
    for category in ("internal", "data_access"):
        ApprovalPolicy.objects.create(
            tenant=tenant, category=category, mode=ApprovalPolicy.Mode.AUTO
        )
    return tenant


def set_capacity(tenant, capacity: int) -> None:
    from tenants.models import Tenant

    Tenant.objects.filter(pk=tenant.pk).update(max_concurrent_runs=capacity)
    tenant.max_concurrent_runs = capacity


def make_role(tenant, slug: str, steps: list[dict[str, Any]], *, model: str = "offline-1"):
    """A role published the way every version is (one operator asks, another approves;
    the bench has no golden cases, so the request is a written override)."""
    from django.contrib.auth import get_user_model

    from audit.services import Actor
    from roles.services import (
        activate_role_version,
        approve_publication,
        create_role,
        create_role_version,
        request_publication,
    )
    from tenants.services import grant_membership

    tools = sorted({s["tool"] for s in steps if s["kind"] == "tool"})
    role = create_role(tenant=tenant, slug=slug, name=f"Bench {slug}", actor=bench_actor())
    version = create_role_version(
        role=role,
        definition={
            "model": {"name": model, "max_tokens": 50},
            "allowed_tools": tools,
            "allowed_data_kinds": ["bench"],  # an empty list would allow no reads at all
            "target_turnaround_minutes": 24 * 60,
            "steps": steps,
        },
        actor=bench_actor(),
    )
    operators = []
    for name in ("bench.ops", "bench.ops2"):
        user, _ = get_user_model().objects.get_or_create(username=name, is_staff=True)
        if not user.memberships.filter(tenant=tenant, kind="operator").exists():
            grant_membership(user=user, tenant=tenant, kind="operator", actor=bench_actor())
        operators.append(Actor.for_user(user))
    publication = request_publication(
        version=version, actor=operators[0], override_reason="Benchmark role: no golden cases."
    )
    approve_publication(publication=publication, actor=operators[1])
    activate_role_version(version=version, actor=operators[1])
    role.refresh_from_db()
    return role


# Deadlocks this process met in its own service calls (intake, decisions) and retried.
INTAKE_DEADLOCKS = {"count": 0}


def retry_deadlock(call: Callable[[], T], *, attempts: int = 5) -> T:
    """Call a service; retry it when PostgreSQL broke a deadlock by aborting it (the
    service's transaction rolled back, so nothing was written). Counted for the report."""
    from django.db import OperationalError

    for attempt in range(attempts):
        try:
            return call()
        except OperationalError as exc:
            if "deadlock detected" not in str(exc) or attempt == attempts - 1:
                raise
            INTAKE_DEADLOCKS["count"] += 1
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def start_runs(tenant, role, count: int, *, input_: dict | None = None) -> list[int]:
    from desk.models import Run
    from desk.services import start_run

    ids = []
    for i in range(count):
        run = retry_deadlock(
            lambda i=i: start_run(
                tenant=tenant,
                role=role,
                input=input_ if input_ is not None else {"topic": f"bench item {i}"},
                actor=bench_actor(),
                via=Run.Via.COMMAND,
            )
        )
        ids.append(run.pk)
    return ids


def open_capacity(tenant, capacity: int) -> list[int]:
    """Raise the tenant's capacity and admit its queued runs in one transaction (the
    worker's reaper would otherwise admit them on its own, at its next round); their
    doorbells ring as this commits. Returns the ids admitted."""
    from django.db import transaction

    from desk.services import admit_runs

    with transaction.atomic():
        set_capacity(tenant, capacity)
        return admit_runs(tenant_id=tenant.pk)


def count_runs(db: BenchDB, tenant_id: int, statuses: tuple[str, ...]) -> int:
    return db.scalar(
        "SELECT count(*) FROM desk_run WHERE tenant_id = %s AND status = ANY(%s)",
        [tenant_id, list(statuses)],
    )


def run_status_counts(db: BenchDB, tenant_ids: list[int] | None = None) -> dict[str, int]:
    if tenant_ids is None:
        rows = db.query("SELECT status, count(*) FROM desk_run GROUP BY status")
    else:
        rows = db.query(
            "SELECT status, count(*) FROM desk_run WHERE tenant_id = ANY(%s) GROUP BY status",
            [tenant_ids],
        )
    return dict(rows)


def note_problems(report: Report, cluster: Cluster, label: str) -> dict[str, int]:
    """Add a note for each kind of trouble the cluster logged; return the counts."""
    found = cluster.problems()
    trouble = {k: v for k, v in found.items() if v}
    if trouble:
        report.note(f"{label}: cluster log: " + ", ".join(f"{v} {k}" for k, v in trouble.items()))
    return found


def finished_window(db: BenchDB, tenant_ids: list[int], started: float) -> tuple[int, float]:
    """(completed steps, seconds from `started` (epoch) to the last step's finished_at)."""
    steps, last = db.query(
        "SELECT count(*), extract(epoch FROM max(finished_at)) FROM desk_steprun"
        " WHERE tenant_id = ANY(%s) AND status = 'completed'",
        [tenant_ids],
    )[0]
    return steps, (float(last) - started) if last else 0.0


# --- the machine -------------------------------------------------------------------------------


def machine(db: BenchDB | None = None) -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import django

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "django": django.get_version(),
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["django-q2"] = version("django-q2")
    try:
        admin = db.admin if db else pg_connect("postgres")
        info["postgresql"] = admin.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:
        info["postgresql"] = f"unknown ({exc})"
    with contextlib.suppress(Exception):
        info["redis"] = redis.Redis.from_url(REDIS_SERVER).info("server")["redis_version"]
    return info


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"agentdesk-{name}-"))
    yield path
    # Kept on purpose: the cluster logs are there to read after a surprising figure.


@contextlib.contextmanager
def bench_database(args, name: str, *, seed: bool = True) -> Iterator[BenchDB]:
    """A fresh database for one script (dropped at the end unless --keep-db)."""
    with workdir(name) as path:
        db = BenchDB(f"agentdesk_bench_{name}", path)
        print(f"  database {db.name}, work dir {path}", flush=True)
        db.prepare(seed=seed)
        try:
            yield db
        finally:
            stop_all_clusters()
            from django.db import connections

            with contextlib.suppress(Exception):
                connections.close_all()
            if not args.keep_db:
                db.drop()
