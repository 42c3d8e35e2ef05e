"""`audit_export` and `audit_verify` on the trail a real run leaves."""

from __future__ import annotations

import csv
import json
import re
from datetime import timedelta
from io import StringIO
from itertools import pairwise

import pytest
from django.core.management import CommandError, call_command

from approvals.models import ApprovalRequest, Decision
from approvals.services import decide
from audit import exports
from audit.models import AuditEvent
from audit.services import Actor, export_row, record
from desk.models import Run
from desk.services import start_run
from tests.audit.support import beneath_the_triggers
from tests.conftest import INTAKE_INPUT
from tests.runtime import advance


@pytest.fixture
def finished_run(harbor, intake_role, users) -> Run:
    """An intake run taken through its review gate to the end, in this process."""
    run = start_run(
        tenant=harbor,
        role=intake_role,
        input=INTAKE_INPUT,
        actor=Actor.system("tests"),
        via=Run.Via.COMMAND,
    )
    advance(run.pk)
    request = ApprovalRequest.objects.get(run=run)
    decide(request=request, reviewer=users["reviewer.harbor"], verdict=Decision.Verdict.APPROVE)
    advance(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    return run


def export(tmp_path, name="export", **options) -> tuple[str, object]:
    out = StringIO()
    path = tmp_path / name
    call_command("audit_export", out=str(path), stdout=out, **options)
    return out.getvalue(), path


def harbor_events(harbor):
    # The export itself is audited after it is written; it is not part of the file.
    return list(
        AuditEvent.objects.filter(tenant=harbor).exclude(action="audit.exported").order_by("seq")
    )


class TestAuditExport:
    def test_the_export_is_itself_audited(self, tmp_path, harbor, finished_run):
        export(tmp_path, tenant="harbor-legal", format="csv")

        event = AuditEvent.objects.get(tenant=harbor, action="audit.exported")
        assert event.data["format"] == "csv"
        assert event.data["events"] == len(harbor_events(harbor))

    def test_jsonl_holds_every_event_of_the_tenant_in_chain_order(
        self, tmp_path, harbor, finished_run
    ):
        printed, path = export(tmp_path, tenant="harbor-legal", format="jsonl")

        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        events = harbor_events(harbor)
        assert printed.startswith(f"Wrote {len(events)} audit event(s) of harbor-legal")
        assert [row["seq"] for row in rows] == [e.seq for e in events]
        assert all(list(row) == list(exports.COLUMNS) for row in rows)
        assert all(row["prev_hash"] == before["hash"] for before, row in pairwise(rows))
        run_rows = [row for row in rows if row["run_id"] == finished_run.pk]
        actions = [row["action"] for row in run_rows]
        assert actions[0] == "run.started"
        assert {"approval.requested", "approval.decided", "step.completed", "run.completed"} <= (
            set(actions)
        )
        started = run_rows[0]
        event = AuditEvent.objects.get(tenant=harbor, seq=started["seq"])
        assert started == export_row(event)
        assert (started["tenant"], started["actor_label"], started["object_type"]) == (
            harbor.pk,
            "tests",
            "desk.Run",
        )
        assert started["data"]["input"] == INTAKE_INPUT

    def test_csv_has_a_header_and_data_as_json(self, tmp_path, harbor, finished_run):
        _, path = export(tmp_path, tenant="harbor-legal", format="csv")

        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
        events = harbor_events(harbor)
        assert tuple(reader.fieldnames) == exports.COLUMNS
        assert [int(row["seq"]) for row in rows] == [e.seq for e in events]
        for row, event in zip(rows, events, strict=True):
            assert json.loads(row["data"]) == event.data
            assert row["hash"] == event.hash
            assert row["run_id"] == ("" if event.run_id is None else str(event.run_id))
        approved = next(row for row in rows if row["action"] == "approval.decided")
        assert approved["actor_type"] == "user"
        assert approved["actor_label"] == "reviewer.harbor"

    def test_other_tenants_events_are_not_exported(self, tmp_path, northwind, finished_run):
        _, path = export(tmp_path, tenant="northwind-accounting", format="jsonl")

        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [row["seq"] for row in rows] == [
            e.seq
            for e in AuditEvent.objects.filter(tenant=northwind)
            .exclude(action="audit.exported")
            .order_by("seq")
        ]
        assert not any(row["run_id"] == finished_run.pk for row in rows)

    def test_since_is_inclusive_and_until_exclusive(self, tmp_path, harbor, finished_run):
        events = harbor_events(harbor)
        middle = events[len(events) // 2]
        expected = [e.seq for e in events if e.created_at >= middle.created_at]

        _, since_path = export(
            tmp_path,
            "since",
            tenant="harbor-legal",
            format="jsonl",
            since=middle.created_at.isoformat(),
        )
        _, until_path = export(
            tmp_path,
            "until",
            tenant="harbor-legal",
            format="jsonl",
            until=middle.created_at.isoformat(),
        )

        since_seqs = [json.loads(line)["seq"] for line in since_path.read_text().splitlines()]
        until_seqs = [json.loads(line)["seq"] for line in until_path.read_text().splitlines()]
        assert since_seqs == expected
        assert sorted(until_seqs + since_seqs) == [e.seq for e in events]

    def test_a_date_as_until_includes_that_whole_day(self, tmp_path, harbor, finished_run):
        last = harbor_events(harbor)[-1]
        day = last.created_at.date()

        _, path = export(
            tmp_path,
            tenant="harbor-legal",
            format="csv",
            since=day.isoformat(),
            until=day.isoformat(),
        )

        with open(path, newline="") as f:
            seqs = [int(row["seq"]) for row in csv.DictReader(f)]
        assert seqs[-1] == last.seq
        assert exports.parse_bound(day.isoformat(), is_end=True) - exports.parse_bound(
            day.isoformat(), is_end=False
        ) == timedelta(days=1)

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"tenant": "nope"}, "Unknown tenant 'nope'."),
            ({"since": "yesterday"}, "'yesterday' is not an ISO date or date-time"),
            ({"until": "2025-02-30"}, "'2025-02-30' is not an ISO date or date-time"),
            ({"since": "2025-03-01", "until": "2025-02-01"}, "The period is empty"),
            ({"format": "xml"}, "invalid choice: 'xml'"),
        ],
    )
    def test_bad_arguments_fail_clearly_and_write_nothing(
        self, tmp_path, finished_run, options, message
    ):
        arguments = {"tenant": "harbor-legal", "format": "jsonl", **options}

        with pytest.raises(CommandError, match=re.escape(message)):
            export(tmp_path, **arguments)

        assert list(tmp_path.iterdir()) == []

    def test_a_missing_directory_is_refused(self, tmp_path, finished_run):
        with pytest.raises(CommandError, match="does not exist"):
            call_command(
                "audit_export",
                tenant="harbor-legal",
                format="csv",
                out=str(tmp_path / "missing" / "export.csv"),
                stdout=StringIO(),
            )

        assert list(tmp_path.iterdir()) == []

    def test_a_failure_midway_leaves_no_partial_file(
        self, tmp_path, monkeypatch, harbor, finished_run
    ):
        path = tmp_path / "export.jsonl"
        path.write_text("the previous export\n")
        real_encoded = exports.Export.encoded
        written = []

        def failing(self, events):
            for chunk in real_encoded(self, events):
                written.append(chunk)
                raise RuntimeError("database went away")

        monkeypatch.setattr(exports.Export, "encoded", failing)

        with pytest.raises(RuntimeError, match="database went away"):
            export(tmp_path, "export.jsonl", tenant="harbor-legal", format="jsonl")

        assert len(written) == 1
        assert path.read_text() == "the previous export\n"
        assert [p.name for p in tmp_path.iterdir()] == ["export.jsonl"]
        assert not AuditEvent.objects.filter(action="audit.exported").exists()


class TestAuditVerify:
    def test_every_intact_chain_is_reported_ok(self, harbor, northwind, finished_run):
        call_command("audit_checkpoint", stdout=StringIO())
        out = StringIO()

        call_command("audit_verify", stdout=out)

        lines = out.getvalue().splitlines()
        count = AuditEvent.objects.filter(tenant=harbor).count()
        assert f"harbor-legal: ok ({count} events)" in lines
        assert any(line.startswith("northwind-accounting: ok (") for line in lines)
        platform = AuditEvent.objects.filter(tenant=None).count()
        assert f"(platform): ok ({platform} events)" in lines

    def test_events_newer_than_the_last_checkpoint_are_counted(self, harbor, finished_run):
        call_command("audit_checkpoint", tenant="harbor-legal", stdout=StringIO())
        record(tenant=harbor, actor=Actor.system(), action="test.after")
        out = StringIO()

        call_command("audit_verify", tenant="harbor-legal", stdout=out)

        count = AuditEvent.objects.filter(tenant=harbor).count()
        assert out.getvalue().splitlines() == [
            f"harbor-legal: ok ({count} events, 1 newer than its last checkpoint)"
        ]

    def test_a_tampered_event_is_named_and_fails_the_command(self, harbor, finished_run):
        event = AuditEvent.objects.get(run_id=finished_run.pk, action="run.completed")
        with beneath_the_triggers():
            AuditEvent.objects.filter(pk=event.pk).update(action="run.cancelled")
        out = StringIO()

        with pytest.raises(
            CommandError,
            match=rf"Audit trail broken: harbor-legal seq {event.seq}: its content does not",
        ):
            call_command("audit_verify", stdout=out)

        lines = out.getvalue().splitlines()
        count = AuditEvent.objects.filter(tenant=harbor).count()
        assert f"harbor-legal: BROKEN (1 problem(s) in {count} events)" in lines
        assert f"  seq {event.seq}: its content does not match its hash" in lines
        assert any(line.startswith("northwind-accounting: ok (") for line in lines)

    def test_one_tenant_can_be_verified_alone(self, harbor, northwind, finished_run):
        with beneath_the_triggers():
            AuditEvent.objects.filter(tenant=harbor, seq=1).update(action="x")
        call_command("audit_checkpoint", tenant="northwind-accounting", stdout=StringIO())
        out = StringIO()

        call_command("audit_verify", tenant="northwind-accounting", stdout=out)

        count = AuditEvent.objects.filter(tenant=northwind).count()
        assert out.getvalue().splitlines() == [f"northwind-accounting: ok ({count} events)"]
        with pytest.raises(CommandError, match="harbor-legal"):
            call_command("audit_verify", tenant="harbor-legal", stdout=StringIO())

    def test_an_unknown_tenant_is_an_error(self, db):
        with pytest.raises(CommandError, match=r"Unknown tenant 'nope'\."):
            call_command("audit_verify", tenant="nope", stdout=StringIO())

    def test_a_malformed_pinned_key_is_an_error(self, db):
        with pytest.raises(CommandError, match="not a verifier key"):
            call_command("audit_verify", key="nonsense", stdout=StringIO())
