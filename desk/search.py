"""What the runs list's search looks in: one text per run, written when the run starts.

It holds the run's input (every string in it: the client's e-mail, the subject, the body),
the client records whose e-mail the input names (their name and reference), the role and
who started the run. On PostgreSQL a trigram index (GIN, pg_trgm) over it serves the
admin's `icontains` search, so finding a client among a million runs reads only the runs
that match (desk/migrations/0010_run_search_text.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

# Enough for the fields people search for; a long body is cut, not the e-mail or subject
# (the input's strings go shortest first, which also makes the text independent of the
# order the database keeps JSON keys in).
SEARCH_TEXT_MAX = 2000
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# At most this many e-mails of one input are looked up among the client records.
EMAILS_LOOKED_UP = 5


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def emails_in(input: Any) -> set[str]:
    """The e-mail addresses the input holds (as given and in lower case), for finding the
    client records they name."""
    found = [s.strip() for s in _strings(input) if EMAIL_RE.fullmatch(s.strip())]
    found = found[:EMAILS_LOOKED_UP]
    return {*found, *(email.lower() for email in found)}


def clients_named(records, input: Any) -> list[tuple[str, str]]:
    """(name, reference) of the client records (a queryset of one tenant's) whose e-mail
    the input holds."""
    emails = emails_in(input)
    if not emails:
        return []
    named = records.filter(email__in=emails).order_by("reference")
    return list(named.values_list("name", "reference")[:EMAILS_LOOKED_UP])


def search_text(
    *,
    input: Any,
    role_name: str,
    role_slug: str,
    started_by: str,
    clients: Iterable[tuple[str, str]] = (),
) -> str:
    """One line of what the run's search matches: the named clients' name and reference,
    the role, who started it, then the input's strings (shortest first); lower case,
    whitespace collapsed, at most SEARCH_TEXT_MAX characters."""
    parts = [*(f"{name} {reference}" for name, reference in clients), role_name, role_slug]
    parts += [started_by, *sorted(_strings(input), key=lambda s: (len(s), s))]
    text = " ".join(" ".join(part.split()) for part in parts if part)
    return text.lower()[:SEARCH_TEXT_MAX]
