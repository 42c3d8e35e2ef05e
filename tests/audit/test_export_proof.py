"""Exports anyone can verify without our database, and the attacks on them: an edited row,
a cut tail, a removed middle row, a swapped or forged manifest. Checked both through
`manage.py audit_verify --export` and through the standalone `python -m audit.proof`."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from audit import proof, signing
from audit.models import AuditEvent
from audit.services import Actor, record
from tests.audit.support import other_signer


@pytest.fixture
def trail(harbor):
    for i in range(6):
        record(
            tenant=harbor,
            actor=Actor.system(),
            action=f"test.{i}",
            reason=f"reason {i}",
            data={"i": i, "text": 'naïve, "quoted"\nline'},
        )


def export(tmp_path, name="export.csv", fmt="csv", **options) -> Path:
    path = tmp_path / name
    call_command(
        "audit_export",
        tenant="harbor-legal",
        format=fmt,
        out=str(path),
        stdout=StringIO(),
        **options,
    )
    return path


def manifest_of(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".manifest.json").read_text())


def verify_export(path: Path) -> tuple[str, str]:
    out = StringIO()
    try:
        call_command("audit_verify", export=str(path), stdout=out)
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), ""


def offline(path: Path, key: str | None = None) -> subprocess.CompletedProcess:
    """The standalone verifier, in a fresh interpreter without Django settings."""
    key = key or signing.verifier().encode()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(settings.BASE_DIR)}
    return subprocess.run(
        [sys.executable, "-m", "audit.proof", "verify-export", str(path), "--key", key],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_untouched_export_verifies_with_and_without_the_database(tmp_path, trail, fmt):
    path = export(tmp_path, f"export.{fmt}", fmt)

    printed, error = verify_export(path)
    result = offline(path)

    count = AuditEvent.objects.filter(tenant__slug="harbor-legal").exclude(action="audit.exported")
    assert error == ""
    assert f"ok ({count.count()} rows" in printed
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"ok: {count.count()} rows")


def test_the_manifest_describes_the_file_and_its_checkpoint(tmp_path, trail, harbor):
    path = export(tmp_path)
    manifest = manifest_of(path)

    events = AuditEvent.objects.filter(tenant=harbor).exclude(action="audit.exported")
    first, last = events.order_by("seq").first(), events.order_by("seq").last()
    assert manifest["tenant"] == {"id": harbor.pk, "slug": "harbor-legal"}
    assert manifest["rows"] == events.count()
    assert (manifest["first_seq"], manifest["first_hash"]) == (first.seq, first.hash)
    assert (manifest["last_seq"], manifest["last_hash"]) == (last.seq, last.hash)
    assert manifest["file"]["sha256"] == proof.sha256_hex(path.read_bytes())
    checkpoint = proof.open_checkpoint(manifest["checkpoint"], signing.verifier())
    assert (checkpoint.size, checkpoint.head_hash) == (last.seq, last.hash)
    exported = AuditEvent.objects.get(tenant=harbor, action="audit.exported")
    assert exported.data["manifest_sha256"] == proof.sha256_hex(proof.canonical_json(manifest))


def test_an_edited_row_is_caught(tmp_path, trail):
    path = export(tmp_path, "export.jsonl", "jsonl")
    lines = lines_of(path)
    row = json.loads(lines[3])
    row["reason"] = "nothing happened"
    lines[3] = json.dumps(row, ensure_ascii=False) + "\n"
    path.write_text("".join(lines), encoding="utf-8")

    printed, error = verify_export(path)

    assert "the file's SHA-256 is not the manifest's" in error
    assert f"seq {row['seq']} (line 4): its payload (data, reason) does not match" in printed
    assert offline(path).returncode == 1


def test_an_edited_row_with_its_hashes_recomputed_is_still_caught(tmp_path, trail):
    path = export(tmp_path)
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    header, body = rows[0], rows[1:]
    target = proof.row_from_csv(body[2])
    target["reason"] = "rewritten"
    target["payload_digest"] = proof.payload_digest(data=target["data"], reason="rewritten")
    target["hash"] = proof.event_hash(target)
    body[2] = proof.csv_cells(target)
    out = io.StringIO()
    csv.writer(out).writerows([header, *body])
    path.write_text(out.getvalue(), encoding="utf-8")

    printed, error = verify_export(path)

    assert "SHA-256 is not the manifest's" in printed
    assert f"seq {target['seq'] + 1} (line 5): its previous hash is not the hash" in printed
    assert error


def test_a_cut_tail_is_caught(tmp_path, trail):
    path = export(tmp_path, "export.jsonl", "jsonl")
    path.write_text("".join(lines_of(path)[:-2]), encoding="utf-8")

    printed, _error = verify_export(path)

    assert "SHA-256 is not the manifest's" in printed
    assert "rows, the manifest says" in printed
    assert "the last row is not the one the manifest names" in printed
    assert offline(path).returncode == 1


def test_a_removed_middle_row_is_caught(tmp_path, trail):
    path = export(tmp_path)
    lines = lines_of(path)
    removed = proof.row_from_csv(next(csv.reader([lines[3]])))
    del lines[3]
    path.write_text("".join(lines), encoding="utf-8")

    printed, error = verify_export(path)

    assert f"expected seq {removed['seq']} (a row is missing or out of order)" in printed
    assert error


def test_a_manifest_swapped_from_another_export_is_caught(tmp_path, trail, harbor):
    first = export(tmp_path, "first.csv")
    record(tenant=harbor, actor=Actor.system(), action="test.later")
    second = export(tmp_path, "second.csv")
    first.with_name("first.csv.manifest.json").write_text(
        second.with_name("second.csv.manifest.json").read_text()
    )

    printed, error = verify_export(first)

    assert "the manifest belongs to another export" in printed
    assert error


def test_a_manifest_rewritten_to_match_a_cut_file_fails_its_signature(tmp_path, trail):
    path = export(tmp_path, "export.jsonl", "jsonl")
    lines = lines_of(path)[:-1]
    path.write_text("".join(lines), encoding="utf-8")
    manifest = manifest_of(path)
    last = json.loads(lines[-1])
    manifest.update(
        rows=len(lines),
        last_seq=last["seq"],
        last_hash=last["hash"],
        file={
            **manifest["file"],
            "sha256": proof.sha256_hex(path.read_bytes()),
            "bytes": len(path.read_bytes()),
        },
    )
    path.with_name(path.name + ".manifest.json").write_text(json.dumps(manifest))

    printed, _error = verify_export(path)

    assert printed.splitlines() == [
        "BROKEN: the manifest's signature does not verify with the pinned key"
    ]
    # Re-signed with a key of the attacker's: the pinned key still refuses it.
    forged = proof.sign_manifest(manifest, other_signer())
    path.with_name(path.name + ".manifest.json").write_text(json.dumps(forged))
    assert verify_export(path)[1]
    assert offline(path).returncode == 1


def test_the_offline_verifier_needs_a_well_formed_pinned_key(tmp_path, trail):
    path = export(tmp_path)

    result = offline(path, key="not-a-key")

    assert result.returncode == 2
    assert "not a verifier key" in result.stderr


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped_and_still_verify(tmp_path, harbor):
    record(
        tenant=harbor,
        actor=Actor.system("=cmd|' /C calc'!A0"),
        action="test.formula",
        reason='=HYPERLINK("http://example.invalid","click")',
        data={},
    )
    path = export(tmp_path)

    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    row = next(r for r in rows if r["action"] == "test.formula")
    assert row["reason"].startswith("'=HYPERLINK(")
    assert row["actor_label"].startswith("'=cmd")
    assert verify_export(path)[1] == ""


def test_a_filtered_period_export_verifies_and_says_it_is_a_part(tmp_path, trail, harbor):
    events = list(AuditEvent.objects.filter(tenant=harbor).order_by("seq"))
    middle = events[len(events) // 2]
    path = export(tmp_path, since=middle.created_at.isoformat())

    manifest = manifest_of(path)

    assert manifest["query"]["since"] == middle.created_at.isoformat()
    assert manifest["first_seq"] >= middle.seq - 1
    assert verify_export(path)[1] == ""


def test_the_bundle_zip_is_verified_like_the_file(tmp_path, trail):
    path = export(tmp_path)
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as out:
        out.writestr("export.csv", path.read_bytes())
        out.writestr("manifest.json", path.with_name("export.csv.manifest.json").read_bytes())

    assert verify_export(bundle)[1] == ""
    assert offline(bundle).returncode == 0
