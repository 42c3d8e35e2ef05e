"""What the runs list's search looks in: one text per run, written when the run starts.

It holds the run's input (every string in it: the client's e-mail, the subject, the body),
the client records whose e-mail the input names (their name and reference), the role and
who started the run. On PostgreSQL a trigram index (GIN, pg_trgm) over it serves the
runs list's search (`matching_runs`), so finding a client among a million runs reads only
the runs that match (desk/migrations/0010_run_search_text.py, 0012_run_search_function.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from django.db import connections
from django.db.models.expressions import RawSQL
from django.utils.text import smart_split, unescape_string_literal

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


def like_pattern(term: str) -> str:
    """A LIKE pattern matching `term` anywhere (its %, _ and \\ taken literally), as Django's
    `icontains` builds it."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def matching_runs(queryset, search_term: str):
    """The runs of `queryset` whose search text holds every word of `search_term` (quoted
    phrases kept whole), as the admin's search over `search_text` finds them.

    On PostgreSQL through agentdesk_run_search (desk/migrations/0012), which the trigram
    index serves under row-level security; elsewhere through `icontains`.
    """
    postgres = connections[queryset.db].vendor == "postgresql"
    for bit in smart_split(search_term):
        if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
            bit = unescape_string_literal(bit)
        if not bit:
            continue
        if postgres:
            sql = "SELECT agentdesk_run_search(%s)"
            queryset = queryset.filter(pk__in=RawSQL(sql, [like_pattern(bit)]))
        else:
            queryset = queryset.filter(search_text__icontains=bit)
    return queryset
