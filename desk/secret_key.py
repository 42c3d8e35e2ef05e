"""The secret key, from the environment or a file, refused in production when unsafe.

Django signs sessions, CSRF tokens and password-reset links with SECRET_KEY; anyone who
knows it can forge them. So with DESK_DEBUG off (production) the process does not start on
a key that is missing, empty, the public development key, or weak by the measure of
Django's own deploy check (security.W009: under 50 characters, under 5 distinct ones, or
Django's generated "django-insecure-" kind).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

# Public (it is in this file): for development only, never accepted in production.
DEVELOPMENT_KEY = "agentdesk-insecure-development-key"

HOW_TO_MAKE_ONE = (
    "Make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(50))'` and set "
    "DESK_SECRET_KEY to it, or put it in a file readable by AgentDesk only and set "
    "DESK_SECRET_KEY_FILE to the file's path. (For local development only, DESK_DEBUG=1 "
    "runs on a development key.)"
)


def weakness(key: str | None) -> str | None:
    """Why `key` is not fit for production (None: not given at all), or None when it is."""
    if key is None:
        return "is not set"
    if not key:
        return "is empty"
    if key == DEVELOPMENT_KEY:
        return "is the public development key"
    if key.startswith(SECRET_KEY_INSECURE_PREFIX):
        return f"is a {SECRET_KEY_INSECURE_PREFIX!r} key (Django's placeholder kind)"
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return f"is too short ({len(key)} characters; at least {SECRET_KEY_MIN_LENGTH})"
    if len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return (
            f"has too few distinct characters ({len(set(key))}; "
            f"at least {SECRET_KEY_MIN_UNIQUE_CHARACTERS})"
        )
    return None


def load(environ: Mapping[str, str], *, debug: bool) -> str:
    """Return the secret key from DESK_SECRET_KEY or DESK_SECRET_KEY_FILE.

    Raises ImproperlyConfigured, naming the variable, when both are set, when the file
    cannot be read, or (with `debug` off) when the key is unfit for production.
    """
    value = environ.get("DESK_SECRET_KEY")
    path = environ.get("DESK_SECRET_KEY_FILE")
    if value and path:
        raise ImproperlyConfigured(
            "Both DESK_SECRET_KEY and DESK_SECRET_KEY_FILE are set: set only one, so that "
            "there is no doubt which key signs sessions."
        )
    if path:
        source = f"DESK_SECRET_KEY_FILE ({path})"
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ImproperlyConfigured(f"{source} cannot be read: {exc}.") from exc
    else:
        source = "DESK_SECRET_KEY"
        key = None if value is None else value.strip()
    if debug:
        return key or DEVELOPMENT_KEY
    problem = weakness(key)
    if problem:
        raise ImproperlyConfigured(
            f"{source} {problem}: with DESK_DEBUG off AgentDesk refuses to start without a "
            f"secret key of its own. {HOW_TO_MAKE_ONE}"
        )
    return key
