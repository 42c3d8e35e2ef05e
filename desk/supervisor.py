"""`manage.py desk_worker`: a django-q2 cluster and a sweeper, supervised on real progress.

django-q2 replaces a dead worker, but a process killed at the wrong moment can leave one of
the cluster's multiprocessing queues locked, and then the whole cluster stops delivering
while every process looks alive (upstream issues #23 and #339). So this supervisor does not
trust liveness; it watches progress (desk.cluster):

- it sends a probe through the cluster every few seconds (broker, pusher, task queue,
  worker, result queue, monitor) and expects it back. A probe may wait behind workers that
  are busy and heartbeating; if it does not come back while no worker is busy, the cluster
  is stuck;
- the sentinel (which reincarnates processes and runs django-q2's scheduler) must beat;
- the cluster's main process must be alive.

On any of these it kills the cluster's whole process group and starts a new one (with a
growing pause if it keeps failing at once), logs it, audits it on the platform's chain and
records it on its heartbeat row, which `desk_health` reads. Steps the dead cluster was
executing are taken over once their leases lapse; doorbells it lost are re-rung by the reaper.

The sweeper (`manage.py desk_sweeper`, the reaper and the other sweeps) runs beside the
cluster, not inside it, and is restarted when it dies or stops beating. Both children die
with the supervisor (PR_SET_PDEATHSIG, and the sentinel checks its parent), so a supervisor
restarted by systemd never leaves a cluster behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from desk import cluster, services

logger = logging.getLogger("desk.supervisor")

PR_SET_PDEATHSIG = 1


@dataclass
class Timing:
    """How patient the supervisor is (seconds)."""

    tick: float = 0.5  # how often it looks
    probe_every: float = 5.0  # a new probe this long after the last one came back
    probe_timeout: float = 15.0  # a probe may take this long while no worker is busy
    # A worker counts as busy this long after its last beat: longer than a quick task
    # (a mail hand-over) may take without beating.
    busy_grace: float = 30.0
    # The sentinel may go this long without a beat (its loop also runs django-q2's scheduler).
    sentinel_grace: float = 30.0
    startup_grace: float = 30.0  # a new cluster's first probe and beat may take this long
    sweeper_grace: float = 120.0  # the sweeper may go this long without a beat
    heartbeat_every: float = 5.0  # how often the heartbeat row is written
    stop_timeout: float = 10.0  # a child asked to stop gets this long before SIGKILL
    backoff_max: float = 30.0  # the longest pause between restarts that keep failing

    @classmethod
    def from_settings(cls) -> Timing:
        return cls(**getattr(settings, "DESK_SUPERVISOR_TIMING", {}))


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


def _die_with_parent() -> None:
    """In a child, before exec: SIGKILL when the supervisor dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill_group(child: Child) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.process.wait(timeout=10)


def _age(path: Path) -> float:
    """Seconds since the file was last touched (infinite when it does not exist)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify, WatchdogSec=) how we are; nothing without NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        sock.connect(address)
        sock.sendall(message.encode())


class Supervisor:
    def __init__(self, *, name: str, workers: int | None = None, timing: Timing | None = None):
        self.name = name
        self.host = socket.gethostname()
        self.workers = workers
        self.timing = timing or Timing.from_settings()
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"agentdesk-worker-{os.getpid()}-"))
        self.cluster: Child | None = None
        self.sweeper: Child | None = None
        self.stop_requested: int | None = None
        self.restarts = 0
        self.failures_in_a_row = 0
        self.restart_reason = ""
        self.next_start_at = 0.0
        self.probe_number = 0
        self.probe_sent_at: float | None = None
        self.probe_ok_at: float | None = None
        self.last_heartbeat = 0.0
        self.started_at = timezone.now()
        self.cluster_started_at = None

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        logger.info("worker %s supervising in %s", self.name, self.run_dir)
        try:
            self._start_cluster()
            self._start_sweeper()
            sd_notify("READY=1")
            while self.stop_requested is None:
                self.check()
                sd_notify("WATCHDOG=1")
                time.sleep(self.timing.tick)
        finally:
            sd_notify("STOPPING=1")
            self._stop_children()
            self._write_heartbeat(stopped=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = signum

    def check(self) -> None:
        """One look at the children; replace what is dead or stuck."""
        now = time.monotonic()
        if self.cluster is None:
            if now >= self.next_start_at:
                self._start_cluster()
        else:
            problem = self.cluster_problem(now)
            if problem:
                self._replace_cluster(problem)
        if self.sweeper is None or not self.sweeper.alive():
            self._start_sweeper()
        elif now - self.sweeper.started_at > self.timing.startup_grace and (
            _age(self.run_dir / "sweeper") > self.timing.sweeper_grace
        ):
            logger.critical("worker %s: the sweeper stopped beating; restarting it", self.name)
            _kill_group(self.sweeper)
            self._start_sweeper()
        if now - self.last_heartbeat >= self.timing.heartbeat_every:
            self._write_heartbeat()

    def cluster_problem(self, now: float) -> str:
        """Why the cluster must be replaced, or "" when it is making progress."""
        child = self.cluster
        if not child.alive():
            return f"the cluster exited (code {child.process.returncode})"
        done = cluster.read_number(self.run_dir / "probe-done")
        if self.probe_sent_at is not None and done >= self.probe_number:
            self.probe_ok_at = now
            self.probe_sent_at = None
            self.failures_in_a_row = 0
        young = now - child.started_at < self.timing.startup_grace
        if not young and _age(self.run_dir / "sentinel") > self.timing.sentinel_grace:
            return f"the sentinel has not beaten for {self.timing.sentinel_grace:g} s"
        if self.probe_sent_at is None:
            if self.probe_ok_at is None or now - self.probe_ok_at >= self.timing.probe_every:
                self._send_probe(now)
            return ""
        waited = now - self.probe_sent_at
        patience = self.timing.probe_timeout + (self.timing.startup_grace if young else 0)
        if waited > patience and _age(self.run_dir / "busy") > self.timing.busy_grace:
            return f"a probe did not come back in {waited:.0f} s and no worker is busy"
        return ""

    def _send_probe(self, now: float) -> None:
        self.probe_number += 1
        cluster.write_number(self.run_dir / "probe-request", self.probe_number)
        self.probe_sent_at = now

    # --- children ---------------------------------------------------------------------

    def _spawn(self, name: str, arguments: list[str]) -> Child:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
            "PYTHONUNBUFFERED": "1",
            cluster.RUN_DIR_VARIABLE: str(self.run_dir),
            "DESK_WORKER_NAME": self.name,
        }
        if self.workers:
            env["DESK_Q_WORKERS"] = str(self.workers)
        process = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), *arguments],
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            process_group=0,  # its own group: one kill reaches every process it forked
            preexec_fn=_die_with_parent,
        )
        return Child(name=name, process=process)

    def _start_cluster(self) -> None:
        for stale in ("probe-request", "probe-done", "sentinel", "busy"):
            with contextlib.suppress(FileNotFoundError):
                (self.run_dir / stale).unlink()
        self.probe_number = 0
        self.probe_sent_at = None
        self.probe_ok_at = None
        self.cluster = self._spawn("cluster", ["qcluster"])
        self.cluster_started_at = timezone.now()
        logger.info("worker %s: cluster started (pid %s)", self.name, self.cluster.pid)
        self._write_heartbeat()

    def _start_sweeper(self) -> None:
        self.sweeper = self._spawn("sweeper", ["desk_sweeper"])

    def _replace_cluster(self, reason: str) -> None:
        self.restarts += 1
        self.failures_in_a_row += 1
        self.restart_reason = reason
        pause = min(self.timing.backoff_max, 2 ** (self.failures_in_a_row - 1) - 1)
        logger.critical(
            "worker %s: replacing the cluster (pid %s): %s%s",
            self.name,
            self.cluster.pid,
            reason,
            f"; starting a new one in {pause:g} s" if pause else "",
        )
        _kill_group(self.cluster)
        self.cluster = None
        self.next_start_at = time.monotonic() + pause
        try:
            services.record_cluster_restart(
                name=self.name, host=self.host, reason=reason, restarts=self.restarts
            )
        except Exception:
            logger.exception("worker %s: could not audit the restart", self.name)
        if not pause:
            self._start_cluster()

    def _stop_children(self) -> None:
        children = [c for c in (self.cluster, self.sweeper) if c is not None]
        for child in children:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.timing.stop_timeout
        while any(c.alive() for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        for child in children:
            if child.alive():
                logger.warning("worker %s: the %s did not stop in time", self.name, child.name)
            _kill_group(child)  # also whatever the child left behind in its group

    # --- heartbeat --------------------------------------------------------------------

    def _write_heartbeat(self, *, stopped: bool = False) -> None:
        self.last_heartbeat = time.monotonic()
        now = timezone.now()
        probe_ok_at = None
        if self.probe_ok_at is not None:
            probe_ok_at = now - timedelta(seconds=time.monotonic() - self.probe_ok_at)
        try:
            services.record_worker_heartbeat(
                name=self.name,
                host=self.host,
                pid=os.getpid(),
                started_at=self.started_at,
                beat_at=now,
                stopped_at=now if stopped else None,
                cluster_pid=self.cluster.pid if self.cluster else None,
                cluster_started_at=self.cluster_started_at,
                cluster_restarts=self.restarts,
                probe_ok_at=probe_ok_at,
                last_restart_reason=self.restart_reason,
            )
        except Exception:  # the database is away: keep supervising; health reports it
            logger.exception("worker %s: could not write its heartbeat", self.name)
            with contextlib.suppress(Exception):
                from django.db import connection

                connection.close()
