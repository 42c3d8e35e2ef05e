import os
import subprocess
from pathlib import Path

import pytest

from desk.demo import seed_demo
from desk.models import Run, StepRun
from tests.conftest import INTAKE_INPUT
from tests.e2e.support import (
    database_url_of_this_process,
    kill_group,
    manage_command,
    process_env,
    process_group,
    wait_for,
)
from tests.e2e.test_cluster import start

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_probe(tmp_path, fake_openai):
    seed_demo()
    fake_openai.latency = 3
    env = process_env(
        tmp_path,
        DATABASE_URL=database_url_of_this_process(),
        DESK_Q_POLL="0.1",
        DESK_Q_WORKERS="2",
        DESK_LLM_PROVIDER="openai",
        OPENAI_BASE_URL=fake_openai.base_url,
        REDIS_URL=None,
    )
    log = open(tmp_path / "log", "w")
    p = subprocess.Popen(
        manage_command("qcluster"),
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        process_group=0,
    )
    try:
        start("harbor-legal", "intake-coordinator", INTAKE_INPUT)
        step = wait_for(
            lambda: StepRun.objects.filter(status="running").first(), what="running", timeout=30
        )
        print("owner", step.lease_owner, "main", p.pid, "group", process_group(p.pid))
        print(Run.objects.count(), os.getpid())
    finally:
        kill_group(p)
        print((tmp_path / "log").read_text())
