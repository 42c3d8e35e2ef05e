"""Audit exports anyone can verify: one tenant's events in chain order, with a manifest.

An export starts with a fresh signed checkpoint of the tenant's chain and carries the
events up to it, every field the hashes cover (audit.proof.EXPORT_COLUMNS), so each row's
hash can be recomputed from the file alone. Its manifest (audit.proof) names the query,
the period, the rows, the first and last sequence number and hash, the file's SHA-256 and
the covering checkpoint, and is signed; `audit_verify --export` and
`python -m audit.proof verify-export` check it without the database.

Rows stream from a database cursor in chunks and are written as they come, so an export
of any size runs in constant memory: `write_export` writes FILE and FILE.manifest.json
(each atomically: a temporary file renamed into place once complete), `stream_bundle`
yields a ZIP of both for a download.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audit import checkpoints, context, proof, signing
from audit.models import AuditEvent
from audit.services import Actor, export_row, record
from tenants import rls

COLUMNS = proof.EXPORT_COLUMNS
FORMATS = ("csv", "jsonl")
CHUNK_SIZE = 5000


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


def check_period(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise ExportError("The period is empty: the start must be before the end.")


def events_for_export(
    *,
    tenant_id: int,
    since: datetime | None = None,
    until: datetime | None = None,
    upto_seq: int | None = None,
    events: QuerySet[AuditEvent] | None = None,
) -> QuerySet[AuditEvent]:
    """The tenant's events (of `events`, e.g. a changelist's filtered set) from `since`
    (inclusive) to `until` (exclusive) and up to `upto_seq`, in chain order."""
    events = (AuditEvent.objects.all() if events is None else events).filter(tenant_id=tenant_id)
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    if upto_seq is not None:
        events = events.filter(seq__lte=upto_seq)
    return events.order_by("seq")


def iter_csv(events: Iterable[AuditEvent]) -> Iterator[str]:
    """A header line, then one CSV line per event; `data` is a JSON cell, and cells that a
    spreadsheet would run as a formula are escaped (audit.proof.csv_escape)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def lines(rows) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(rows)
        return buffer.getvalue()

    yield lines([COLUMNS])
    batch = []
    for event in events:
        batch.append(proof.csv_cells(export_row(event)))
        if len(batch) == 500:
            yield lines(batch)
            batch = []
    if batch:
        yield lines(batch)


def iter_jsonl(events: Iterable[AuditEvent]) -> Iterator[str]:
    """One JSON object per line, keys in column order; `data` stays a nested object."""
    for event in events:
        yield json.dumps(export_row(event), ensure_ascii=False) + "\n"


def iter_export(events: Iterable[AuditEvent], *, format: str) -> Iterator[str]:
    """Text chunks of the export in `format` (csv or jsonl).

    Raises ExportError for an unknown format.
    """
    if format == "csv":
        return iter_csv(events)
    if format == "jsonl":
        return iter_jsonl(events)
    raise ExportError(f"Unknown format '{format}'; choose one of: {', '.join(FORMATS)}.")


@dataclass
class Export:
    """One export under way: what was asked, and what has been written so far."""

    tenant_id: int
    tenant_slug: str
    format: str
    since: datetime | None = None
    until: datetime | None = None
    filters: dict[str, str] = field(default_factory=dict)
    exported_by: str = ""
    name: str = ""  # the file's name; "events.<format>" inside a bundle
    rows: int = 0
    first: tuple[int, str] | None = None
    last: tuple[int, str] | None = None
    checkpoint_note: str = ""
    signed: dict[str, Any] | None = None  # the manifest, once made
    _sha256: Any = field(default_factory=hashlib.sha256, repr=False)
    size: int = 0  # bytes of the file written so far

    @property
    def file_name(self) -> str:
        return self.name or f"events.{self.format}"

    def encoded(self, events: QuerySet[AuditEvent]) -> Iterator[bytes]:
        """The file's bytes, chunk by chunk, hashed on the way; then its rows are counted.

        On PostgreSQL the database formats the rows (COPY for CSV, json_build_object for
        JSON Lines) as `audit.proof` reads them; elsewhere Python does, row by row.
        """
        if connection.vendor == "postgresql":
            chunks = _postgres_chunks(events, format=self.format)
        else:
            chunks = _python_chunks(events, format=self.format)
        with closing(chunks):
            for chunk in chunks:
                self._sha256.update(chunk)
                self.size += len(chunk)
                yield chunk
        # Rows up to the covering checkpoint never change: counting them after is exact.
        ordered = events.order_by("seq").values_list("seq", "hash")
        self.rows = events.count()
        self.first = ordered.first()
        self.last = ordered.last()

    def manifest(self) -> dict[str, Any]:
        """The signed manifest; only once every chunk has been written."""
        first, last = self.first or (None, None), self.last or (None, None)
        self.signed = proof.sign_manifest(
            {
                "kind": "audit-export",
                "tenant": {"id": self.tenant_id, "slug": self.tenant_slug},
                "query": {
                    "since": self.since.isoformat() if self.since else None,
                    "until": self.until.isoformat() if self.until else None,
                    "filters": self.filters,
                },
                "contiguous": not self.filters,
                "file": {
                    "name": self.file_name,
                    "format": self.format,
                    "sha256": self._sha256.hexdigest(),
                    "bytes": self.size,
                },
                "rows": self.rows,
                "first_seq": first[0],
                "first_hash": first[1],
                "last_seq": last[0],
                "last_hash": last[1],
                "checkpoint": self.checkpoint_note,
                "exported_at": timezone.now().isoformat(),
                "exported_by": self.exported_by,
            },
            signing.signer(),
        )
        return self.signed


def _python_chunks(events: QuerySet[AuditEvent], *, format: str) -> Iterator[bytes]:
    rows = events.iterator(chunk_size=CHUNK_SIZE)
    # closing(): a failed export closes its database cursor at once, while the transaction
    # that holds it is still open (on PostgreSQL it is a server-side cursor).
    with closing(rows):
        for text in iter_export(rows, format=format):
            yield text.encode("utf-8")


def _iso(column: str) -> str:
    """SQL for Python's datetime.isoformat() of a UTC timestamp (no fraction when zero)."""
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN "
        f"mod(date_part('microseconds', {column})::bigint, 1000000) = 0 THEN '' "
        f"ELSE to_char({utc}, '.US') END || '+00:00'"
    )


# SQL literals of audit.proof.FORMULA_TRIGGERS.
_TRIGGERS_SQL = ", ".join(
    {"\t": "E'\\t'", "\r": "E'\\r'", "'": "''''"}.get(c, f"'{c}'") for c in proof.FORMULA_TRIGGERS
)


def _escaped(column: str) -> str:
    """SQL for audit.proof.csv_escape of a text column."""
    return (
        f"CASE WHEN left({column}, 1) IN ({_TRIGGERS_SQL}) THEN '''' || {column} ELSE {column} END"
    )


_TEXT_COLUMNS = {
    "actor_type",
    "actor_label",
    "action",
    "object_type",
    "object_id",
    "request_id",
    "user_agent",
    "payload_digest",
    "prev_hash",
    "reason",
    "hash",
}
_TABLE = "audit_auditevent"
_TABLE_COLUMN = {"tenant": "tenant_id", "actor_user": "actor_user_id"}


def _column_sql(name: str) -> str:
    """The export's column `name` (audit.proof.EXPORT_COLUMNS) as PostgreSQL computes it."""
    column = f"{_TABLE}.{_TABLE_COLUMN.get(name, name)}"
    if name == "created_at":
        return _iso(column)
    if name == "payload_redacted_at":
        return f"CASE WHEN {column} IS NULL THEN NULL ELSE {_iso(column)} END"
    if name == "client_ip":
        return f"host({column})"
    return column


def _csv_cell_sql(name: str) -> str:
    if name in _TEXT_COLUMNS:
        return _escaped(_column_sql(name))
    return f"{_TABLE}.data::text" if name == "data" else _column_sql(name)


def _postgres_chunks(events: QuerySet[AuditEvent], *, format: str) -> Iterator[bytes]:
    """The export file as PostgreSQL writes it: COPY of the queryset's own SQL (its filters,
    its order by seq), one column per export column for CSV, one JSON text for JSON Lines."""
    if format == "csv":
        cells = {f"x{i}": RawSQL(_csv_cell_sql(name), ()) for i, name in enumerate(COLUMNS)}
        options = "FORMAT csv"
        yield (",".join(COLUMNS) + "\n").encode()
    else:
        pairs = ", ".join(f"'{name}', {_column_sql(name)}" for name in COLUMNS)
        cells = {"x0": RawSQL(f"json_build_object({pairs})::text", ())}
        # One JSON text per line, as is: CSV with a quote and a delimiter that JSON text
        # never holds (PostgreSQL escapes every control character in it) quotes nothing.
        options = "FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02'"
    query = events.annotate(**cells).values_list(*cells).query
    sql, params = query.sql_with_params()
    statement = f"COPY ({sql}) TO STDOUT WITH ({options})"
    with connection.cursor() as cursor, cursor.cursor.copy(statement, params) as copy:
        try:
            yield from copy
        except GeneratorExit:
            # A download given up: read the rest rather than cancel the COPY, whose cancel
            # could land on the next statement (the rollback) and break the connection.
            for _ in copy:
                pass
            raise


def start(export: Export) -> int:
    """Check the request, then sign a checkpoint of the chain as it is now: the export
    covers the events up to it. Returns that last sequence number.

    Call it outside the export's transaction: the checkpoint holds the chain's head locked
    while it is written, and the chain must not stay locked while the rows stream.
    Raises ExportError (unknown format, empty period, no signing key, store refused)."""
    if export.format not in FORMATS:
        raise ExportError(f"Unknown format '{export.format}'; choose one of: {', '.join(FORMATS)}.")
    check_period(export.since, export.until)
    try:
        written = checkpoints.checkpoint(export.tenant_id)
    except (signing.SigningKeyMissing, checkpoints.CheckpointStoreError) as exc:
        raise ExportError(f"Cannot sign the export: {exc}") from None
    export.checkpoint_note = written.note
    return written.checkpoint.size


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def _atomic_write(target: Path, chunks: Iterable[bytes]) -> None:
    try:
        fd, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as exc:
        raise ExportError(f"Cannot write to {target.parent}: {exc.strerror}.") from None
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, target)
    except BaseException as exc:
        Path(temp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ExportError(f"Cannot write {target}: {exc.strerror or exc}.") from exc
        raise


def check_target(path: str | os.PathLike) -> Path:
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a directory; give a file name.")
    if not target.parent.is_dir():
        raise ExportError(f"The directory {target.parent} does not exist.")
    return target


def write_export(
    *,
    path: str | os.PathLike,
    export: Export,
    upto_seq: int,
    events: QuerySet[AuditEvent] | None = None,
) -> dict[str, Any]:
    """Write the export's events up to `upto_seq` (see `start`) to `path` and its
    manifest beside it (`path`.manifest.json), each readable by its owner only (audit
    data is confidential); return the manifest.

    Raises ExportError for an unusable path; nothing is written then.
    """
    target = check_target(path)
    rows = events_for_export(
        tenant_id=export.tenant_id,
        since=export.since,
        until=export.until,
        upto_seq=upto_seq,
        events=events,
    )
    _atomic_write(target, export.encoded(rows))
    manifest = export.manifest()
    _atomic_write(target.with_name(target.name + ".manifest.json"), [manifest_bytes(manifest)])
    return manifest


class _Sink(io.RawIOBase):
    """A write-only stream whose bytes are taken as they come (for a streamed ZIP)."""

    def __init__(self):
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def stream_bundle(export: Export, events: QuerySet[AuditEvent]) -> Iterator[bytes]:
    """A ZIP of the export file and its manifest, yielded as it is made (constant memory).
    The manifest is the last member: it is known once the file is complete."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as bundle:
        chunks = export.encoded(events)
        # closing(): a download given up ends the database read now, not when collected.
        with closing(chunks), bundle.open(export.file_name, "w", force_zip64=True) as member:
            for chunk in chunks:
                member.write(chunk)
                if sink._chunks:
                    yield sink.take()
        bundle.writestr("manifest.json", manifest_bytes(export.manifest()))
    yield sink.take()


def manifest_digest(manifest: dict[str, Any]) -> str:
    return proof.sha256_hex(proof.canonical_json(manifest))


def audit_data(export: Export, manifest: dict[str, Any], *, via: str) -> dict[str, Any]:
    """What the export's own audit event records."""
    return {
        "format": export.format,
        "events": export.rows,
        "since": export.since,
        "until": export.until,
        "filters": export.filters,
        "via": via,
        "manifest_sha256": manifest_digest(manifest),
        "file_sha256": manifest["file"]["sha256"],
        "last_seq": export.last[0] if export.last else None,
    }


def download(
    export: Export, events: QuerySet[AuditEvent], *, user, request_info: context.RequestInfo
) -> Iterator[bytes]:
    """The bundle a person downloads (`stream_bundle`), read in the tenant's context; the
    export is audited once complete (with the request's id, address and agent: this runs
    after the request's middleware), and a download given up half way is audited too."""
    actor = Actor.for_user(user)
    try:
        with context.using(request_info), rls.tenant_context(export.tenant_id, user_id=user.pk):
            yield from stream_bundle(export, events)
            record(
                tenant=export.tenant_id,
                actor=actor,
                action="audit.exported",
                data=audit_data(export, export.signed, via="admin"),
            )
    except GeneratorExit:
        with context.using(request_info), rls.tenant_context(export.tenant_id, user_id=user.pk):
            record(
                tenant=export.tenant_id,
                actor=actor,
                action="audit.export_abandoned",
                data={"format": export.format, "bytes_sent": export.size, "via": "admin"},
            )
        raise
