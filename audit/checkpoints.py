"""Signed checkpoints of every audit chain, kept outside the database.

Each chain (a tenant's, or the platform's) has a log of checkpoints in the checkpoint store:
signed notes (audit.proof) of the chain's last sequence number and head hash, the time,
and the digest of the log's previous checkpoint. One is written per chain every
`AUDIT_CHECKPOINT_SECONDS` (the `audit_checkpoints` sweep), even when nothing happened, and
on demand (`manage.py audit_checkpoint`, every export). Whoever can rewrite the database
cannot rewrite a checkpoint without the key, which the database never holds, so a cut tail,
a re-hashed chain or a deleted chain no longer verifies.

The store is append-only by contract: `DirectoryStore` writes each checkpoint to a file of
its own, numbered in order, created exclusively and made read-only. An object store with
a retention lock (S3 Object Lock in compliance mode, say) implements the same four
methods and is named in `AUDIT_CHECKPOINT_STORE`.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from django.utils.module_loading import import_string

from audit import proof, signing
from audit.services import lock_chain
from tenants import rls
from tenants.models import Tenant

PLATFORM_LOG = "platform"
_LOG_NAME = re.compile(r"(platform|tenant-[0-9]+)")
_ENTRY = re.compile(r"([0-9]{12})\.note")


class CheckpointStoreError(Exception):
    """The checkpoint store refused a write or cannot be read."""


class DirectoryStore:
    """Checkpoints as files: `<root>/<log>/<000000000001>.note`, one per checkpoint."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def logs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _LOG_NAME.fullmatch(p.name))

    def entries(self, log: str) -> list[tuple[int, str]]:
        """(number, note) of every checkpoint of the log, in order."""
        folder = self._folder(log)
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            match = _ENTRY.fullmatch(path.name)
            if match:
                found.append((int(match[1]), path.read_text(encoding="utf-8")))
        return sorted(found)

    def last(self, log: str) -> tuple[int, str] | None:
        folder = self._folder(log)
        if not folder.is_dir():
            return None
        names = sorted(p.name for p in folder.iterdir() if _ENTRY.fullmatch(p.name))
        if not names:
            return None
        return int(names[-1][:12]), (folder / names[-1]).read_text(encoding="utf-8")

    def append(self, log: str, number: int, note: str) -> None:
        """Store checkpoint `number` of the log; refuse if that number is taken."""
        folder = self._folder(log)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{number:012d}.note"
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(note)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, 0o444)
            try:
                os.link(temp, target)  # fails if the number is taken: never overwrites
            except FileExistsError:
                raise CheckpointStoreError(f"checkpoint {target} already exists") from None
        except OSError as exc:
            raise CheckpointStoreError(f"cannot write {target}: {exc}") from exc
        finally:
            Path(temp).unlink(missing_ok=True)

    def _folder(self, log: str) -> Path:
        if not _LOG_NAME.fullmatch(log):
            raise CheckpointStoreError(f"not a log name: {log!r}")
        return self.root / log


@cache
def _store(path: str, root: str):
    return import_string(path)(root)


def store():
    return _store(settings.AUDIT_CHECKPOINT_STORE, str(settings.AUDIT_CHECKPOINT_DIR))


def log_name(tenant_id: int | None) -> str:
    return PLATFORM_LOG if tenant_id is None else f"tenant-{int(tenant_id)}"


def tenant_of_log(log: str) -> int | None:
    return None if log == PLATFORM_LOG else int(log.removeprefix("tenant-"))


def origin(tenant_id: int | None) -> str:
    return f"{settings.AUDIT_LOG_ORIGIN}/{log_name(tenant_id)}"


@dataclass(frozen=True)
class Written:
    number: int
    note: str
    checkpoint: proof.Checkpoint


def checkpoint(tenant_id: int | None) -> Written:
    """Sign and store a checkpoint of the chain's head as it is now.

    The chain's head row stays locked meanwhile, so the head cannot move and two writers
    (the sweep and an export) cannot fork the log.
    Raises signing.SigningKeyMissing or CheckpointStoreError; nothing is written then.
    """
    signer = signing.signer()
    context = rls.platform_context() if tenant_id is None else rls.tenant_context(tenant_id)
    with context:
        chain = lock_chain(tenant_id)
        log = log_name(tenant_id)
        last = store().last(log)
        point = proof.Checkpoint(
            origin=origin(tenant_id),
            size=chain.last_seq,
            head_hash=chain.last_hash,
            time=timezone.now(),
            prev=proof.note_digest(last[1]) if last else "",
        )
        note = proof.sign_note(point.body(), signer)
        number = last[0] + 1 if last else 1
        store().append(log, number, note)
    return Written(number=number, note=note, checkpoint=point)


def checkpoint_all(*, now=None) -> dict[str, int]:
    """The sweep: a checkpoint of the platform chain and of every tenant's."""
    with rls.platform_context():  # which tenants exist is all this reads across tenants
        tenant_ids = list(Tenant.objects.order_by("pk").values_list("pk", flat=True))
    for tenant_id in [None, *tenant_ids]:
        checkpoint(tenant_id)
    return {"checkpoints": len(tenant_ids) + 1}


def latest(tenant_id: int | None, verifier: proof.Verifier) -> proof.Checkpoint | None:
    last = store().last(log_name(tenant_id))
    return proof.open_checkpoint(last[1], verifier) if last else None
