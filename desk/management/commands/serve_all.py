"""`manage.py serve_all`: the web server and a worker side by side (`make run`).

Both run as child processes (`manage.py runserver --noreload` and `manage.py desk_worker`,
which supervises a django-q2 cluster and the sweeper and replaces a cluster that stops
making progress), each in its own process group, so a Ctrl-C at the terminal reaches only
this command, which then stops them in order: a polite signal, a bounded wait, then SIGKILL
to the whole group (the worker's own children die with it). If either child dies, the other
is stopped and the command exits non-zero.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from desk.demo import DEMO_PASSWORD, USERS

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
WATCH_INTERVAL_SECONDS = 0.2
READY_TIMEOUT_SECONDS = 30


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    stop_signal: int  # the signal each program treats as "shut down cleanly"

    @property
    def pid(self) -> int:
        return self.process.pid


def describe_database(db: dict | None = None) -> str:
    db = db or settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"SQLite {db['NAME']}"
    where = f"{db.get('HOST') or 'local socket'}:{db.get('PORT') or 'default port'}"
    vendor = "PostgreSQL" if db["ENGINE"].endswith("postgresql") else db["ENGINE"]
    return f"{vendor} '{db['NAME']}' on {where}"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def describe_broker() -> str:
    conf = settings.Q_CLUSTER
    if conf.get("redis"):
        redis = conf["redis"]
        return f"Redis {_without_password(redis) if isinstance(redis, str) else redis}"
    if conf.get("orm"):
        return f"Django ORM (database '{conf['orm']}')"
    return "django-q2 default"


def describe_provider() -> str:
    provider = settings.DESK_LLM_PROVIDER
    if provider == "openai":
        return f"openai ({settings.OPENAI_BASE_URL})"
    if provider == "offline":
        return "offline (deterministic, no network)"
    return provider


class Command(BaseCommand):
    help = "Run the web server and a supervised worker together; Ctrl-C stops both."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Default: 127.0.0.1.")
        parser.add_argument("--port", type=int, default=8000, help="Default: 8000.")
        parser.add_argument(
            "--stop-timeout",
            type=float,
            default=15.0,
            help="Seconds to wait for each child to stop before killing it (default 15).",
        )

    def handle(self, *args, host, port, stop_timeout, **options):
        self.signals: list[int] = []
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        children: list[Child] = []
        died = None
        try:
            addrport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            # --insecure: serve the admin's static files although DEBUG is off (local use).
            children.append(
                self._spawn(
                    "web server",
                    ["runserver", addrport, "--noreload", "--insecure"],
                    stop_signal=signal.SIGINT,
                )
            )
            children.append(self._spawn("worker", ["desk_worker"], stop_signal=signal.SIGTERM))
            self._wait_until_listening(host, port, children)
            if not self.signals and all(c.process.poll() is None for c in children):
                self._banner(host, port, children)
            died = self._watch(children)
        finally:
            self._stop_all(children, stop_timeout)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if died is not None:
            others = [c.name for c in children if c is not died]
            raise CommandError(
                f"The {died.name} exited unexpectedly (exit code {died.process.returncode}); "
                f"stopped the {' and the '.join(others)}."
            )
        self.stdout.write("AgentDesk stopped.")

    # --- children ---------------------------------------------------------------------

    def _on_signal(self, signum, frame):
        self.signals.append(signum)

    def _spawn(self, name: str, arguments: list[str], *, stop_signal: int) -> Child:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings.SETTINGS_MODULE,
            "PYTHONUNBUFFERED": "1",
        }
        process = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), *arguments],
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            process_group=0,  # its own group: terminal signals come to us, kills reach all
        )
        return Child(name=name, process=process, stop_signal=stop_signal)

    def _wait_until_listening(self, host: str, port: int, children: list[Child]) -> None:
        """Hold the banner back until the web server accepts connections (bounded)."""
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        probe_host = "::1" if probe_host == "::" else probe_host
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline and not self.signals:
            if any(c.process.poll() is not None for c in children):
                return
            try:
                with socket.create_connection((probe_host, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)

    def _watch(self, children: list[Child]) -> Child | None:
        """Wait for a stop signal (returns None) or a child's exit (returns that child)."""
        while not self.signals:
            for child in children:
                if child.process.poll() is not None:
                    return child
            time.sleep(WATCH_INTERVAL_SECONDS)
        name = signal.Signals(self.signals[0]).name
        self.stdout.write(f"Got {name}; stopping the web server and the worker...")
        self.stdout.flush()
        return None

    def _stop_all(self, children: list[Child], timeout: float) -> None:
        for child in children:
            if child.process.poll() is None:
                _send(child.pid, child.stop_signal)
        signals_seen = len(self.signals)
        deadline = time.monotonic() + timeout
        while any(c.process.poll() is None for c in children):
            if time.monotonic() >= deadline or len(self.signals) > signals_seen + 1:
                # Out of patience, or asked twice more: no more waiting.
                break
            time.sleep(0.1)
        for child in children:
            if child.process.poll() is None:
                self.stderr.write(f"The {child.name} did not stop in time; killing it.")
            # Also reaps anything the child left behind in its group (orphaned workers).
            _kill_group(child.pid)
            child.process.wait()

    def _banner(self, host: str, port: int, children: list[Child]) -> None:
        shown_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
        if ":" in shown_host and not shown_host.startswith("["):
            shown_host = f"[{shown_host}]"
        pids = ", ".join(f"{c.name} pid {c.pid}" for c in children)
        lines = [
            "",
            "AgentDesk is running.",
            f"  Admin:     http://{shown_host}:{port}/admin/",
            f"  Logins:    {', '.join(USERS)} (password '{DEMO_PASSWORD}'; from seed_demo)",
            f"  Database:  {describe_database()}",
            f"  Broker:    {describe_broker()}",
            f"  Provider:  {describe_provider()}",
            f"  Processes: {pids}",
            "Press Ctrl-C to stop both.",
            "",
        ]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()


def _send(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
