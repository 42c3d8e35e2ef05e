"""`manage.py serve_all` as `make run` uses it: a real process tree on a free port, against
a temporary SQLite file (the embedded default), stopped the way a person stops it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from desk.demo import USERS
from tests.e2e.support import (
    free_port,
    kill_tagged,
    make_demo_sqlite,
    manage_command,
    process_env,
    processes_tagged,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.cluster


class ServeAll:
    """A running `serve_all` with its output in files (pipes could fill up and block it)."""

    def __init__(self, workdir: Path, database_url: str, port: int):
        self.workdir = workdir
        self.port = port
        self.stdout_path = workdir / "serve_all.out"
        self.stderr_path = workdir / "serve_all.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(
                manage_command("serve_all", "--port", str(port), "--stop-timeout", "20"),
                cwd=Path(__file__).resolve().parents[2],
                env=process_env(workdir, DATABASE_URL=database_url, REDIS_URL=None),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                process_group=0,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def child_pids(self) -> dict[str, int]:
        """The pids the banner names, once it is printed."""
        found = re.search(r"web server pid (\d+), worker pid (\d+)", self.stdout)
        if not found:
            return {}
        return {"web server": int(found[1]), "worker": int(found[2])}

    def login_page_status(self) -> int | None:
        url = f"http://127.0.0.1:{self.port}/admin/login/"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def wait_until_serving(self) -> dict[str, int]:
        wait_for(
            lambda: self.login_page_status() == 200,
            what="/admin/login/ to answer 200",
            process=self.process,
        )
        return wait_for(self.child_pids, what="the banner with the pids", process=self.process)

    def wait_for_exit(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def report(self) -> str:
        return f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


@pytest.fixture(scope="module")
def demo_database(tmp_path_factory) -> str:
    return make_demo_sqlite(tmp_path_factory.mktemp("serve_all_db"))


@pytest.fixture
def start_serve_all(demo_database, tmp_path):
    started: list[ServeAll] = []

    def start(port: int | None = None) -> ServeAll:
        server = ServeAll(tmp_path, demo_database, port or free_port())
        started.append(server)
        return server

    yield start
    for server in started:
        stop_process(server.process, sig=signal.SIGTERM)
        print(server.report())  # shown when the test failed
    kill_tagged(tmp_path)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serves_the_admin_and_stops_both_children_cleanly(start_serve_all, tmp_path, stop_signal):
    server = start_serve_all()
    pids = server.wait_until_serving()

    server.process.send_signal(stop_signal)
    exit_code = server.wait_for_exit()

    assert exit_code == 0, server.report()
    assert processes_tagged(tmp_path) == [], server.report()
    assert set(pids) == {"web server", "worker"}
    out = server.stdout
    assert f"http://127.0.0.1:{server.port}/admin/" in out
    assert ", ".join(USERS) in out
    assert "password 'agentdesk-demo'" in out
    assert "Database:  SQLite " in out
    assert "Broker:    Django ORM (database 'default')" in out
    assert "Provider:  offline" in out
    assert f"Got {signal.Signals(stop_signal).name}" in out
    assert out.rstrip().endswith("AgentDesk stopped.")


def test_a_dead_worker_stops_the_web_server_and_fails(start_serve_all, tmp_path):
    server = start_serve_all()
    pids = server.wait_until_serving()

    os.killpg(pids["worker"], signal.SIGKILL)  # the worker dies; its cluster dies with it
    exit_code = server.wait_for_exit()

    assert exit_code == 1, server.report()
    assert "The worker exited unexpectedly" in server.stderr
    assert "stopped the web server" in server.stderr
    assert processes_tagged(tmp_path) == [], server.report()


def test_a_web_server_that_cannot_start_stops_the_worker_and_fails(start_serve_all, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = start_serve_all(port=taken.getsockname()[1])

        exit_code = server.wait_for_exit()

    assert exit_code == 1, server.report()
    assert "That port is already in use" in server.stderr
    assert "The web server exited unexpectedly" in server.stderr
    assert "stopped the worker" in server.stderr
    assert processes_tagged(tmp_path) == [], server.report()
