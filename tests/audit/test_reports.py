"""The audit reports: a run's report, a tenant's period and an auditor's three questions.

Each shows exactly one tenant's data for the period asked (whole days, both included),
refuses another tenant's, turns bad input into form errors, costs the same queries for 5 rows
as for 50, and renders as self-contained HTML and a PDF that fetch nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import zipfile
from contextlib import contextmanager
from datetime import UTC, datetime
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from approvals.models import ApprovalRequest
from approvals.services import decide, policy_values, propose_policy_change
from audit import proof, report_documents, signing
from audit.models import AuditEvent
from audit.services import Actor, apply_retention, record
from desk.models import Run
from desk.services import start_run
from roles.models import Role
from roles.services import update_role
from tenants.services import grant_membership
from tests.conftest import INTAKE_INPUT
from tests.runtime import advance

PERIOD = {"since": "2026-04-01", "until": "2026-04-30"}
JUST_BEFORE = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)
FIRST = datetime(2026, 4, 1, 0, 0, 0, tzinfo=UTC)
LAST = datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC)
JUST_AFTER = datetime(2026, 5, 1, 0, 0, 0, tzinfo=UTC)
MOMENTS = {"before": JUST_BEFORE, "first": FIRST, "last": LAST, "after": JUST_AFTER}
PAGES = ("run", "tenant", "reads", "approvals", "changes")


def url(name: str) -> str:
    return reverse(f"audit_reports:{name}")


@contextmanager
def at(moment: datetime):
    """Everything written inside happens at `moment` (the clock every service reads)."""
    with mock.patch("django.utils.timezone.now", return_value=moment):
        yield


def intake(tenant) -> Role:
    return Role.objects.get(tenant=tenant, slug="intake-coordinator")


def ai(role: Role) -> Actor:
    version = role.active_version
    return Actor.for_ai(role_version_id=version.pk, label=f"{role.slug} v{version.number}")


def read(tenant, role: Role, *, when: datetime, reason: str, kind: str = "contact", run=None):
    """A data read as the engine audits it, at `when`."""
    with at(when):
        event = record(
            tenant=tenant,
            actor=ai(role),
            action="data.read",
            run_id=getattr(run, "pk", None),
            reason=reason,
            data={
                "tool": "records.search",
                "kind": kind,
                "references": [f"C-{reason}"],
                "query": {"email": f"{reason}@example.com"},
            },
        )
    assert event.created_at == when
    return event


def start(tenant, when: datetime | None = None, **input) -> Run:
    def go():
        return start_run(
            tenant=tenant,
            role=intake(tenant),
            input={**INTAKE_INPUT, **input},
            actor=Actor.system("tests"),
            via="command",
        )

    if when is None:
        return go()
    with at(when):
        return go()


def parked(tenant, when: datetime | None = None, **input) -> Run:
    run = start(tenant, when, **input)
    if when is None:
        advance(run.pk)
    else:
        with at(when):
            advance(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.WAITING_APPROVAL
    return run


def approve(run: Run, reviewer, when: datetime | None = None, comment: str = "fine"):
    request = ApprovalRequest.objects.get(run=run, status="pending")
    if when is None:
        return decide(request=request, reviewer=reviewer, verdict="approve", comment=comment)
    with at(when):
        return decide(request=request, reviewer=reviewer, verdict="approve", comment=comment)


def completed(tenant, reviewer) -> Run:
    run = parked(tenant)
    approve(run, reviewer, comment="Looks right to me")
    advance(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    return run


def page_text(response) -> str:
    return response.content.decode()


@pytest.fixture
def northwind_auditor(northwind):
    user = get_user_model().objects.create_user(
        "auditor.northwind", "auditor.northwind@example.com", "pw-auditor-nw-1", is_staff=True
    )
    grant_membership(user=user, tenant=northwind, kind="auditor", actor=Actor.system("tests"))
    return user


@pytest.fixture
def auditor(client, users):
    client.force_login(users["auditor"])
    return users["auditor"]


# --- what each page shows --------------------------------------------------------------------


class TestDataReads:
    def test_the_chosen_ai_employees_reads_of_the_period_and_no_others(
        self, client, auditor, harbor, northwind
    ):
        for name, moment in MOMENTS.items():
            read(harbor, intake(harbor), when=moment, reason=f"why-{name}")
        follow_up = Role.objects.get(tenant=harbor, slug="client-follow-up")
        read(harbor, follow_up, when=FIRST, reason="why-another-employee")
        read(northwind, intake(northwind), when=FIRST, reason="why-northwind")
        version = intake(harbor).active_version

        response = client.get(
            url("reads"), {"tenant": harbor.pk, "employee": f"version:{version.pk}", **PERIOD}
        )

        assert response.status_code == 200
        answer = response.context["answer"]
        assert [row.reason for row in answer.rows] == ["why-first", "why-last"]
        assert answer.total == 2
        text = page_text(response)
        assert "why-first" in text and "why-last" in text
        for absent in ("why-before", "why-after", "why-another-employee", "why-northwind"):
            assert absent not in text
        assert "2026-04-01 00:00:00 UTC" in text
        assert "2026-04-30 23:59:59 UTC" in text
        assert "What did Intake coordinator (intake-coordinator v1) read" in text

    def test_a_role_covers_all_its_versions_and_every_employee_all_roles(
        self, client, auditor, harbor
    ):
        follow_up = Role.objects.get(tenant=harbor, slug="client-follow-up")
        read(harbor, intake(harbor), when=FIRST, reason="why-intake")
        read(harbor, follow_up, when=LAST, reason="why-follow-up")

        by_role = client.get(
            url("reads"), {"tenant": harbor.pk, "employee": f"role:{follow_up.pk}", **PERIOD}
        )
        everyone = client.get(url("reads"), {"tenant": harbor.pk, "employee": "", **PERIOD})

        assert [r.reason for r in by_role.context["answer"].rows] == ["why-follow-up"]
        assert [r.reason for r in everyone.context["answer"].rows] == [
            "why-intake",
            "why-follow-up",
        ]

    def test_the_summary_counts_reads_and_refusals_per_employee_and_kind(
        self, client, auditor, harbor
    ):
        read(harbor, intake(harbor), when=FIRST, reason="a", kind="contact")
        read(harbor, intake(harbor), when=LAST, reason="b", kind="contact")
        read(harbor, intake(harbor), when=LAST, reason="c", kind="matter")
        with at(LAST):
            record(
                tenant=harbor,
                actor=ai(intake(harbor)),
                action="data.refused",
                reason="d",
                data={"tool": "records.get", "references": ["N-1"]},
            )

        response = client.get(url("reads"), {"tenant": harbor.pk, **PERIOD})

        summary = [(g.employee, g.kind, g.reads, g.refusals) for g in response.context["summary"]]
        assert summary == [
            ("intake-coordinator v1", "", 0, 1),
            ("intake-coordinator v1", "contact", 2, 0),
            ("intake-coordinator v1", "matter", 1, 0),
        ]
        assert "refused" in page_text(response)

    def test_a_read_whose_payload_retention_removed_says_so(self, client, auditor, harbor):
        long_ago = datetime(2020, 4, 1, 9, 30, tzinfo=UTC)  # past any retention now
        read(harbor, intake(harbor), when=long_ago, reason="why-long-ago")
        apply_retention()

        response = client.get(
            url("reads"), {"tenant": harbor.pk, "since": "2020-04-01", "until": "2020-04-01"}
        )

        [row] = response.context["answer"].rows
        assert row.reason.startswith("(removed ") and "retention" in row.reason
        text = page_text(response)
        assert "why-long-ago" not in text
        assert "— (removed by retention)" in text


class TestApprovals:
    def test_who_approved_what_in_the_period(self, client, auditor, users, harbor, northwind):
        inside = parked(harbor, FIRST)
        outside = parked(harbor, JUST_BEFORE, subject="Earlier")
        approve(inside, users["reviewer.harbor"], LAST, comment="inside-the-period")
        approve(outside, users["reviewer.harbor"], JUST_BEFORE, comment="before-the-period")
        theirs = parked(northwind, FIRST)
        approve(theirs, users["reviewer.northwind"], FIRST, comment="northwind-decision")

        response = client.get(url("approvals"), {"tenant": harbor.pk, **PERIOD})

        rows = response.context["answer"].rows
        assert [(r.who, r.verdict, r.version, r.comment) for r in rows] == [
            ("reviewer.harbor", "approved", 1, "inside-the-period")
        ]
        assert rows[0].run_id == inside.pk
        assert rows[0].what.startswith(f"draft (client_comms) of run #{inside.pk}")
        text = page_text(response)
        assert "before-the-period" not in text and "northwind-decision" not in text
        assert "2026-04-30 23:59:59 UTC" in text

    def test_a_policy_change_applied_by_the_second_operator_counts(
        self, client, auditor, users, harbor
    ):
        from approvals.models import ApprovalPolicy
        from approvals.services import approve_policy_change

        policy = ApprovalPolicy.objects.get(tenant=harbor, category="client_comms")
        with at(FIRST):
            change = propose_policy_change(
                tenant=harbor,
                actor=Actor.for_user(users["ops"]),
                values={**policy_values(policy), "required_approvals": 2},
                policy=policy,
                reason="Two for client e-mail",
            )
            approve_policy_change(
                change=change, actor=Actor.for_user(users["ops.second"]), note="Agreed"
            )

        response = client.get(url("approvals"), {"tenant": harbor.pk, **PERIOD})

        [row] = response.context["answer"].rows
        assert (row.who, row.verdict, row.comment) == ("ops.second", "applied", "Agreed")
        assert "proposed by ops" in row.details
        assert "required_approvals: 1 → 2" in row.details


class TestChanges:
    def test_what_changed_in_roles_and_policies_in_the_period(
        self, client, auditor, users, harbor, northwind
    ):
        role = intake(harbor)
        for name, moment in MOMENTS.items():
            with at(moment):
                role = update_role(
                    role=role, actor=Actor.for_user(users["ops"]), changes={"purpose": name}
                )
        with at(FIRST):
            update_role(
                role=intake(northwind),
                actor=Actor.for_user(users["ops"]),
                changes={"purpose": "northwind-purpose"},
            )

        response = client.get(url("changes"), {"tenant": harbor.pk, **PERIOD})

        rows = response.context["answer"].rows
        assert [(r.what, r.details) for r in rows] == [
            ("role intake-coordinator changed", ["purpose: before → first"]),
            ("role intake-coordinator changed", ["purpose: first → last"]),
        ]
        assert "northwind-purpose" not in page_text(response)


class TestTenantReport:
    def test_the_periods_runs_decisions_data_access_and_changes(
        self, client, auditor, users, harbor, northwind
    ):
        runs = {name: start(harbor, moment, subject=name) for name, moment in MOMENTS.items()}
        start(northwind, FIRST)
        read(harbor, intake(harbor), when=FIRST, reason="why", kind="contact")
        with at(LAST):
            update_role(
                role=intake(harbor), actor=Actor.for_user(users["ops"]), changes={"purpose": "x"}
            )

        response = client.get(url("tenant"), {"tenant": harbor.pk, **PERIOD})

        report = response.context["report"]
        assert [row.id for row in report.runs.rows] == [runs["first"].pk, runs["last"].pk]
        assert report.runs.total == 2
        assert [(g.employee, g.kind, g.reads) for g in report.data_access] == [
            ("intake-coordinator v1", "contact", 1)
        ]
        assert [c.what for c in report.changes.rows] == ["role intake-coordinator changed"]
        text = page_text(response)
        for heading in (
            "Runs",
            "Decisions",
            "Data access by AI employee and data kind",
            "Changes to roles and policies",
        ):
            assert f"<h2>{heading}</h2>" in text
        assert f"#{runs['before'].pk}<" not in text and f"#{runs['after'].pk}<" not in text


class TestRunReport:
    def test_steps_prompts_outputs_data_read_approvals_and_cost(
        self, client, auditor, users, harbor
    ):
        run = completed(harbor, users["reviewer.harbor"])

        response = client.get(url("run"), {"tenant": harbor.pk, "run": run.pk})

        assert response.status_code == 200
        report = response.context["report"]
        assert [s.key for s in report.run.steps] == ["classify", "lookup", "draft", "send"]
        assert [(r.tool, r.reason) for r in report.data_access.rows] == [
            ("records.search", "Find the sender's client records to answer in context")
        ]
        decided = [a for a in report.approvals if a["what"] == "approved"]
        assert [(a["who"], a["version"], a["comment"], a["step"]) for a in decided] == [
            ("reviewer.harbor", 1, "Looks right to me", "draft")
        ]
        text = page_text(response)
        assert "Classify this enquiry" in text  # a prompt
        assert "Re: Lease question" in text  # an output
        assert "Find the sender&#x27;s client records" in text  # why it read data
        assert "Looks right to me" in text
        assert f"{run.cost:.4f}" in text
        assert "run.completed" in text
        assert " UTC" in text

    def test_another_tenants_run_is_not_found(self, client, auditor, users, harbor, northwind):
        theirs = parked(northwind)
        before = AuditEvent.objects.count()

        response = client.get(url("run"), {"tenant": harbor.pk, "run": theirs.pk})
        missing = client.get(url("run"), {"tenant": harbor.pk, "run": theirs.pk + 1000})

        assert response.status_code == 404
        assert missing.status_code == 404
        assert "priya" not in page_text(response).lower()
        assert AuditEvent.objects.count() == before


# --- who may ask -----------------------------------------------------------------------------


class TestAccess:
    @pytest.mark.parametrize("name", ("index", *PAGES))
    def test_a_reviewer_may_not_read_reports(self, client, users, harbor, name):
        client.force_login(users["reviewer.harbor"])

        response = client.get(url(name), {"tenant": harbor.pk, **PERIOD})

        assert response.status_code == 403

    @pytest.mark.parametrize("name", ("index", *PAGES))
    def test_nobody_logged_in_is_sent_to_the_login(self, client, db, name):
        response = client.get(url(name))

        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))

    @pytest.mark.parametrize("name", ("tenant", "reads", "approvals", "changes"))
    def test_another_tenant_is_not_a_choice(self, client, northwind_auditor, harbor, name):
        read(harbor, intake(harbor), when=FIRST, reason="harbor-secret")
        client.force_login(northwind_auditor)

        response = client.get(url(name), {"tenant": harbor.pk, **PERIOD})

        assert response.status_code == 200
        assert not response.context["answered"]
        assert "tenant" in response.context["form"].errors
        text = page_text(response)
        assert "Harbor Legal LLP" not in text and "harbor-secret" not in text

    def test_a_northwind_auditor_finds_no_harbor_run(
        self, client, northwind_auditor, users, harbor, northwind
    ):
        harbor_run = completed(harbor, users["reviewer.harbor"])
        client.force_login(northwind_auditor)

        response = client.get(url("run"), {"tenant": northwind.pk, "run": harbor_run.pk})

        assert response.status_code == 404

    def test_the_index_lists_the_reports_for_an_auditor(self, client, auditor):
        response = client.get(url("index"))

        assert response.status_code == 200
        for name in PAGES:
            assert url(name) in page_text(response)

    def test_reading_reports_writes_nothing(self, client, auditor, harbor):
        run = parked(harbor)
        before = AuditEvent.objects.count()

        for name in ("tenant", "reads", "approvals", "changes"):
            assert client.get(url(name), {"tenant": harbor.pk, **PERIOD}).status_code == 200
        assert client.get(url("run"), {"tenant": harbor.pk, "run": run.pk}).status_code == 200

        assert AuditEvent.objects.count() == before


class TestBadInput:
    @pytest.mark.parametrize(
        ("name", "params", "field", "message"),
        [
            ("tenant", {"since": "2026-13-01", "until": "2026-04-30"}, "since", "valid date"),
            ("approvals", {"since": "yesterday", "until": "2026-04-30"}, "since", "valid date"),
            ("changes", {"since": "2026-04-01", "until": "2026-02-30"}, "until", "valid date"),
            ("reads", {"since": "2026-04-30", "until": "2026-04-01"}, "until", "ends before"),
            ("tenant", {"since": "", "until": "2026-04-30"}, "since", "required"),
            ("run", {"run": "abc"}, "run", "whole number"),
            ("run", {"run": "0"}, "run", "greater than or equal to 1"),
            ("reads", {**PERIOD, "employee": "version:999999"}, "employee", "valid choice"),
        ],
    )
    def test_is_a_form_error_and_changes_nothing(
        self, client, auditor, harbor, name, params, field, message
    ):
        before = AuditEvent.objects.count()

        response = client.get(url(name), {"tenant": harbor.pk, **params})

        assert response.status_code == 200
        assert not response.context["answered"]
        errors = response.context["form"].errors
        assert message in " ".join(errors[field])
        assert 'class="errorlist"' in page_text(response)
        assert AuditEvent.objects.count() == before

    def test_an_ai_employee_of_another_tenant_is_refused(self, client, auditor, harbor, northwind):
        theirs = intake(northwind).active_version

        response = client.get(
            url("reads"), {"tenant": harbor.pk, "employee": f"version:{theirs.pk}", **PERIOD}
        )

        assert response.context["form"].errors["employee"] == [
            "This AI employee does not work for the chosen tenant."
        ]

    def test_an_unknown_page_number_shows_the_last_page(self, client, auditor, harbor):
        read(harbor, intake(harbor), when=FIRST, reason="only")

        response = client.get(url("reads"), {"tenant": harbor.pk, "page": "99", **PERIOD})

        assert response.context["answer"].page == 1
        assert [r.reason for r in response.context["answer"].rows] == ["only"]


# --- queries ---------------------------------------------------------------------------------


def queries_of(client, name: str, params: dict) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url(name), params)
    assert response.status_code == 200
    assert response.context["answered"]
    return len(captured.captured_queries)


class TestQueryCounts:
    """A page costs the same queries for 5 rows as for 50 (rows are capped, never fetched
    one by one)."""

    def test_the_tenant_report(self, client, auditor, users, harbor):
        def grow(count):
            for index in range(count):
                start(harbor, FIRST, subject=f"s{index}")
                read(harbor, intake(harbor), when=FIRST, reason=f"r{index}", kind=f"k{index % 3}")
                with at(LAST):
                    update_role(
                        role=intake(harbor),
                        actor=Actor.for_user(users["ops"]),
                        changes={"purpose": f"p{index}"},
                    )

        params = {"tenant": harbor.pk, **PERIOD}
        grow(5)
        five = queries_of(client, "tenant", params)
        grow(45)

        assert queries_of(client, "tenant", params) == five
        assert client.get(url("tenant"), params).context["report"].runs.total == 50

    def test_the_run_report(self, client, auditor, users, harbor):
        run = completed(harbor, users["reviewer.harbor"])
        params = {"tenant": harbor.pk, "run": run.pk}
        for index in range(5):
            read(harbor, intake(harbor), when=LAST, reason=f"r{index}", run=run)
        five = queries_of(client, "run", params)
        for index in range(45):
            read(harbor, intake(harbor), when=LAST, reason=f"more{index}", run=run)

        assert queries_of(client, "run", params) == five
        assert client.get(url("run"), params).context["report"].data_access.total == 51

    def test_the_reads_page(self, client, auditor, harbor):
        params = {"tenant": harbor.pk, **PERIOD}
        for index in range(5):
            read(harbor, intake(harbor), when=FIRST, reason=f"r{index}")
        five = queries_of(client, "reads", params)
        for index in range(45):
            read(harbor, intake(harbor), when=LAST, reason=f"more{index}")

        assert queries_of(client, "reads", params) == five

    def test_the_approvals_page(self, client, auditor, users, harbor):
        params = {"tenant": harbor.pk, **PERIOD}

        def decided(count):
            for index in range(count):
                approve(parked(harbor, FIRST, subject=f"s{index}"), users["reviewer.harbor"], LAST)

        decided(2)
        two = queries_of(client, "approvals", params)
        decided(8)

        assert queries_of(client, "approvals", params) == two
        assert client.get(url("approvals"), params).context["answer"].total == 10

    def test_the_changes_page(self, client, auditor, users, harbor):
        params = {"tenant": harbor.pk, **PERIOD}

        def changed(count):
            for index in range(count):
                with at(FIRST):
                    update_role(
                        role=intake(harbor),
                        actor=Actor.for_user(users["ops"]),
                        changes={"purpose": f"p{index}-{count}"},
                    )

        changed(5)
        five = queries_of(client, "changes", params)
        changed(45)

        assert queries_of(client, "changes", params) == five


# --- files -----------------------------------------------------------------------------------

needs_pdf = pytest.mark.skipif(
    not report_documents.pdf_available(), reason="WeasyPrint (and Pango) not installed"
)


@needs_pdf
def test_a_pdf_is_rendered_without_reaching_the_network_or_files():
    html = (
        b"<html><head><link rel=stylesheet href='http://127.0.0.1:9/x.css'></head>"
        b"<body><h1>Report</h1><img src='file:///etc/hostname'>"
        b"<img src='https://example.invalid/a.png'></body></html>"
    )

    with mock.patch.object(socket.socket, "connect", side_effect=AssertionError("network")):
        pdf = report_documents.render_pdf(html)

    assert pdf.startswith(b"%PDF")


@needs_pdf
@pytest.mark.parametrize("address", ["http://127.0.0.1:9/x.css", "file:///etc/hostname"])
def test_the_pdf_fetcher_refuses_all_but_data_urls(address):
    fetcher = report_documents.offline_fetcher_class()()

    with pytest.raises(ValueError, match="fetches nothing"):
        fetcher.fetch(address)


# --- the download ----------------------------------------------------------------------------


def download_url(name: str) -> str:
    return reverse(f"audit_reports:{name}_download")


def unzip(response) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


class TestDownload:
    def test_a_run_report_zip_holds_html_pdf_and_the_signed_manifest_of_both(
        self, client, auditor, users, harbor
    ):
        run = completed(harbor, users["reviewer.harbor"])

        response = client.post(download_url("run"), {"tenant": harbor.pk, "run": run.pk})

        assert response.status_code == 200
        assert response["Content-Type"] == "application/zip"
        assert "attachment;" in response["Content-Disposition"]
        files = unzip(response)
        expected = ["report.html", "manifest.json"]
        if report_documents.pdf_available():
            expected.insert(1, "report.pdf")
            assert files["report.pdf"].startswith(b"%PDF")
        assert list(files) == expected
        manifest = json.loads(files["manifest.json"])
        proof.check_manifest(manifest, signing.verifier())
        assert manifest["kind"] == "report.run"
        assert manifest["tenant"] == harbor.pk
        assert manifest["query"] == {"tenant": harbor.slug, "tenant_id": harbor.pk, "run": run.pk}
        assert manifest["files"] == {
            name: {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
            for name, content in files.items()
            if name != "manifest.json"
        }
        event = AuditEvent.objects.get(action="audit.report_generated")
        assert event.tenant_id == harbor.pk
        assert event.actor_user == users["auditor"]
        assert event.data == {
            "kind": "run",
            "query": manifest["query"],
            "manifest_sha256": hashlib.sha256(files["manifest.json"]).hexdigest(),
        }

    def test_the_html_is_self_contained(self, client, auditor, users, harbor):
        run = completed(harbor, users["reviewer.harbor"])

        response = client.post(download_url("run"), {"tenant": harbor.pk, "run": run.pk})

        html = unzip(response)["report.html"].decode()
        assert "<style>" in html and "@media print" in html
        for outside in ("<link", "<script", "src=", "href=", "/static/", "url("):
            assert outside not in html
        assert "Classify this enquiry" in html
        assert "Looks right to me" in html

    @pytest.mark.parametrize("name", ("tenant", "reads", "approvals", "changes"))
    def test_every_period_page_downloads_what_it_shows(self, client, auditor, harbor, name):
        read(harbor, intake(harbor), when=FIRST, reason="why-inside")
        read(harbor, intake(harbor), when=JUST_AFTER, reason="why-outside")

        response = client.post(download_url(name), {"tenant": harbor.pk, **PERIOD})

        assert response.status_code == 200
        files = unzip(response)
        manifest = json.loads(files["manifest.json"])
        assert manifest["query"] == {
            "tenant": harbor.slug,
            "tenant_id": harbor.pk,
            **PERIOD,
        }
        html = files["report.html"].decode()
        assert "why-outside" not in html
        if name == "reads":
            assert "why-inside" in html

    def test_reading_the_download_url_writes_nothing(self, client, auditor, users, harbor):
        run = parked(harbor)

        response = client.get(download_url("run"), {"tenant": harbor.pk, "run": run.pk})

        assert response.status_code == 405
        assert not AuditEvent.objects.filter(action="audit.report_generated").exists()

    def test_bad_input_is_a_form_error_and_nothing_is_made(self, client, auditor, harbor):
        response = client.post(
            download_url("tenant"), {"tenant": harbor.pk, "since": "2026-04-30", "until": "x"}
        )

        assert response.status_code == 400
        assert "until" in response.context["form"].errors
        assert not AuditEvent.objects.filter(action="audit.report_generated").exists()

    def test_another_tenants_run_is_not_found_and_nothing_is_made(
        self, client, northwind_auditor, users, harbor, northwind
    ):
        harbor_run = completed(harbor, users["reviewer.harbor"])
        client.force_login(northwind_auditor)

        theirs = client.post(download_url("run"), {"tenant": northwind.pk, "run": harbor_run.pk})
        harbors = client.post(download_url("run"), {"tenant": harbor.pk, "run": harbor_run.pk})

        assert theirs.status_code == 404
        assert harbors.status_code == 400
        assert "Harbor Legal LLP" not in page_text(harbors)
        assert not AuditEvent.objects.filter(action="audit.report_generated").exists()

    def test_a_reviewer_may_not_download(self, client, users, harbor):
        client.force_login(users["reviewer.harbor"])

        response = client.post(download_url("tenant"), {"tenant": harbor.pk, **PERIOD})

        assert response.status_code == 403
        assert not AuditEvent.objects.filter(action="audit.report_generated").exists()

    def test_without_a_signing_key_nothing_is_offered(
        self, client, auditor, harbor, settings, tmp_path
    ):
        settings.AUDIT_SIGNING_KEY_FILE = tmp_path / "missing.key"

        response = client.post(download_url("tenant"), {"tenant": harbor.pk, **PERIOD})

        assert response.status_code == 503
        assert "cannot be signed" in page_text(response)
        assert not AuditEvent.objects.filter(action="audit.report_generated").exists()


def test_the_period_fields_show_their_dates_in_the_format_a_date_input_takes(client, auditor):
    # A browser's <input type="date"> takes only YYYY-MM-DD: a value in the display format
    # (01/12/2026) leaves the field empty.
    response = client.get(url("reads"))

    assert response.status_code == 200
    values = re.findall(r'<input type="date" name="(?:since|until)" value="([^"]*)"', response.text)
    assert len(values) == 2
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) for value in values), values
