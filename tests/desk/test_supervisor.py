"""The supervisor's judgement of its cluster, without processes: probes that come back or
not, busy workers, a silent sentinel, a dead cluster, restarts that keep failing."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field

import pytest

from audit.models import AuditEvent
from desk import cluster, supervisor
from desk.models import WorkerHeartbeat
from desk.supervisor import Supervisor, Timing

TIMING = Timing(probe_every=5, probe_timeout=15, busy_grace=15, sentinel_grace=10, startup_grace=30)


@dataclass
class FakeProcess:
    returncode: int | None = None

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode


@dataclass
class FakeChild:
    started_at: float
    process: FakeProcess = field(default_factory=FakeProcess)
    name: str = "cluster"
    pid: int = 424242

    def alive(self) -> bool:
        return self.process.returncode is None


@pytest.fixture
def sup():
    watcher = Supervisor(name="test-worker", timing=TIMING)
    yield watcher
    shutil.rmtree(watcher.run_dir, ignore_errors=True)


def aged(sup: Supervisor, name: str, seconds: float) -> None:
    """The run-dir file `name`, last touched `seconds` ago."""
    path = sup.run_dir / name
    path.touch()
    then = time.time() - seconds
    os.utime(path, (then, then))


def running_for(sup: Supervisor, seconds: float) -> float:
    now = time.monotonic()
    sup.cluster = FakeChild(started_at=now - seconds)
    aged(sup, "sentinel", 0)
    return now


def test_a_probe_that_comes_back_is_progress(sup):
    now = running_for(sup, 60)
    assert sup.cluster_problem(now) == ""  # sends probe 1
    assert cluster.read_number(sup.run_dir / "probe-request") == 1

    cluster.write_number(sup.run_dir / "probe-done", 1)

    assert sup.cluster_problem(now + 1) == ""
    assert sup.probe_ok_at == now + 1
    assert sup.cluster_problem(now + 7) == ""  # the next probe after probe_every
    assert cluster.read_number(sup.run_dir / "probe-request") == 2


def test_a_probe_lost_while_no_worker_is_busy_is_a_stuck_cluster(sup):
    now = running_for(sup, 60)
    sup.cluster_problem(now)
    aged(sup, "busy", 60)

    assert sup.cluster_problem(now + 10) == ""  # within the probe's patience
    problem = sup.cluster_problem(now + 16)

    assert problem == "a probe did not come back in 16 s and no worker is busy"


def test_a_probe_may_wait_behind_workers_that_are_busy_and_beating(sup):
    now = running_for(sup, 60)
    sup.cluster_problem(now)
    aged(sup, "busy", 2)

    assert sup.cluster_problem(now + 120) == ""


def test_a_busy_beat_that_went_silent_no_longer_excuses_a_lost_probe(sup):
    now = running_for(sup, 60)
    sup.cluster_problem(now)
    aged(sup, "busy", TIMING.busy_grace + 1)

    assert "no worker is busy" in sup.cluster_problem(now + 20)


def test_a_new_cluster_gets_its_startup_grace(sup):
    now = running_for(sup, 1)
    sup.cluster_problem(now)
    (sup.run_dir / "sentinel").unlink()

    assert sup.cluster_problem(now + 20) == ""  # no sentinel beat yet, probe not back yet


def test_a_silent_sentinel_is_a_stuck_cluster(sup):
    now = running_for(sup, 60)
    aged(sup, "sentinel", TIMING.sentinel_grace + 1)

    assert sup.cluster_problem(now) == "the sentinel has not beaten for 10 s"


def test_a_dead_cluster_is_reported_with_its_exit_code(sup):
    now = running_for(sup, 60)
    sup.cluster.process.returncode = -9

    assert sup.cluster_problem(now) == "the cluster exited (code -9)"


def test_restarts_that_keep_failing_wait_longer_and_are_audited(sup, monkeypatch, db):
    started = []
    monkeypatch.setattr(sup, "_start_cluster", lambda: started.append(time.monotonic()))
    monkeypatch.setattr(supervisor, "_kill_group", lambda child: None)
    pauses = []
    for _ in range(4):
        sup.cluster = FakeChild(started_at=time.monotonic())
        before = time.monotonic()
        sup._replace_cluster("the cluster exited (code 1)")
        # In whole seconds: the audit write in between takes some time too.
        pauses.append(int(sup.next_start_at - before))

    assert pauses == [0, 1, 3, 7]  # then capped at backoff_max
    assert len(started) == 1  # only the first restart was immediate
    events = AuditEvent.objects.filter(action="worker.cluster_restarted", tenant=None)
    assert [e.data["restarts"] for e in events.order_by("seq")] == [1, 2, 3, 4]
    assert events.first().reason == "the cluster exited (code 1)"


def test_the_heartbeat_row_says_what_the_supervisor_knows(sup, db):
    now = running_for(sup, 60)
    sup.probe_ok_at = now - 3
    sup.restarts = 2
    sup.restart_reason = "a probe did not come back in 16 s and no worker is busy"

    sup._write_heartbeat()

    beat = WorkerHeartbeat.objects.get(name="test-worker")
    assert beat.pid == os.getpid()
    assert beat.cluster_pid == 424242
    assert beat.cluster_restarts == 2
    assert beat.stopped_at is None
    assert 2 <= (beat.beat_at - beat.probe_ok_at).total_seconds() <= 4
    assert beat.last_restart_reason.startswith("a probe did not come back")


def test_systemd_hears_ready_watchdog_and_stopping(tmp_path, monkeypatch):
    address = str(tmp_path / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", address)

    for message in ("READY=1", "WATCHDOG=1", "STOPPING=1"):
        supervisor.sd_notify(message)

    assert [listener.recv(100) for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]
    listener.close()


def test_without_systemd_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)

    supervisor.sd_notify("READY=1")  # does nothing, raises nothing
