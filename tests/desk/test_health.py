"""Health you can probe: `GET /healthz` for load balancers, `manage.py desk_health` for
systemd and monitoring. Each way the runtime can stall must make it fail, loudly."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import Schedule

from desk.models import StepRun, Sweep, WorkerHeartbeat
from desk.services import sweep_specs


def healthy_worker(name="w1", **fields) -> WorkerHeartbeat:
    now = timezone.now()
    defaults = {
        "host": "worker-1",
        "pid": 4242,
        "started_at": now - timedelta(hours=1),
        "beat_at": now,
        "cluster_pid": 4243,
        "cluster_started_at": now - timedelta(hours=1),
        "probe_ok_at": now,
    }
    return WorkerHeartbeat.objects.create(name=name, **{**defaults, **fields})


def sweeps_succeeded(ago: float = 1) -> None:
    when = timezone.now() - timedelta(seconds=ago)
    for spec in sweep_specs():
        Sweep.objects.update_or_create(
            name=spec.name, defaults={"claimed_at": when, "succeeded_at": when}
        )


def health(*args) -> tuple[int, str, dict]:
    """(exit status, first line, JSON report) of `desk_health`."""
    out = StringIO()
    status = 0
    try:
        call_command("desk_health", *args, stdout=out)
    except SystemExit as exc:
        status = exc.code
    first, _, body = out.getvalue().partition("\n")
    return status, first, json.loads(body)


@pytest.fixture
def everything_fine(demo):
    healthy_worker()
    sweeps_succeeded()


def test_a_running_system_is_healthy(everything_fine):
    status, line, report = health()

    assert status == 0
    assert line.startswith("ok: ")
    assert report["status"] == "ok"
    names = {check["name"] for check in report["checks"]}
    assert names >= {"database", "broker", "scheduler", "ready steps", "worker w1"}
    assert {f"sweep {spec.name}" for spec in sweep_specs()} <= names


def test_no_worker_at_all_fails(demo):
    sweeps_succeeded()

    status, line, report = health()

    assert status == 1
    assert line == "unhealthy: workers: no worker is running (no heartbeat)"
    assert report["status"] == "fail"


def test_a_worker_that_stopped_beating_is_named(everything_fine):
    healthy_worker("w2", beat_at=timezone.now() - timedelta(seconds=90))

    status, line, _ = health()

    assert status == 1
    assert line == "unhealthy: worker w2: no heartbeat for 90 s"


def test_a_worker_whose_cluster_passes_no_probe_fails_with_its_last_restart(everything_fine):
    healthy_worker(
        "w2",
        probe_ok_at=timezone.now() - timedelta(seconds=300),
        last_restart_reason="a probe did not come back in 16 s and no worker is busy",
    )

    status, line, _ = health()

    assert status == 1
    assert line.startswith("unhealthy: worker w2: its cluster last passed a probe 300 s ago")
    assert "no worker is busy" in line


def test_a_worker_stopped_cleanly_is_not_missing(everything_fine):
    healthy_worker("retired", beat_at=timezone.now() - timedelta(days=2), stopped_at=timezone.now())

    assert health()[0] == 0


@pytest.mark.parametrize("sweep", ["reaper", "approvals"])
def test_a_sweep_that_has_not_run_fails(everything_fine, sweep):
    Sweep.objects.filter(name=sweep).update(
        succeeded_at=timezone.now() - timedelta(seconds=200),
        last_error="OperationalError: the database system is shutting down\nTraceback...",
    )

    status, line, _ = health()

    assert status == 1
    assert line == (
        f"unhealthy: sweep {sweep}: last succeeded 200 s ago; last error: "
        "OperationalError: the database system is shutting down"
    )


def test_an_hourly_sweep_whose_last_round_failed_fails_at_once(everything_fine):
    Sweep.objects.filter(name="audit_checkpoints").update(
        succeeded_at=timezone.now() - timedelta(seconds=30),
        last_error="SigningKeyMissing: No audit signing key at /x\nTraceback...",
    )

    status, line, _ = health()

    assert (status, line) == (
        1,
        "unhealthy: sweep audit_checkpoints: its last round failed: "
        "SigningKeyMissing: No audit signing key at /x",
    )


def test_a_missing_audit_signing_key_fails(everything_fine, settings, tmp_path):
    settings.AUDIT_SIGNING_KEY_FILE = tmp_path / "gone.key"

    status, line, _ = health()

    assert status == 1
    assert line.startswith("unhealthy: audit signing key: No audit signing key at ")


def test_a_sweep_that_never_ran_fails(everything_fine):
    Sweep.objects.filter(name="reaper").delete()

    status, line, _ = health()

    assert (status, line) == (1, "unhealthy: sweep reaper: last succeeded never")


def test_ready_work_nobody_takes_fails(everything_fine, start_intake):
    run = start_intake()
    StepRun.objects.filter(run=run, index=0).update(
        ready_at=timezone.now() - timedelta(seconds=150)
    )

    status, line, _ = health()

    assert status == 1
    assert line == "unhealthy: ready steps: a ready step has waited 150 s"
    assert health("--ready-max-age=200")[0] == 0


def test_a_schedule_django_q2_did_not_fire_fails(everything_fine):
    Schedule.objects.create(
        name="nightly-digest",
        func="desk.tasks.advance_run",
        schedule_type=Schedule.DAILY,
        next_run=timezone.now() - timedelta(minutes=5),
    )

    status, line, _ = health()

    assert status == 1
    assert line.startswith("unhealthy: scheduler: schedule 'nightly-digest' due 300 s ago")


def test_an_unreachable_broker_fails(everything_fine, monkeypatch):
    monkeypatch.setattr(Conf, "BROKER_CLASS", "desk.cluster.SupervisedRedis")
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:1/0")

    status, line, _ = health()

    assert status == 1
    assert line.startswith("unhealthy: broker: unreachable: ConnectionError")


@pytest.mark.parametrize("argument", ["--max-age=0", "--ready-max-age=-5"])
def test_nonsense_thresholds_are_refused(db, argument):
    with pytest.raises(CommandError, match="must be positive"):
        call_command("desk_health", argument, stdout=StringIO())


class TestHealthz:
    def test_answers_without_a_login(self, client, db):
        response = client.get("/healthz")

        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert [check["name"] for check in body["checks"]] == ["database"]
        assert response["Cache-Control"].startswith("max-age=0")

    def test_a_database_that_is_down_is_a_json_503_not_a_crash(self, client, db, monkeypatch):
        def down(*args, **kwargs):
            raise OperationalError("connection refused")

        with monkeypatch.context() as patched:
            patched.setattr("desk.health.connection.cursor", down)
            response = client.get("/healthz")

        assert response.status_code == 503
        assert response.json()["status"] == "fail"
        assert "connection refused" in response.json()["reason"]

    def test_only_get(self, client, db):
        assert client.post("/healthz").status_code == 405


def test_a_retired_worker_forgotten_by_platform_staff_is_no_longer_missing(
    client, everything_fine, superuser
):
    from django.urls import reverse

    from audit.models import AuditEvent
    from audit.services import Actor
    from tenants.services import grant_platform_staff

    gone = healthy_worker("old-box", beat_at=timezone.now() - timedelta(days=3))
    assert health()[0] == 1
    grant_platform_staff(user=superuser, actor=Actor.system("tests"))
    client.force_login(superuser)
    page = reverse("admin:desk_workerheartbeat_changelist")
    base = {"action": "forget_workers", "_selected_action": [gone.pk]}

    client.post(page, {**base, "confirm": "yes", "reason": "Machine retired on Monday"})

    gone.refresh_from_db()
    assert gone.stopped_at is not None
    assert health()[0] == 0
    [event] = AuditEvent.objects.filter(action="worker.forgotten")
    assert (event.tenant_id, event.reason) == (None, "Machine retired on Monday")
