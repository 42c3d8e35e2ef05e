"""Management commands of desk: `start_run`, and what `serve_all` reports about its setup."""

from __future__ import annotations

import json
import sqlite3
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from audit.models import AuditEvent
from desk.management.commands.serve_all import describe_broker, describe_database
from desk.models import Run, StepRun
from tenants.models import Tenant
from tests.conftest import INTAKE_INPUT
from tests.e2e.support import make_demo_sqlite, process_env, run_manage


def start_run_command(**options) -> dict:
    out = StringIO()
    call_command("start_run", stdout=out, **options)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


class TestStartRun:
    def test_starts_a_run_and_prints_it_as_one_json_line(self, harbor, intake_role):
        printed = start_run_command(
            tenant="harbor-legal", role="intake-coordinator", input=json.dumps(INTAKE_INPUT)
        )

        run = Run.objects.get()
        assert printed == {
            "id": run.pk,
            "status": "running",  # admitted at once: the tenant has free capacity
            "tenant": "harbor-legal",
            "role": "intake-coordinator",
            "version": intake_role.active_version.number,
        }
        assert run.tenant == harbor
        assert run.input == INTAKE_INPUT
        assert run.via == Run.Via.COMMAND
        assert run.started_by is None
        assert run.started_by_label == "command:start_run"
        assert run.steps.filter(status=StepRun.Status.READY).count() == 1
        event = AuditEvent.objects.get(run_id=run.pk)
        assert (event.action, event.actor_type, event.actor_label) == (
            "run.started",
            AuditEvent.ActorType.SYSTEM,
            "command:start_run",
        )

    def test_reads_the_input_from_a_file_and_keeps_the_idempotency_key(self, harbor, tmp_path):
        path = tmp_path / "input.json"
        path.write_text(json.dumps(INTAKE_INPUT), encoding="utf-8")

        printed = start_run_command(
            tenant="harbor-legal",
            role="intake-coordinator",
            input=f"@{path}",
            idempotency_key="mail-4711",
        )

        run = Run.objects.get(pk=printed["id"])
        assert run.input == INTAKE_INPUT
        assert run.idempotency_key == "mail-4711"

    def test_a_reused_idempotency_key_is_refused(self, harbor):
        options = {
            "tenant": "harbor-legal",
            "role": "intake-coordinator",
            "input": json.dumps(INTAKE_INPUT),
            "idempotency_key": "mail-4711",
        }
        start_run_command(**options)
        events = AuditEvent.objects.count()

        with pytest.raises(CommandError, match="already exists"):
            start_run_command(**options)

        assert Run.objects.count() == 1
        assert AuditEvent.objects.count() == events

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"tenant": "nope"}, "Unknown tenant 'nope'."),
            ({"role": "nope"}, "No role 'nope' in tenant 'harbor-legal'."),
            # The role exists, but in another tenant.
            ({"role": "month-end-reporter"}, "No role 'month-end-reporter' in tenant"),
            ({"input": "{not json"}, "The input is not valid JSON (--input, line 1 column 2)"),
            ({"input": "@/no/such/file.json"}, "Cannot read the input file /no/such/file.json"),
            ({"input": "[1, 2]"}, "The input must be a JSON object. [invalid_input]"),
            (
                {"input": json.dumps({**INTAKE_INPUT, "body": "a\x00b"})},
                "The input is not safe JSON (--input): body: Contains a NUL character",
            ),
            (
                {"input": '{"a": ' + "[" * 5000 + "]" * 5000 + "}"},
                "The input is not safe JSON (--input): Nested deeper than 32 levels.",
            ),
        ],
    )
    def test_bad_arguments_fail_clearly_and_write_nothing(self, harbor, options, message):
        events = AuditEvent.objects.count()
        arguments = {
            "tenant": "harbor-legal",
            "role": "intake-coordinator",
            "input": json.dumps(INTAKE_INPUT),
            **options,
        }

        with pytest.raises(CommandError) as raised:
            start_run_command(**arguments)

        assert message in str(raised.value)
        assert Run.objects.count() == 0
        assert AuditEvent.objects.count() == events

    def test_input_that_breaks_the_schema_names_each_field(self, harbor):
        events = AuditEvent.objects.count()
        bad = {"from_email": "maya.chen@example.com", "subject": "", "extra": 1}

        with pytest.raises(CommandError) as raised:
            start_run_command(
                tenant="harbor-legal", role="intake-coordinator", input=json.dumps(bad)
            )

        lines = str(raised.value).splitlines()
        assert lines[0] == ("The input does not match the role's input schema. [invalid_input]")
        assert "  (root): 'body' is a required property" in lines
        assert any(line.startswith("  (root): Additional properties") for line in lines)
        assert any(line.startswith("  subject: ") for line in lines)
        assert Run.objects.count() == 0
        assert AuditEvent.objects.count() == events

    def test_a_suspended_tenant_cannot_start_runs(self, harbor):
        # No suspend service exists yet; the status field is what start_run checks.
        harbor.status = Tenant.Status.SUSPENDED
        harbor.save(update_fields=["status"])
        events = AuditEvent.objects.count()

        with pytest.raises(CommandError, match="Tenant 'harbor-legal' is suspended"):
            start_run_command(
                tenant="harbor-legal", role="intake-coordinator", input=json.dumps(INTAKE_INPUT)
            )

        assert Run.objects.count() == 0
        assert AuditEvent.objects.count() == events


def test_start_run_as_a_real_process(tmp_path):
    """Exit status, stdout and stderr as a shell script sees them (own SQLite database)."""
    database_url = make_demo_sqlite(tmp_path)
    env = process_env(tmp_path, DATABASE_URL=database_url, REDIS_URL=None)
    database = tmp_path / "agentdesk.sqlite3"

    def counts() -> tuple[int, int, int]:
        """Runs, events, and the process's records of its platform work (`platform.used`)."""
        with sqlite3.connect(database) as db:
            runs = db.execute("SELECT count(*) FROM desk_run").fetchone()[0]
            events, platform_uses = db.execute(
                "SELECT count(*) FILTER (WHERE action <> 'platform.used'),"
                " count(*) FILTER (WHERE action = 'platform.used') FROM audit_auditevent"
            ).fetchone()
        return runs, events, platform_uses

    before = counts()
    refused = run_manage(
        "start_run",
        "--tenant=harbor-legal",
        "--role=intake-coordinator",
        "--input",
        json.dumps({"from_email": "maya.chen@example.com", "subject": "Hi"}),
        env=env,
    )
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert "CommandError: The input does not match the role's input schema." in refused.stderr
    assert "(root): 'body' is a required property" in refused.stderr
    # Nothing written; the process's record of its platform work (finding the tenant by its
    # slug) is all it leaves, as any process does.
    assert counts() == (before[0], before[1], before[2] + 1)
    before = counts()

    started = run_manage(
        "start_run",
        "--tenant=harbor-legal",
        "--role=intake-coordinator",
        f"--input={json.dumps(INTAKE_INPUT)}",
        env=env,
    )
    assert started.returncode == 0, started.stderr
    printed = json.loads(started.stdout)
    assert printed["status"] == "running"
    assert printed["tenant"] == "harbor-legal"
    # One run, its event, and the command's one record of the platform work it did (finding
    # the tenant by its slug).
    assert counts() == (before[0] + 1, before[1] + 1, before[2] + 1)


class TestServeAllDescriptions:
    @override_settings(Q_CLUSTER={"name": "x", "redis": "redis://:s3cret@cache:6379/2"})
    def test_a_redis_broker_is_shown_without_its_password(self):
        assert describe_broker() == "Redis redis://:***@cache:6379/2"

    @override_settings(Q_CLUSTER={"name": "x", "orm": "default"})
    def test_the_orm_broker_names_its_database(self):
        assert describe_broker() == "Django ORM (database 'default')"

    def test_the_database_is_named_without_credentials(self):
        db = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "agentdesk",
            "USER": "desk",
            "PASSWORD": "s3cret",
            "HOST": "db.internal",
            "PORT": 5432,
        }

        assert describe_database(db) == "PostgreSQL 'agentdesk' on db.internal:5432"
