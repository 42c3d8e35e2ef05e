"""The runs list's search (desk.search): a text per run, filled here for existing runs, and
on PostgreSQL a trigram index over it (pg_trgm, a trusted extension the database's owner
may create), which the admin's `icontains` search uses."""

from django.db import migrations, models

from desk import search

BATCH = 1000
TABLES = ("desk_run", "roles_role", "tenants_clientrecord")


def fill(apps, schema_editor):
    postgres = schema_editor.connection.vendor == "postgresql"
    if postgres:
        # The tables' owner runs migrations; FORCE ROW LEVEL SECURITY (tenants/rls.py) would
        # show it no rows. Put back below, in the same transaction.
        for table in TABLES:
            schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    fill_runs(apps.get_model("desk", "Run"), apps.get_model("tenants", "ClientRecord"))
    if postgres:
        for table in TABLES:
            schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")


def fill_runs(Run, ClientRecord) -> None:
    """Write every run's search text, a batch of runs (in id order) at a time."""
    last_pk = 0
    while True:
        runs = list(
            Run.objects.filter(pk__gt=last_pk)
            .order_by("pk")
            .values_list("pk", "tenant_id", "input", "role__name", "role__slug", "started_by_label")[
                :BATCH
            ]
        )
        if not runs:
            break
        last_pk = runs[-1][0]
        for pk, tenant_id, input, role_name, role_slug, started_by in runs:
            text = search.search_text(
                input=input,
                role_name=role_name,
                role_slug=role_slug,
                started_by=started_by,
                clients=search.clients_named(ClientRecord.objects.filter(tenant_id=tenant_id), input),
            )
            Run.objects.filter(pk=pk).update(search_text=text)


def trigram_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        # UPPER(...): what Django's icontains compares on PostgreSQL.
        schema_editor.execute(
            "CREATE INDEX run_search_trgm ON desk_run USING gin (UPPER(search_text) gin_trgm_ops)"
        )


def drop_trigram_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS run_search_trgm")


class Migration(migrations.Migration):
    dependencies = [
        ("desk", "0009_sweep_deadlines"),
        ("tenants", "0011_least_privilege"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="search_text",
            field=models.TextField(blank=True, default="", editable=False),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.RunPython(trigram_index, drop_trigram_index),
    ]
