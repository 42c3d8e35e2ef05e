"""What runs inside a supervised django-q2 cluster so that its supervisor (desk.supervisor,
`manage.py desk_worker`) can see real progress, not merely live processes.

The supervisor starts `manage.py qcluster` with DESK_WORKER_RUN_DIR set to a directory of
its own and reads these files there (plain files: a process killed at any moment holds no
lock on them):

- `probe-request` / `probe-done`: the supervisor writes a number to the first; the pusher
  (through the broker class below) hands a probe task carrying it to the workers; a worker
  executes it and the monitor, having handled its result, writes the number to the second.
  A probe that comes back has been through every queue of the cluster.
- `sentinel`: touched by the sentinel's guard loop (twice a second, from django-q2's status
  save), which also reincarnates dead processes and runs django-q2's scheduler.
- `busy`: touched by a worker task's heartbeat while it executes runs (the probe may wait
  behind busy workers; a worker busy and beating is progress).

The brokers below are django-q2's ORM and Redis brokers with these hooks; settings install
the one that matches the configured broker. Without DESK_WORKER_RUN_DIR the hooks do
nothing. Their extra cost is a file touch at most once a second per process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis
from django_q.humanhash import uuid as humanhash_uuid
from django_q.signing import SignedPackage

RUN_DIR_VARIABLE = "DESK_WORKER_RUN_DIR"
PROBE_FUNC = "desk.cluster.probe"


def run_dir() -> Path | None:
    value = os.environ.get(RUN_DIR_VARIABLE)
    return Path(value) if value else None


_touched: dict[str, float] = {}


def touch(name: str, *, every: float = 1.0) -> None:
    """Update the mtime of `name` in the run dir (at most once per `every` seconds)."""
    directory = run_dir()
    now = time.monotonic()
    if directory is None or now - _touched.get(name, -every) < every:
        return
    _touched[name] = now
    path = directory / name
    try:
        os.utime(path)
    except FileNotFoundError:
        with contextlib.suppress(FileNotFoundError):  # the supervisor removed its run dir
            path.touch()


def beat_busy() -> None:
    """A worker task is alive and executing runs."""
    touch("busy", every=0.5)


def read_number(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def write_number(path: Path, number: int) -> None:
    """Replace the file's content atomically (a reader never sees it half written)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(str(number))
    os.replace(partial, path)


def probe(*, number: int) -> int:
    """The probe task: executed by a worker like any other task."""
    return number


def on_task_done(sender, task, **kwargs) -> None:
    """django-q2's post_execute, in the monitor: record a probe that came back."""
    directory = run_dir()
    if directory is not None and task.get("func") == PROBE_FUNC and task.get("success"):
        with contextlib.suppress(OSError):  # the supervisor is gone (and the cluster with it)
            write_number(directory / "probe-done", int(task["kwargs"]["number"]))


def on_task_start(sender, task, **kwargs) -> None:
    """django-q2's pre_execute, in a worker."""
    beat_busy()


class _Supervised:
    """Broker hooks: the pusher injects requested probes, the sentinel beats."""

    _last_probe = 0
    _checked_at = 0.0
    _parent = None

    def dequeue(self):
        directory = run_dir()
        if directory is not None:
            now = time.monotonic()
            if now - self._checked_at >= 0.25:
                self._checked_at = now
                number = read_number(directory / "probe-request")
                if number > self._last_probe:
                    self._last_probe = number
                    return [(None, _probe_package(number))]
        return super().dequeue()

    def set_stat(self, key, value, timeout):
        directory = run_dir()
        if directory is not None:
            # Called by the sentinel's guard loop only. A sentinel whose qcluster parent
            # died (with its supervisor) takes its whole process group down with it.
            if self._parent is None:
                self._parent = os.getppid()
            elif os.getppid() != self._parent:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            touch("sentinel", every=0.5)
        return super().set_stat(key, value, timeout)


def _probe_package(number: int) -> bytes:
    name, task_id = humanhash_uuid()
    return SignedPackage.dumps(
        {
            "id": task_id,
            "name": f"probe-{number}-{name}",
            "func": PROBE_FUNC,
            "args": (),
            "kwargs": {"number": number},
            "started": timezone.now(),
            "save": False,
            "timeout": 30,
        }
    )


class SupervisedORM(_Supervised, ORM):
    pass


class SupervisedRedis(_Supervised, Redis):
    pass
