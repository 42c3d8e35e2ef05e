"""Helpers for tests that drive real processes: `manage.py` subprocesses, bounded polls,
and checks that nothing a test started outlives it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import pytest
from django.conf import settings

T = TypeVar("T")

MANAGE_PY = str(Path(settings.BASE_DIR) / "manage.py")


def manage_command(*arguments: str) -> list[str]:
    return [sys.executable, MANAGE_PY, *arguments]


def process_env(tag_dir: Path, **overrides: str | None) -> dict[str, str]:
    """This process's environment for a child, with `DESK_VAR_DIR` set to `tag_dir`.

    The var dir keeps the child's files (mail, SQLite) out of the working tree and tags
    every process it starts, so `processes_tagged` can find leftovers. A None value
    removes a variable.
    """
    env = {**os.environ, "DESK_VAR_DIR": str(tag_dir), "PYTHONUNBUFFERED": "1"}
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_manage(*arguments: str, env: dict[str, str], timeout: float = 120):
    """Run one `manage.py` command to completion (bounded) and return the CompletedProcess."""
    return subprocess.run(
        manage_command(*arguments),
        cwd=settings.BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_demo_sqlite(directory: Path) -> str:
    """A migrated, seeded SQLite database file in `directory`; returns its DATABASE_URL."""
    url = f"sqlite:///{directory / 'agentdesk.sqlite3'}"
    env = process_env(directory, DATABASE_URL=url, REDIS_URL=None)
    for arguments in (("migrate", "--noinput", "-v0"), ("seed_demo",)):
        result = run_manage(*arguments, env=env)
        assert result.returncode == 0, f"{arguments} failed:\n{result.stdout}\n{result.stderr}"
    return url


def database_url_of_this_process() -> str:
    """DATABASE_URL of the database this test process uses (pytest-django's test database)."""
    from django.db import connection

    db = connection.settings_dict
    auth = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = db["HOST"] or "127.0.0.1"
    port = db["PORT"] or "5432"
    return f"postgres://{auth + '@' if auth else ''}{host}:{port}/{quote(db['NAME'], safe='')}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    check: Callable[[], T],
    *,
    what: str,
    timeout: float = 60,
    interval: float = 0.2,
    process: subprocess.Popen | None = None,
) -> T:
    """Call `check` until it returns something truthy (returned), for at most `timeout` s.

    Fails the test on timeout, or at once when `process` (the thing doing the work) has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"process exited with {process.returncode} while waiting for {what}")
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout: float = 30):
    """Ask a process (started in its own process group) to stop; kill its group if it won't."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)


def _proc_field(pid: str, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def processes_tagged(tag_dir: Path) -> list[str]:
    """Live (non-zombie) processes whose environment has DESK_VAR_DIR=`tag_dir`."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to find child processes")
    needle = f"DESK_VAR_DIR={tag_dir}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            if needle not in _proc_field(pid, "environ").split(b"\0"):
                continue
            stat = _proc_field(pid, "stat").decode()
            state = stat.rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                continue
            cmdline = _proc_field(pid, "cmdline").replace(b"\0", b" ").decode()
            found.append(f"{pid} {cmdline}")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def kill_tagged(tag_dir: Path) -> None:
    """Last-resort cleanup: SIGKILL whatever a test left running."""
    for line in processes_tagged(tag_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(line.split()[0]), signal.SIGKILL)


# --- fault injection (tests/e2e/test_faults.py) -----------------------------------------------


def process_group(pgid: int) -> dict[int, int]:
    """pid -> parent pid of the live (non-zombie) processes in process group `pgid`."""
    members = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = _proc_field(pid, "stat").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members[int(pid)] = int(fields[1])
    return members


def kill_group(process: subprocess.Popen, *, timeout: float = 30) -> None:
    """SIGKILL a process started in its own process group, with all its children."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)
    wait_for(
        lambda: not process_group(process.pid),
        what=f"process group {process.pid} to die",
        timeout=timeout,
        interval=0.05,
    )


def wait_for_database(
    check: Callable[[], T],
    *,
    what: str,
    timeout: float = 60,
    interval: float = 0.2,
    process: subprocess.Popen | None = None,
) -> T:
    """`wait_for`, treating a broken database connection (say, PostgreSQL restarting) as
    "not yet": this process's connection is closed so that the next try reconnects."""
    from django.db import InterfaceError, OperationalError, connection

    def tolerant():
        try:
            return check()
        except (OperationalError, InterfaceError):
            connection.close()
            return None

    return wait_for(tolerant, what=what, timeout=timeout, interval=interval, process=process)


def restart_postgresql(*, timeout: float = 60) -> float:
    """Restart the local PostgreSQL cluster (fast shutdown: every session is cut) and wait,
    bounded, until it accepts connections again. Returns the seconds it took."""
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    started = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"],
        check=True,
        capture_output=True,
        timeout=timeout,
    )

    def ready() -> bool:
        probe = subprocess.run(
            ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432", "-t", "1"],
            capture_output=True,
            timeout=10,
        )
        return probe.returncode == 0

    wait_for(ready, what="PostgreSQL to accept connections", timeout=timeout, interval=0.1)
    return time.monotonic() - started
