"""The audit signing key: kept in a file outside the database, never in it.

`AUDIT_SIGNING_KEY_FILE` holds one signer key in the C2SP signed-note format
(`PRIVATE+KEY+name+hash+key`, audit.proof.Signer), readable by its owner only. Checkpoints
and manifests are signed with it; auditors pin its verifier key (`manage.py audit_key`).
Without the file nothing is signed: checkpoints and exports fail loudly rather than go
on unsigned.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from audit import proof


class SigningKeyMissing(Exception):
    """There is no usable signing key; nothing can be signed until one is created."""


def key_path() -> Path:
    return Path(settings.AUDIT_SIGNING_KEY_FILE)


def create_key(*, name: str | None = None) -> proof.Signer:
    """Write a new signing key to the key file; refuse to replace one (a new key would
    orphan the checkpoints signed with the old one)."""
    path = key_path()
    signer = proof.Signer.generate(name or settings.AUDIT_KEY_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SigningKeyMissing(f"{path} already holds a key; it is never replaced") from None
    with os.fdopen(fd, "w") as out:
        out.write(signer.encode() + "\n")
    _load.cache_clear()
    return signer


@cache
def _load(path: Path, mtime_ns: int) -> proof.Signer:
    try:
        return proof.Signer.decode(path.read_text())
    except proof.ProofError as exc:
        raise SigningKeyMissing(f"{path}: {exc}") from None


def signer() -> proof.Signer:
    path = key_path()
    try:
        mtime_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise SigningKeyMissing(
            f"No audit signing key at {path}: create one with `manage.py audit_key --create`."
        ) from None
    return _load(path, mtime_ns)


def verifier() -> proof.Verifier:
    return signer().verifier


def document_manifest(
    *, tenant_id: int | None, kind: str, query: dict[str, Any], files: dict[str, bytes]
) -> dict[str, Any]:
    """A signed manifest of a document (a report): what was asked, when, and the SHA-256
    and size of each of its files."""
    return proof.sign_manifest(
        {
            "kind": kind,
            "tenant": tenant_id,
            "query": query,
            "created_at": timezone.now().isoformat(),
            "files": {
                name: {"sha256": proof.sha256_hex(content), "bytes": len(content)}
                for name, content in sorted(files.items())
            },
        },
        signer(),
    )
