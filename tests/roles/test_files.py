"""Roles as files: role_export and role_import. Each test tries to get something past the
import (a bad file, the wrong person, a publication by the back door) and checks that it is
refused and that nothing was written."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent
from audit.services import Actor
from roles import files, golden
from roles.evaluation import canonical_digest
from roles.models import GoldenCase, Role, RoleVersion
from roles.services import create_role, create_role_version
from tests.conftest import INTAKE_INPUT
from tests.publishing import publish

GREETING = {"fields": [{"path": "draft.subject", "op": "equals", "value": "Re: Lease question"}]}
SENDER = {"tools_called": ["records.search"], "gates_hit": ["draft"]}
SUMMARY_DEFINITION = {
    "model": {"name": "offline-1", "temperature": 0, "max_tokens": 400},
    "system": "You summarise contracts for {{ tenant.name }}.",
    "steps": [
        {
            "key": "summary",
            "kind": "llm",
            "category": "internal",
            "prompt": "Summarise: {{ input.text }}",
            "output_schema": {
                "type": "object",
                "properties": {"summary": {"type": "string"}},
                "required": ["summary"],
            },
        }
    ],
}


def export(tmp_path: Path, name: str, **options) -> Path:
    out = tmp_path / name
    call_command(
        "role_export",
        tenant=options.pop("tenant", "harbor-legal"),
        role=options.pop("role", "intake-coordinator"),
        out=str(out),
        **options,
    )
    return out


def run_import(path: Path, tenant: str = "harbor-legal", **options) -> str:
    from io import StringIO

    stdout = StringIO()
    call_command("role_import", tenant=tenant, file=str(path), stdout=stdout, **options)
    return stdout.getvalue()


def counts() -> tuple[int, int, int, int]:
    return (
        Role.objects.count(),
        RoleVersion.objects.count(),
        GoldenCase.objects.count(),
        AuditEvent.objects.count(),
    )


def edited(path: Path, fmt: str, change) -> Path:
    """The file at `path`, changed by `change(document)`, written back in its format."""
    text = path.read_text(encoding="utf-8")
    document = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    change(document)
    path.write_text(files.dumps(document, fmt), encoding="utf-8")
    return path


def new_prompt(document: dict) -> None:
    document["bundle"]["steps"][0]["prompt"] = "Classify briefly: {{ input.subject }}"


@pytest.fixture
def cases(intake_role, users):
    """Two active golden cases and one retired one on the intake coordinator."""
    actor = Actor.for_user(users["ops"])
    greeting = golden.create_case(
        role=intake_role, name="greeting", input=INTAKE_INPUT, expectations=GREETING, actor=actor
    )
    sender = golden.create_case(
        role=intake_role, name="sender", input=INTAKE_INPUT, expectations=SENDER, actor=actor
    )
    old = golden.create_case(
        role=intake_role, name="old", input=INTAKE_INPUT, expectations=SENDER, actor=actor
    )
    golden.retire_case(case=old, actor=actor)
    return {"greeting": greeting, "sender": sender}


class TestExport:
    @pytest.mark.parametrize("fmt", ["json", "yaml"])
    def test_export_writes_the_active_version_and_active_cases_sorted(
        self, tmp_path, intake_role, cases, fmt
    ):
        v1 = intake_role.active_version

        out = export(tmp_path, f"intake.{fmt}")

        text = out.read_text(encoding="utf-8")
        document = files.loads(text, fmt)
        assert document["format"] == files.FORMAT
        assert document["tenant"] == "harbor-legal"
        assert document["role"] == {
            "slug": "intake-coordinator",
            "name": intake_role.name,
            "purpose": intake_role.purpose,
        }
        assert document["version"] == {
            "number": v1.number,
            "status": "published",
            "change_note": v1.change_note,
        }
        assert document["bundle"] == v1.definition
        assert [c["name"] for c in document["golden_cases"]] == ["greeting", "sender"]
        assert document["golden_cases"][0] == {
            "name": "greeting",
            "input": INTAKE_INPUT,
            "expectations": GREETING,
        }

    @pytest.mark.parametrize("fmt", ["json", "yaml"])
    def test_export_is_byte_stable_with_sorted_keys(self, tmp_path, cases, fmt):
        first = export(tmp_path, f"a.{fmt}").read_bytes()
        second = export(tmp_path, f"b.{fmt}").read_bytes()

        assert first == second
        if fmt == "json":
            assert first.endswith(b"}\n")
            assert list(json.loads(first)) == sorted(json.loads(first))
            assert (
                first.decode()
                == json.dumps(json.loads(first), sort_keys=True, indent=2, ensure_ascii=False)
                + "\n"
            )
        else:
            assert first.decode() == files.dumps(yaml.safe_load(first), "yaml")

    def test_format_flag_beats_the_extension_and_stdout_gets_the_document(
        self, capsys, intake_role
    ):
        call_command(
            "role_export",
            tenant="harbor-legal",
            role="intake-coordinator",
            format="yaml",
            out="-",
        )

        assert yaml.safe_load(capsys.readouterr().out)["bundle"] == (
            intake_role.active_version.definition
        )

    def test_a_named_version_is_exported(self, tmp_path, intake_role, users):
        v2 = create_role_version(
            role=intake_role,
            definition={**intake_role.active_version.definition, "system": "Be brief."},
            actor=Actor.for_user(users["ops"]),
        )

        out = export(tmp_path, "v1.json", version=1)
        latest = export(tmp_path, "default.json")

        assert json.loads(out.read_text())["version"]["number"] == 1
        assert json.loads(latest.read_text())["version"]["number"] == 1  # the active one
        assert json.loads(export(tmp_path, "v2.json", version=2).read_text())["bundle"] == (
            v2.definition
        )

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"tenant": "nowhere"}, "Unknown tenant 'nowhere'."),
            ({"role": "month-end-reporter"}, "No role 'month-end-reporter' in tenant"),
            ({"version": 99}, "has no version 99 (it has v1)"),
        ],
    )
    def test_unknown_tenant_role_or_version_writes_no_file(
        self, tmp_path, harbor, options, message
    ):
        with pytest.raises(CommandError, match=re.escape(message)):
            export(tmp_path, "out.json", **options)

        assert list(tmp_path.iterdir()) == []

    def test_a_missing_directory_is_a_clear_error(self, tmp_path, harbor):
        with pytest.raises(CommandError, match=r"Cannot write .*No such file or directory"):
            export(tmp_path, "missing/out.json")

        assert list(tmp_path.iterdir()) == []


class TestRoundTrip:
    @pytest.mark.parametrize("fmt", ["json", "yaml"])
    def test_export_edit_import_gives_a_draft_with_the_files_bundle_and_cases(
        self, tmp_path, intake_role, cases, fmt
    ):
        v1 = intake_role.active_version
        out = edited(export(tmp_path, f"intake.{fmt}"), fmt, new_prompt)
        expected = copy.deepcopy(v1.definition)
        new_prompt({"bundle": expected})

        printed = run_import(out)

        draft = intake_role.versions.get(number=2)
        assert draft.definition == expected
        assert draft.status == RoleVersion.Status.DRAFT
        assert draft.change_note == v1.change_note
        active = GoldenCase.objects.filter(role=intake_role, retired_at__isnull=True)
        assert {c.name: c.expectations for c in active} == {
            "greeting": GREETING,
            "sender": SENDER,
        }
        assert "Drafted intake-coordinator v2 (draft)" in printed
        assert "Golden cases created: none." in printed
        assert "needs a publication review in the admin" in printed

        again = json.loads(files.dumps(files.export_document(draft), "json"))
        original = files.loads(out.read_text(encoding="utf-8"), fmt)
        assert again["version"] == {"number": 2, "status": "draft", "change_note": v1.change_note}
        again.pop("version"), original.pop("version")
        assert again == original

    def test_import_records_one_import_event_with_the_bundle_digest(
        self, tmp_path, intake_role, cases
    ):
        out = edited(export(tmp_path, "intake.json"), "json", new_prompt)

        run_import(out, note="New classify prompt")

        draft = intake_role.versions.get(number=2)
        event = AuditEvent.objects.get(action="role_version.imported")
        assert event.object_id == str(draft.pk)
        assert event.data == {
            "role": "intake-coordinator",
            "number": 2,
            "role_created": False,
            "cases_created": [],
            "cases_updated": [],
            "digest": canonical_digest(draft.definition),
        }
        assert draft.change_note == "New classify prompt"

    def test_changed_and_new_cases_are_updated_and_created_and_missing_ones_kept(
        self, tmp_path, intake_role, cases
    ):
        def change(document):
            new_prompt(document)
            document["golden_cases"] = [
                {"name": "greeting", "input": INTAKE_INPUT, "expectations": SENDER},
                {"name": "urgent", "input": INTAKE_INPUT, "expectations": GREETING},
            ]

        out = edited(export(tmp_path, "intake.json"), "json", change)

        printed = run_import(out)

        cases["greeting"].refresh_from_db()
        assert cases["greeting"].expectations == SENDER
        assert GoldenCase.objects.get(role=intake_role, name="urgent").expectations == GREETING
        assert GoldenCase.objects.get(role=intake_role, name="sender").is_active  # not retired
        assert "Golden cases created: urgent." in printed
        assert "Golden cases updated: greeting." in printed
        event = AuditEvent.objects.get(action="role_version.imported")
        assert (event.data["cases_created"], event.data["cases_updated"]) == (
            ["urgent"],
            ["greeting"],
        )

    def test_import_never_publishes_or_activates(self, tmp_path, intake_role, cases):
        def published_and_active(document):
            new_prompt(document)
            document["version"]["status"] = "published"

        active_before = intake_role.active_version_id
        out = edited(export(tmp_path, "intake.json"), "json", published_and_active)

        run_import(out)

        intake_role.refresh_from_db()
        draft = intake_role.versions.get(number=2)
        assert draft.status == RoleVersion.Status.DRAFT
        assert draft.published_at is None
        assert intake_role.active_version_id == active_before
        assert intake_role.canary_version_id is None

    def test_an_identical_bundle_is_refused(self, tmp_path, intake_role, cases):
        out = export(tmp_path, "intake.json")
        before = counts()

        with pytest.raises(CommandError, match="Nothing to import: the bundle equals version 1"):
            run_import(out)

        assert counts() == before

    def test_the_files_tenant_is_ignored_and_a_missing_role_is_created(
        self, tmp_path, harbor, northwind, users
    ):
        system = Actor.system("tests")
        role = create_role(
            tenant=harbor,
            slug="contract-summary",
            name="Contract summary",
            actor=system,
            purpose="Summarises contracts.",
        )
        version = create_role_version(role=role, definition=SUMMARY_DEFINITION, actor=system)
        golden.create_case(
            role=role,
            name="short",
            input={"text": "A lease."},
            expectations={"max_tokens": 500},
            actor=system,
        )
        version = publish(version)
        out = export(tmp_path, "summary.yaml", role="contract-summary")
        assert not Role.objects.filter(tenant=northwind, slug="contract-summary").exists()

        printed = run_import(out, tenant="northwind-accounting", **{"as": "ops"})

        imported = Role.objects.get(tenant=northwind, slug="contract-summary")
        assert (imported.name, imported.purpose) == ("Contract summary", "Summarises contracts.")
        draft = imported.versions.get()
        assert (draft.number, draft.status, draft.definition) == (1, "draft", version.definition)
        assert draft.created_by == users["ops"]
        assert imported.active_version is None
        case = imported.golden_cases.get()
        assert (case.tenant_id, case.name, case.input) == (
            northwind.pk,
            "short",
            {"text": "A lease."},
        )
        assert "Created role contract-summary in northwind-accounting." in printed
        assert "Golden cases created: short." in printed
        event = AuditEvent.objects.get(action="role_version.imported")
        assert event.tenant_id == northwind.pk
        assert event.data["role_created"] is True


BAD_FILES = [
    ("bad.json", '{"format": "agentdesk.role/1",\n "role": }', r"Invalid JSON \(line 2, column"),
    ("bad.yaml", "format: agentdesk.role/1\nrole: [unclosed\n", r"Invalid YAML \(line 3"),
    (
        "tag.yaml",
        "format: agentdesk.role/1\nrole: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
        r"Invalid YAML \(line 2, column 7\).*could not determine a constructor",
    ),
    ("nul.json", '{"format": "agentdesk.role/1"\x00}', r"NUL byte \(line 1\)"),
    ("list.json", "[1, 2]", "holds one object .* not a list"),
    ("list.yaml", "- a\n- b\n", "holds one object .* not a list"),
    (
        "alias.yaml",
        "a: &x [1, 2]\nb: *x\n",
        "YAML anchors and aliases are not supported",
    ),
    (
        "nan.json",
        '{"format": "agentdesk.role/1", "bundle": {"x": NaN}}',
        "NaN is not a JSON number",
    ),
    (
        "date.yaml",
        "format: agentdesk.role/1\nbundle: {when: 2026-12-03}\n",
        "is a YAML date, which JSON cannot hold; quote it",
    ),
]


def valid_document(intake_role) -> dict:
    document = files.export_document(intake_role.active_version)
    new_prompt(document)
    return document


class TestBadFilesWriteNothing:
    @pytest.mark.parametrize(("name", "text", "message"), BAD_FILES)
    def test_a_file_that_does_not_parse_writes_nothing(
        self, tmp_path, intake_role, cases, name, text, message
    ):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        before = counts()

        with pytest.raises(CommandError, match=message):
            run_import(path)

        assert counts() == before
        assert not Path("/tmp/pwned").exists()

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (lambda d: d.update(format="agentdesk.role/2"), "'format' must be 'agentdesk.role/1'"),
            (lambda d: d.update(extra=1), "Unknown keys: extra"),
            (lambda d: d.pop("bundle"), "Missing keys: bundle"),
            (lambda d: d.update(bundle=[]), "'bundle' must be an object, not a list"),
            (lambda d: d["role"].update(slug="Not a slug!"), "'role.slug' must be a slug"),
            (lambda d: d["role"].update(admin=True), "'role' has unknown keys: admin"),
            (lambda d: d.update(golden_cases={}), "'golden_cases' must be a list"),
            (
                lambda d: d["golden_cases"].append({"name": "x", "input": {}}),
                "must be an object with exactly name, input and expectations",
            ),
            (
                lambda d: d["golden_cases"].append(
                    {"name": "x", "input": {}, "expectations": {}, "source": "run"}
                ),
                "must be an object with exactly name, input and expectations",
            ),
            (
                lambda d: d["bundle"]["steps"][1].update(tool="shell.exec"),
                "The bundle: Step 'lookup': unknown tool 'shell.exec'",
            ),
            (
                lambda d: d["bundle"]["steps"].append({"key": "x", "kind": "dance"}),
                "The bundle: Step 'x': 'kind' must be one of llm, tool, review",
            ),
            (
                lambda d: d["golden_cases"].append(
                    {"name": "bad", "input": INTAKE_INPUT, "expectations": {"vibes": "good"}}
                ),
                "Golden case 'bad': expectations: Unknown expectations: vibes",
            ),
            (
                lambda d: d["golden_cases"].append(
                    {"name": "old", "input": INTAKE_INPUT, "expectations": SENDER}
                ),
                "Golden case 'old': the role has a retired case of that name",
            ),
        ],
    )
    def test_an_invalid_document_writes_nothing(
        self, tmp_path, intake_role, cases, change, message
    ):
        document = valid_document(intake_role)
        change(document)
        path = tmp_path / "role.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        before = counts()

        with pytest.raises(CommandError, match=message) as caught:
            run_import(path)

        assert str(caught.value).startswith(f"Nothing imported from {path}:\n- ")
        assert counts() == before

    def test_a_bad_case_after_good_ones_rolls_back_the_role_draft_and_cases(
        self, tmp_path, harbor, northwind
    ):
        document = files.export_document(
            Role.objects.get(tenant=northwind, slug="month-end-reporter").active_version
        )
        document["role"]["slug"] = "brand-new"
        document["bundle"] = SUMMARY_DEFINITION
        document["golden_cases"] = [
            {"name": "fine", "input": {"text": "x"}, "expectations": {}},
            {"name": "broken", "input": {"text": "x"}, "expectations": {"fields": "no"}},
        ]
        path = tmp_path / "role.yaml"
        path.write_text(files.dumps(document, "yaml"), encoding="utf-8")
        before = counts()

        with pytest.raises(CommandError, match="Golden case 'broken': expectations: 'fields'"):
            run_import(path)

        assert counts() == before
        assert not Role.objects.filter(slug="brand-new").exists()

    def test_every_problem_is_listed_one_per_line(self, tmp_path, harbor):
        path = tmp_path / "role.json"
        path.write_text(json.dumps({"format": "x", "role": {}, "bundle": 1}), encoding="utf-8")

        with pytest.raises(CommandError) as caught:
            run_import(path)

        lines = str(caught.value).splitlines()[1:]
        assert lines == [
            "- 'format' must be 'agentdesk.role/1', not 'x'.",
            "- 'role.slug' must be text (a slug).",
            "- 'role.name' must be non-empty text.",
            "- 'bundle' must be an object, not a number.",
        ]

    def test_a_missing_or_non_utf8_file_is_a_clear_error(self, tmp_path, harbor):
        binary = tmp_path / "role.json"
        binary.write_bytes(b'{"format": "\xff"}')
        before = counts()

        with pytest.raises(CommandError, match=r"Cannot read .*No such file or directory"):
            run_import(tmp_path / "absent.json")
        with pytest.raises(CommandError, match=r"is not UTF-8 text \(byte 12\)"):
            run_import(binary)

        assert counts() == before

    def test_an_unknown_tenant_is_refused(self, tmp_path, intake_role):
        out = edited(export(tmp_path, "intake.json"), "json", new_prompt)
        before = counts()

        with pytest.raises(CommandError, match=re.escape("Unknown tenant 'nowhere'.")):
            run_import(out, tenant="nowhere")

        assert counts() == before


class TestWhoImports:
    @pytest.mark.parametrize(
        ("username", "message"),
        [
            ("reviewer.harbor", "'reviewer.harbor' is not an active operator of harbor-legal"),
            ("reviewer.northwind", "'reviewer.northwind' is not an active operator"),
            ("auditor", "'auditor' is not an active operator"),
            ("nobody", "No user 'nobody'."),
        ],
    )
    def test_a_non_operator_is_refused_and_nothing_is_written(
        self, tmp_path, intake_role, username, message
    ):
        out = edited(export(tmp_path, "intake.json"), "json", new_prompt)
        before = counts()

        with pytest.raises(CommandError, match=message):
            run_import(out, **{"as": username})

        assert counts() == before

    def test_an_operator_of_another_tenant_is_refused(self, tmp_path, intake_role, harbor, users):
        from tenants.services import grant_membership

        outsider = type(users["ops"]).objects.create_user("ops.northwind", password="pw-x-123456")
        grant_membership(
            user=outsider,
            tenant=intake_role.tenant.__class__.objects.get(slug="northwind-accounting"),
            kind="operator",
            actor=Actor.system("tests"),
        )
        out = edited(export(tmp_path, "intake.json"), "json", new_prompt)
        before = counts()

        with pytest.raises(
            CommandError, match=re.escape("'ops.northwind' is not an active operator")
        ):
            run_import(out, **{"as": "ops.northwind"})

        assert counts() == before

    def test_an_inactive_operator_is_refused(self, tmp_path, intake_role, users):
        users["ops.second"].is_active = False
        users["ops.second"].save(update_fields=["is_active"])
        out = edited(export(tmp_path, "intake.json"), "json", new_prompt)
        before = counts()

        with pytest.raises(CommandError, match=re.escape("'ops.second' is not an active operator")):
            run_import(out, **{"as": "ops.second"})

        assert counts() == before

    def test_an_operator_is_the_drafts_author_and_the_events_actor(
        self, tmp_path, intake_role, users
    ):
        out = edited(export(tmp_path, "intake.json"), "json", new_prompt)

        run_import(out, **{"as": "ops"})

        draft = intake_role.versions.get(number=2)
        assert draft.created_by == users["ops"]
        event = AuditEvent.objects.get(action="role_version.imported")
        assert (event.actor_user, event.actor_label) == (users["ops"], "ops")

    def test_without_as_the_system_imports(self, tmp_path, intake_role):
        out = edited(export(tmp_path, "intake.json"), "json", new_prompt)

        run_import(out)

        assert intake_role.versions.get(number=2).created_by is None
        event = AuditEvent.objects.get(action="role_version.imported")
        assert (event.actor_type, event.actor_label) == ("system", "command:role_import")


TRICKY_TEXT = [
    "line one\nline two\n",
    "no final newline\nat all",
    "trailing spaces   \nhere",
    "  leading spaces\n\n\nblank lines\n\n",
    "tab\there\nand a \\ backslash",
    "yes",
    "null",
    "2026-12-03",
    "--- looks like a document\n...",
    "# a comment?\n- a list?",
    "Ünïcode — “quotes” 日本\n",
    "",
    "{{ input.subject }}",
    "ends with a carriage return\r\n",
]


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_tricky_text_survives_dumps_and_loads_exactly(fmt):
    document = {
        "format": files.FORMAT,
        "role": {"slug": "r", "name": "R"},
        "bundle": {"texts": TRICKY_TEXT, "numbers": [0, 0.5, -1, 10**20], "flags": [True, None]},
    }

    text = files.dumps(document, fmt)

    assert files.loads(text, fmt) == document
    assert files.dumps(files.loads(text, fmt), fmt) == text


def test_multi_line_prompts_are_yaml_blocks(intake_role):
    text = files.dumps(files.export_document(intake_role.active_version), "yaml")

    assert "prompt: |" in text


def test_a_yml_file_is_read_as_yaml_and_the_role_keeps_its_own_name(tmp_path, intake_role):
    document = valid_document(intake_role)
    document["role"]["name"] = "Renamed in the file"
    path = tmp_path / "intake.yml"
    path.write_text(files.dumps(document, "yaml"), encoding="utf-8")

    run_import(path)

    intake_role.refresh_from_db()
    assert intake_role.versions.get(number=2).definition == document["bundle"]
    assert intake_role.name == "Intake coordinator"


def test_without_a_format_loads_tells_json_from_yaml(intake_role):
    document = valid_document(intake_role)

    assert files.loads(files.dumps(document, "json")) == document
    assert files.loads(files.dumps(document, "yaml")) == document


def test_import_document_itself_refuses_a_malformed_document(harbor):
    before = counts()

    with pytest.raises(ValidationError, match="Missing keys: bundle, format, role"):
        files.import_document(tenant=harbor, document={}, actor=Actor.system("tests"))

    assert counts() == before
