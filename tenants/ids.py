"""Random primary keys for tenant-scoped rows: an id in a URL, the API or a webhook payload
says nothing about how many rows any tenant (or the platform) has made.

Ids are drawn uniformly from 1 … 2**53 - 1, not from the whole 64-bit range: the API and
webhook payloads carry ids as JSON numbers, and a JavaScript client reads those as doubles,
which hold integers exactly only up to 2**53 - 1; a larger id would be changed silently on
the client. A collision is not silent either: the id is the primary key, so an insert that
draws an id already taken fails with an IntegrityError and its transaction rolls back. With
N rows in a table an insert collides with probability N / 2**53 (1e-10 at a million rows,
1e-8 at a hundred million).

An id is an identifier and nothing else: code that needs creation order orders by the
model's creation timestamp (or a sequence of its own, such as an audit event's `seq`).
"""

from __future__ import annotations

import secrets

from django.db import migrations, models

MAX_ID = 2**53 - 1


def random_id() -> int:
    """Draw a new id: uniform in 1 … MAX_ID."""
    return secrets.randbelow(MAX_ID) + 1


class RandomIdField(models.BigIntegerField):
    """A primary key drawn by `random_id` when the row is made, never edited in a form."""

    description = "Random identifier (1 … 2**53 - 1)"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("default", random_id)
        kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)


def switch_to_random_ids(app_label: str, *alter_fields: migrations.AlterField):
    """The migration step that makes these primary keys RandomIdFields (irreversible: ids
    drawn since do not fit a sequence).

    Rows keep their ids. Django's own AlterField would rebuild the tables on SQLite (dropping
    anything made by hand on them) and, on PostgreSQL, retype the columns and every foreign
    key to them, which is refused for columns that row-level-security policies use. So the
    database step is written out: on PostgreSQL the column stops generating ids (an insert
    without one fails rather than taking the next number) and becomes bigint where it was
    integer (simple-history's history_id); SQLite's integer primary key already holds any
    64-bit value and takes the one we give it.
    """
    columns = [(op.model_name, op.name) for op in alter_fields]

    def forwards(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        quote = schema_editor.quote_name
        for model_name, column in columns:
            table = apps.get_model(app_label, model_name)._meta.db_table
            alter = f"ALTER TABLE {quote(table)} ALTER COLUMN {quote(column)}"
            schema_editor.execute(f"{alter} DROP IDENTITY IF EXISTS")
            schema_editor.execute(f"{alter} DROP DEFAULT")
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(
                    "SELECT data_type FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = %s"
                    " AND column_name = %s",
                    [table, column],
                )
                (data_type,) = cursor.fetchone()
            if data_type != "bigint":
                schema_editor.execute(f"{alter} TYPE bigint")

    return migrations.SeparateDatabaseAndState(
        state_operations=list(alter_fields),
        database_operations=[migrations.RunPython(forwards, elidable=False)],
    )
