"""Audit exports: one tenant's events in chain order, as CSV or JSON Lines.

Rows are streamed from the database (`QuerySet.iterator`), so an export of any size runs in
constant memory. `iter_export` yields text chunks (for a file or a StreamingHttpResponse);
`write_export` writes a file atomically: a temporary file beside the target, renamed into
place only once complete, so a failed export leaves no partial file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import closing
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audit.models import AuditEvent

COLUMNS = (
    "seq",
    "created_at",
    "actor_type",
    "actor_label",
    "action",
    "object_type",
    "object_id",
    "run_id",
    "step_id",
    "role_version_id",
    "reason",
    "data",
    "hash",
    "prev_hash",
)
FORMATS = ("csv", "jsonl")
CHUNK_SIZE = 2000


class ExportError(Exception):
    """The export cannot be made as asked; nothing was written."""


def parse_bound(value: str, *, is_end: bool) -> datetime:
    """Read an ISO date or date-time as an aware datetime bound.

    A start is inclusive. An end is exclusive, and a bare date as the end includes that
    whole day (its bound is the next midnight). Naive values are in the current time zone.

    Raises ExportError when the value is not an ISO 8601 date or date-time.
    """
    text = (value or "").strip()
    try:
        day = parse_date(text)
        moment = None if day else parse_datetime(text)
    except ValueError:  # well formed but impossible, e.g. 2025-02-30
        day = moment = None
    if day is not None:
        moment = datetime.combine(day + timedelta(days=1) if is_end else day, time.min)
    if moment is None:
        raise ExportError(
            f"'{value}' is not an ISO date or date-time (e.g. 2025-01-31 or 2025-01-31T09:30:00Z)."
        )
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def events_for_export(
    *, tenant_id: int, since: datetime | None = None, until: datetime | None = None
) -> QuerySet[AuditEvent]:
    """The tenant's events from `since` (inclusive) to `until` (exclusive), in chain order."""
    events = AuditEvent.objects.filter(tenant_id=tenant_id)
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    return events.order_by("seq")


def export_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "created_at": event.created_at.isoformat(),
        "actor_type": event.actor_type,
        "actor_label": event.actor_label,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "run_id": event.run_id,
        "step_id": event.step_id,
        "role_version_id": event.role_version_id,
        "reason": event.reason,
        "data": event.data,
        "hash": event.hash,
        "prev_hash": event.prev_hash,
    }


def _dumps(value: Any, *, sort_keys: bool = False) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, sort_keys=sort_keys)


def iter_csv(events: Iterable[AuditEvent]) -> Iterator[str]:
    """A header line, then one CSV line per event; `data` is a JSON cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(COLUMNS)
    for event in events:
        row = export_row(event)
        row["data"] = _dumps(row["data"], sort_keys=True)
        yield line("" if row[c] is None else row[c] for c in COLUMNS)


def iter_jsonl(events: Iterable[AuditEvent]) -> Iterator[str]:
    """One JSON object per line, keys in column order; `data` stays a nested object."""
    for event in events:
        yield _dumps(export_row(event)) + "\n"


def iter_export(events: Iterable[AuditEvent], *, format: str) -> Iterator[str]:
    """Text chunks of the export in `format` (csv or jsonl).

    Raises ExportError for an unknown format.
    """
    if format == "csv":
        return iter_csv(events)
    if format == "jsonl":
        return iter_jsonl(events)
    raise ExportError(f"Unknown format '{format}'; choose one of: {', '.join(FORMATS)}.")


def write_export(
    *,
    path: str | os.PathLike,
    tenant_id: int,
    format: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> int:
    """Write the tenant's events to `path` atomically; return how many were written.

    The file is created readable by its owner only: audit data is confidential.
    Raises ExportError (unknown format, empty period, unusable path); nothing is written then.
    """
    if format not in FORMATS:
        raise ExportError(f"Unknown format '{format}'; choose one of: {', '.join(FORMATS)}.")
    if since is not None and until is not None and since >= until:
        raise ExportError("The period is empty: --since must be before --until.")
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a directory; give a file name.")
    if not target.parent.is_dir():
        raise ExportError(f"The directory {target.parent} does not exist.")

    count = 0

    def counted(events: Iterable[AuditEvent]) -> Iterator[AuditEvent]:
        nonlocal count
        for event in events:
            count += 1
            yield event

    events = events_for_export(tenant_id=tenant_id, since=since, until=until).iterator(
        chunk_size=CHUNK_SIZE
    )
    try:
        fd, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as exc:
        raise ExportError(f"Cannot write to {target.parent}: {exc.strerror}.") from None
    try:
        # closing(): a failed export closes its database cursor at once, while the
        # transaction that holds it is still open (on PostgreSQL it is a server-side cursor).
        with closing(events), os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            for chunk in iter_export(counted(events), format=format):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, target)
    except BaseException as exc:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ExportError(f"Cannot write {target}: {exc.strerror or exc}.") from exc
        raise
    return count


def describe_period(since: datetime | None, until: datetime | None) -> str:
    if since is None and until is None:
        return "all time"
    start = since.isoformat() if since else "the beginning"
    end = until.isoformat() if until else "now"
    return f"{start} to {end} (exclusive)"
