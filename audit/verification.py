"""Checking a chain against itself and against its signed checkpoints.

The chain alone shows an edited or removed event in the middle. The checkpoints show what
the chain alone cannot: events cut from the tail (with the head row rewound), a chain
re-hashed from some event on, a chain deleted whole, and a checkpoint removed, replaced or
forged. Every problem names where it is: a sequence number or a checkpoint number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from audit import checkpoints, proof, signing
from audit.models import AuditChain, AuditEvent
from audit.services import hashed_fields


@dataclass(frozen=True)
class ChainProblem:
    tenant_id: int | None
    where: str  # "seq 12" or "checkpoint #3"
    problem: str

    def __str__(self):
        return f"{self.where}: {self.problem}"


@dataclass
class _Log:
    """What a chain's checkpoints promise: the head hash at each checkpointed size."""

    heads: dict[int, tuple[int, str]]  # size -> (checkpoint number, head hash)
    last: proof.Checkpoint | None


def max_checkpoint_age() -> timedelta:
    """How old a chain's newest checkpoint may be: two periods and a minute."""
    return timedelta(seconds=2 * settings.AUDIT_CHECKPOINT_SECONDS + 60)


def _read_log(
    tenant_id: int | None, verifier: proof.Verifier, problems: list[ChainProblem]
) -> _Log:
    log = _Log(heads={}, last=None)
    previous_note = None
    expected_number = 1
    for number, note in checkpoints.store().entries(checkpoints.log_name(tenant_id)):
        where = f"checkpoint #{number}"

        def problem(text: str, where=where) -> None:
            problems.append(ChainProblem(tenant_id, where, text))

        if number != expected_number:
            problem(
                f"checkpoints #{expected_number} to #{number - 1} are missing from the store",
                where=f"checkpoint #{expected_number}",
            )
        expected_number = number + 1
        try:
            point = proof.open_checkpoint(note, verifier)
        except proof.ProofError as exc:
            problem(f"forged or damaged ({exc})")
            previous_note = note
            continue
        if point.origin != checkpoints.origin(tenant_id):
            problem(f"belongs to another log ({point.origin})")
        if point.prev != (proof.note_digest(previous_note) if previous_note else ""):
            problem("does not follow the checkpoint before it: one was removed or replaced")
        if log.last is not None:
            if point.size < log.last.size:
                problem(f"the chain went back from seq {log.last.size} to seq {point.size}")
            if point.time <= log.last.time:
                problem("is not later than the checkpoint before it")
        if point.size:
            earlier = log.heads.get(point.size)
            if earlier and earlier[1] != point.head_hash:
                problem(f"names another head for seq {point.size} than checkpoint #{earlier[0]}")
            log.heads.setdefault(point.size, (number, point.head_hash))
        log.last = point
        previous_note = note
    return log


def verify_chain(
    *,
    tenant_id: int | None,
    verifier: proof.Verifier | None = None,
    now: datetime | None = None,
) -> list[ChainProblem]:
    """Recompute one chain and hold it against its checkpoints; every break found, in
    order (empty when intact). Runs in the caller's database context."""
    now = now or timezone.now()
    problems: list[ChainProblem] = []
    log = _read_log(tenant_id, verifier or signing.verifier(), problems)

    def problem(seq: int, text: str) -> None:
        problems.append(ChainProblem(tenant_id, f"seq {seq}", text))

    expected_seq = 1
    prev_hash = ""
    first_at = None
    events = AuditEvent.objects.filter(tenant_id=tenant_id).order_by("seq")
    for event in events.iterator(chunk_size=2000):
        first_at = first_at or event.created_at
        if event.seq != expected_seq:
            problem(event.seq, f"expected seq {expected_seq}: events are missing or reordered")
        if event.prev_hash != prev_hash:
            problem(event.seq, "its previous hash is not the hash of the event before")
        if event.payload_redacted_at is None and event.payload_digest != proof.payload_digest(
            data=event.data, reason=event.reason
        ):
            problem(event.seq, "its data or reason does not match its payload digest")
        if proof.event_hash(hashed_fields(event)) != event.hash:
            problem(event.seq, "its content does not match its hash")
        promised = log.heads.get(event.seq)
        if promised and promised[1] != event.hash:
            problem(
                event.seq,
                f"is not the event checkpoint #{promised[0]} signed: the chain was rewritten",
            )
        expected_seq = event.seq + 1
        prev_hash = event.hash
    last_seq = expected_seq - 1
    checkpointed = max(log.heads, default=0)
    if checkpointed > last_seq:
        problem(
            last_seq + 1,
            f"events {last_seq + 1} to {checkpointed} were signed by checkpoint "
            f"#{log.heads[checkpointed][0]} and are gone",
        )
    chain = AuditChain.objects.filter(tenant_id=tenant_id).first()
    if chain is not None and chain.last_seq != last_seq:
        problem(
            chain.last_seq, f"the chain's head says seq {chain.last_seq}, the last is {last_seq}"
        )
    oldest_allowed = now - max_checkpoint_age()
    if log.last is not None and log.last.time < oldest_allowed:
        problems.append(
            ChainProblem(
                tenant_id,
                "checkpoints",
                f"none since {log.last.time:%Y-%m-%d %H:%M:%S} UTC; one is due every "
                f"{settings.AUDIT_CHECKPOINT_SECONDS} s",
            )
        )
    elif log.last is None and first_at is not None and first_at < oldest_allowed:
        problems.append(
            ChainProblem(
                tenant_id, "checkpoints", "none covers this chain: it was never checkpointed"
            )
        )
    return problems


def unproven(tenant_id: int | None, verifier: proof.Verifier) -> int:
    """How many of the chain's newest events no checkpoint covers yet."""
    last = checkpoints.latest(tenant_id, verifier)
    covered = last.size if last else 0
    return AuditEvent.objects.filter(tenant_id=tenant_id, seq__gt=covered).count()
