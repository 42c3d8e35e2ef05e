"""Tenants' secrets at rest: the one place secrets are encrypted and decrypted.

A tenant's secrets (its webhook endpoints' signing secrets, its model provider API key) are
stored as Fernet tokens (cryptography's `MultiFernet`: AES-128-CBC with HMAC-SHA256), never
as plain text. The keys live outside the database, like the audit signing key:
`DESK_SECRETS_KEYS` (Fernet keys, comma-separated, newest first) when set, otherwise the key
file `DESK_SECRETS_KEY_FILE` (one key a line, newest first, readable by its owner only),
made by `manage.py secrets_key --create`. New secrets are encrypted with the newest key;
every listed key may open one, so a rotation adds a key first, re-encrypts every stored
secret with it and then retires the old ones (`manage.py secrets_key`, tenants.services).

Each ciphertext is bound to its tenant and its purpose: the plaintext sealed is
"<tenant id>:<purpose>" and the secret, and opening checks both, so a ciphertext copied
into another tenant's row (or another kind of secret) does not open there.

Fail closed: without a key nothing is encrypted or decrypted (SecretKeyMissing), and a
ciphertext no key opens raises SecretUnreadable; neither message ever carries a secret.
"""

from __future__ import annotations

import logging
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import NoReturn

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

logger = logging.getLogger(__name__)

# What every stored ciphertext starts with (a database constraint checks it, so a plain
# secret written past this module is refused by the database itself).
PREFIX = "fernet:"
ENV_KEYS = "DESK_SECRETS_KEYS"


class SecretsError(Exception):
    """A secret cannot be sealed or opened. The message never holds the secret."""


class SecretKeyMissing(SecretsError):
    """There is no usable key: nothing is encrypted or decrypted until one is made."""


class SecretUnreadable(SecretsError):
    """A stored ciphertext that none of the keys opens (or that belongs to another row)."""


# --- keys ---------------------------------------------------------------------------------


def key_path() -> Path:
    return Path(settings.DESK_SECRETS_KEY_FILE)


def keys_from_environment() -> bool:
    """Whether the keys come from DESK_SECRETS_KEYS (then the key file is not read)."""
    return bool(settings.DESK_SECRETS_KEYS)


def _parse(lines: list[str], where: str) -> tuple[str, ...]:
    keys = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    for number, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            # Never echo the line: it may be a key with a typo in it.
            raise SecretKeyMissing(
                f"{where}: key {number} is not a Fernet key (32 url-safe base64-encoded bytes)."
            ) from None
    return keys


@cache
def _file_keys(path: Path, version: tuple[int, int, int]) -> tuple[str, ...]:
    # Cached per version of the file (inode, size, mtime): a rotation is seen at once.
    return _parse(path.read_text().splitlines(), str(path))


def keys() -> tuple[str, ...]:
    """The Fernet keys, newest first.

    Raises SecretKeyMissing when there is none, or one is malformed.
    """
    if keys_from_environment():
        found = _parse(settings.DESK_SECRETS_KEYS.split(","), ENV_KEYS)
    else:
        path = key_path()
        try:
            stat = path.stat()
        except FileNotFoundError:
            found = ()
        else:
            found = _file_keys(path, (stat.st_ino, stat.st_size, stat.st_mtime_ns))
    if not found:
        raise SecretKeyMissing(
            f"No key to encrypt secrets with: create one with `manage.py secrets_key --create` "
            f"(it is written to {key_path()}) or set {ENV_KEYS}. No secret is saved or used "
            "without one."
        )
    return found


def _fernet() -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys()])


def _write_keys(path: Path, keys: list[str], *, exclusive: bool = False) -> None:
    """Replace the key file in one step (a crash leaves the old file or the new one); with
    `exclusive`, only write one where there is none (raises FileExistsError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(temporary, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(
                "# AgentDesk secrets keys (Fernet), newest first. Keep this file secret.\n"
                + "".join(f"{key}\n" for key in keys)
            )
            out.flush()
            os.fsync(out.fileno())
        if exclusive:
            os.link(temporary, path)  # fails if another process made one meanwhile
            os.unlink(temporary)
        else:
            os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _file_keys.cache_clear()


def writable_key_file(verb: str) -> Path:
    """The key file, which the commands may change.

    Raises SecretsError when the keys come from the environment instead.
    """
    if keys_from_environment():
        raise SecretsError(
            f"The keys come from {ENV_KEYS}, not a file: {verb} them there "
            "(newest first), then run `manage.py secrets_key --reencrypt`."
        )
    return key_path()


def create_key_file() -> bool:
    """Write a key file with one new key if there is none; return whether one was made.

    Raises SecretsError when the keys come from the environment instead.
    """
    path = writable_key_file("manage")
    try:
        _write_keys(path, [Fernet.generate_key().decode()], exclusive=True)
    except FileExistsError:
        return False
    return True


def add_key() -> int:
    """Put a new key first in the key file (new secrets are encrypted with it; the others
    still open older ones); return how many keys the file holds now.

    Raises SecretsError for keys from the environment, SecretKeyMissing without a key file.
    """
    path = writable_key_file("add")
    current = keys()
    _write_keys(path, [Fernet.generate_key().decode(), *current])
    return len(current) + 1


def retire_old_keys() -> int:
    """Keep only the newest key in the key file; return how many keys were removed. The
    caller checks first that no stored secret still needs an old one."""
    path = writable_key_file("remove")
    current = keys()
    if len(current) > 1:
        _write_keys(path, [current[0]])
    return len(current) - 1


# --- sealing and opening ------------------------------------------------------------------


def _context(tenant_id: int, purpose: str) -> bytes:
    if not tenant_id or ":" in purpose or "\n" in purpose:
        raise ValueError("A secret belongs to a tenant and names its purpose.")
    return f"{int(tenant_id)}:{purpose}\n".encode()


def is_sealed(value: str) -> bool:
    return bool(value) and value.startswith(PREFIX)


def seal(secret: str, *, tenant_id: int, purpose: str) -> str:
    """The secret encrypted with the newest key, bound to the tenant and purpose.

    Raises SecretKeyMissing without a key.
    """
    token = _fernet().encrypt(_context(tenant_id, purpose) + secret.encode())
    return PREFIX + token.decode()


def open_sealed(value: str, *, tenant_id: int, purpose: str) -> str:
    """The secret a stored ciphertext holds, if it was sealed for this tenant and purpose.

    Raises SecretKeyMissing without a key, SecretUnreadable when no key opens it or it
    belongs to another tenant or purpose (logged, without the ciphertext or the secret).
    """
    context = _context(tenant_id, purpose)
    fernet = _fernet()
    if not is_sealed(value):
        _unreadable(tenant_id, purpose, "it is not an encrypted secret")
    try:
        plaintext = fernet.decrypt(value.removeprefix(PREFIX).encode())
    except InvalidToken:
        _unreadable(tenant_id, purpose, "none of the keys opens it")
    if not plaintext.startswith(context):
        _unreadable(tenant_id, purpose, "it was sealed for another tenant or purpose")
    return plaintext.removeprefix(context).decode()


def _unreadable(tenant_id: int, purpose: str, why: str) -> NoReturn:
    logger.error("A stored secret (%s of tenant %s) cannot be read: %s.", purpose, tenant_id, why)
    raise SecretUnreadable(
        f"The stored {purpose.replace('_', ' ')} cannot be read ({why}); set a new one."
    )


def reseal(value: str) -> str:
    """The same sealed secret encrypted with the newest key (MultiFernet.rotate).

    Raises SecretKeyMissing without a key, SecretUnreadable when no key opens it.
    """
    try:
        token = _fernet().rotate(value.removeprefix(PREFIX).encode())
    except InvalidToken:
        raise SecretUnreadable("None of the keys opens a stored secret.") from None
    return PREFIX + token.decode()


def opens_with_newest_key(value: str) -> bool:
    """Whether the newest key alone opens a stored ciphertext (else it needs an old key, or
    none opens it). Raises SecretKeyMissing without a key."""
    try:
        Fernet(keys()[0]).decrypt(value.removeprefix(PREFIX).encode())
    except InvalidToken:
        return False
    return True


def opens_with_any_key(value: str) -> bool:
    try:
        _fernet().decrypt(value.removeprefix(PREFIX).encode())
    except InvalidToken:
        return False
    return True
