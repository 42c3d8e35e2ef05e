"""Attacks on the audit trail by someone who can rewrite the database (and, for some, the
checkpoint store without the key): each one is caught by `audit_verify`, which names the
first bad place and exits non-zero."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from audit import checkpoints, proof, signing
from audit.models import AuditChain, AuditEvent
from audit.services import Actor, record
from audit.verification import verify_chain
from tenants.services import create_tenant
from tests.audit.support import beneath_the_triggers, other_signer, rehash_from


@pytest.fixture
def chain(harbor):
    """Five events of harbor's, checkpointed: (first, ..., last) of them."""
    events = [
        record(tenant=harbor, actor=Actor.system(), action=f"test.{i}", reason=f"reason {i}")
        for i in range(5)
    ]
    checkpoints.checkpoint(harbor.pk)
    return events


def where(problems) -> list[str]:
    return [p.where for p in problems]


def verify(*args, **options) -> tuple[str, str]:
    """(printed, error) of `audit_verify`; error is "" when it exits 0."""
    out = StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, **options)
    except CommandError as exc:
        return out.getvalue(), str(exc)
    return out.getvalue(), ""


def test_an_intact_checkpointed_chain_verifies(harbor, chain):
    assert verify_chain(tenant_id=harbor.pk) == []
    printed, error = verify(tenant="harbor-legal")
    assert error == ""
    count = AuditEvent.objects.filter(tenant=harbor).count()
    assert printed.splitlines() == [f"harbor-legal: ok ({count} events)"]


def test_editing_an_events_reason_is_caught_at_that_event(harbor, chain):
    target = chain[2]
    with beneath_the_triggers():
        AuditEvent.objects.filter(pk=target.pk).update(reason="nothing to see")

    problems = verify_chain(tenant_id=harbor.pk)

    assert [str(p) for p in problems] == [
        f"seq {target.seq}: its data or reason does not match its payload digest"
    ]


def test_editing_who_acted_is_caught_at_that_event(harbor, chain, users):
    target = chain[1]
    with beneath_the_triggers():
        AuditEvent.objects.filter(pk=target.pk).update(actor_user=users["ops"])

    problems = verify_chain(tenant_id=harbor.pk)

    assert [str(p) for p in problems] == [f"seq {target.seq}: its content does not match its hash"]


def test_deleting_an_event_in_the_middle_is_caught(harbor, chain):
    target = chain[2]
    with beneath_the_triggers():
        AuditEvent.objects.filter(pk=target.pk).delete()

    problems = verify_chain(tenant_id=harbor.pk)

    assert where(problems)[0] == f"seq {target.seq + 1}"
    assert "events are missing or reordered" in problems[0].problem


def test_deleting_the_tail_and_rewinding_the_head_is_caught_by_the_checkpoint(harbor, chain):
    last = chain[-1]
    keep = chain[-3]
    with beneath_the_triggers():
        AuditEvent.objects.filter(tenant=harbor, seq__gt=keep.seq).delete()
        AuditChain.objects.filter(tenant=harbor).update(last_seq=keep.seq, last_hash=keep.hash)

    problems = verify_chain(tenant_id=harbor.pk)

    assert [str(p) for p in problems] == [
        f"seq {keep.seq + 1}: events {keep.seq + 1} to {last.seq} were signed by checkpoint "
        "#1 and are gone"
    ]
    _printed, error = verify(tenant="harbor-legal")
    assert error.startswith(f"Audit trail broken: harbor-legal seq {keep.seq + 1}:")


def test_rewriting_an_event_and_rehashing_every_later_one_is_caught(harbor, chain):
    target = chain[1]
    with beneath_the_triggers():
        AuditEvent.objects.filter(pk=target.pk).update(reason="rewritten")
        rehash_from(harbor.pk, target.seq)

    problems = verify_chain(tenant_id=harbor.pk)

    assert [str(p) for p in problems] == [
        f"seq {chain[-1].seq}: is not the event checkpoint #1 signed: the chain was rewritten"
    ]


def test_reordering_two_events_is_caught(harbor, chain):
    a, b = chain[1], chain[2]
    with beneath_the_triggers():
        AuditEvent.objects.filter(pk=a.pk).update(seq=10**9)
        AuditEvent.objects.filter(pk=b.pk).update(seq=a.seq)
        AuditEvent.objects.filter(pk=a.pk).update(seq=b.seq)

    problems = verify_chain(tenant_id=harbor.pk)

    assert where(problems)[0] == f"seq {a.seq}"
    assert len(problems) >= 2


def test_deleting_a_tenants_whole_chain_is_caught(harbor, chain):
    with beneath_the_triggers():
        AuditEvent.objects.filter(tenant=harbor).delete()
        AuditChain.objects.filter(tenant=harbor).delete()

    problems = verify_chain(tenant_id=harbor.pk)

    assert [str(p) for p in problems] == [
        f"seq 1: events 1 to {chain[-1].seq} were signed by checkpoint #1 and are gone"
    ]


def test_deleting_a_tenant_with_its_chain_is_caught_by_its_checkpoints(db, system_actor):
    tenant = create_tenant(slug="short-lived", name="Short-lived", actor=system_actor)
    record(tenant=tenant, actor=system_actor, action="test.one")
    checkpoints.checkpoint(tenant.pk)
    with beneath_the_triggers(), connection.cursor() as cursor:
        for table in ("audit_auditevent", "audit_auditchain"):
            cursor.execute(f"DELETE FROM {table} WHERE tenant_id = %s", [tenant.pk])
        cursor.execute("DELETE FROM tenants_historicaltenant WHERE id = %s", [tenant.pk])
        cursor.execute("DELETE FROM tenants_tenant WHERE id = %s", [tenant.pk])

    printed, error = verify()

    assert f"(deleted tenant #{tenant.pk}): BROKEN" in printed
    assert "were signed by checkpoint #1 and are gone" in printed
    assert error


def test_removing_a_checkpoint_from_the_middle_of_its_log_is_caught(harbor, chain):
    for _ in range(2):
        checkpoints.checkpoint(harbor.pk)
    store = checkpoints.store()
    folder = store.root / checkpoints.log_name(harbor.pk)
    second = folder / "000000000002.note"
    second.chmod(0o644)
    second.unlink()

    problems = verify_chain(tenant_id=harbor.pk)

    assert [str(p) for p in problems] == [
        "checkpoint #2: checkpoints #2 to #2 are missing from the store",
        "checkpoint #3: does not follow the checkpoint before it: one was removed or replaced",
    ]


def test_a_checkpoint_signed_with_another_key_is_caught(harbor, chain):
    chain_head = AuditChain.objects.get(tenant=harbor)
    last = checkpoints.store().last(checkpoints.log_name(harbor.pk))
    forged = proof.Checkpoint(
        origin=checkpoints.origin(harbor.pk),
        size=chain_head.last_seq,
        head_hash=chain_head.last_hash,
        time=timezone.now(),
        prev=proof.note_digest(last[1]),
    )
    checkpoints.store().append(
        checkpoints.log_name(harbor.pk), 2, proof.sign_note(forged.body(), other_signer())
    )

    problems = verify_chain(tenant_id=harbor.pk)

    assert [p.where for p in problems] == ["checkpoint #2"]
    assert problems[0].problem.startswith("forged or damaged (")


def test_an_edited_checkpoint_no_longer_verifies(harbor, chain):
    folder = checkpoints.store().root / checkpoints.log_name(harbor.pk)
    note = folder / "000000000001.note"
    text = note.read_text()
    size = str(chain[-1].seq)
    note.chmod(0o644)
    note.write_text(text.replace(f"\n{size}\n", f"\n{chain[-2].seq}\n", 1))

    problems = verify_chain(tenant_id=harbor.pk)

    assert [str(p) for p in problems] == [
        "checkpoint #1: forged or damaged (the signature of agentdesk-audit does not verify: "
        "the note was altered)"
    ]


def test_a_log_re_signed_with_a_new_key_fails_against_the_pinned_key(
    harbor, chain, settings, tmp_path
):
    pinned = signing.verifier().encode()
    # The attacker cuts the tail, then signs a fresh log of their own with a key of theirs.
    keep = chain[-3]
    with beneath_the_triggers():
        AuditEvent.objects.filter(tenant=harbor, seq__gt=keep.seq).delete()
        AuditChain.objects.filter(tenant=harbor).update(last_seq=keep.seq, last_hash=keep.hash)
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "forged-store"
    settings.AUDIT_SIGNING_KEY_FILE = tmp_path / "attacker.key"
    signing.create_key()
    checkpoints.checkpoint(harbor.pk)

    _, error = verify(tenant="harbor-legal", key=pinned)

    assert error == (
        "Audit trail broken: harbor-legal checkpoint #1: forged or damaged (the note carries "
        "no signature by the key agentdesk-audit)"
    )


def test_a_chain_whose_checkpoints_stopped_is_loud(harbor, chain, settings):
    settings.AUDIT_CHECKPOINT_SECONDS = 60
    later = timezone.now() + timedelta(minutes=5)

    problems = verify_chain(tenant_id=harbor.pk, now=later)

    assert [p.where for p in problems] == ["checkpoints"]
    assert re.match(r"none since .* UTC; one is due every 60 s", problems[0].problem)


def test_a_chain_never_checkpointed_is_loud(harbor, settings):
    record(tenant=harbor, actor=Actor.system(), action="test.unsealed")
    settings.AUDIT_CHECKPOINT_SECONDS = 60
    later = timezone.now() + timedelta(days=1)

    problems = verify_chain(tenant_id=harbor.pk, now=later)

    assert [str(p) for p in problems] == [
        "checkpoints: none covers this chain: it was never checkpointed"
    ]


def test_a_checkpoint_is_written_even_when_nothing_happened(harbor, chain):
    first = checkpoints.latest(harbor.pk, signing.verifier())
    written = checkpoints.checkpoint(harbor.pk)

    assert written.number == 2
    assert (written.checkpoint.size, written.checkpoint.head_hash) == (
        first.size,
        first.head_hash,
    )
    assert written.checkpoint.time > first.time
    assert verify_chain(tenant_id=harbor.pk) == []


def test_without_the_signing_key_nothing_is_checkpointed(harbor, settings, tmp_path):
    settings.AUDIT_SIGNING_KEY_FILE = tmp_path / "missing.key"

    with pytest.raises(signing.SigningKeyMissing, match="audit_key --create"):
        checkpoints.checkpoint(harbor.pk)
    with pytest.raises(CommandError, match="No audit signing key"):
        call_command("audit_checkpoint", stdout=StringIO())

    assert checkpoints.store().logs() == []


def test_a_checkpoint_number_is_never_overwritten(harbor, chain):
    log = checkpoints.log_name(harbor.pk)
    before = checkpoints.store().entries(log)

    with pytest.raises(checkpoints.CheckpointStoreError, match="already exists"):
        checkpoints.store().append(log, 1, "a replacement\n")

    assert checkpoints.store().entries(log) == before


def test_the_checkpoint_is_a_c2sp_signed_note(harbor, chain):
    _, note = checkpoints.store().last(checkpoints.log_name(harbor.pk))
    body, _, signature = note.partition("\n\n")
    lines = body.split("\n")

    assert lines[0] == f"agentdesk.local/audit/tenant-{harbor.pk}"
    assert lines[1] == str(chain[-1].seq)
    assert proof.open_checkpoint(note, signing.verifier()).head_hash == chain[-1].hash
    assert lines[3].startswith("time ")
    assert signature.startswith("\u2014 agentdesk-audit ")


def test_the_verifier_key_is_printed_for_auditors_to_pin(db):
    out = StringIO()
    call_command("audit_key", stdout=out)

    printed = out.getvalue().strip()
    assert proof.Verifier.decode(printed) == signing.verifier()
    assert printed.startswith("agentdesk-audit+")
