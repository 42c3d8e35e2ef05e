"""Row-level security for the monthly usage table (re-applies tenants/rls.py; idempotent)."""

from django.db import migrations


def _tables(schema_editor) -> set[str]:
    return set(schema_editor.connection.introspection.table_names())


def enable(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        from tenants import rls

        schema_editor.execute(rls.enable_sql(_tables(schema_editor)))


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0006_historicaltenant_budget_lifted_until_and_more"),
        ("desk", "0004_modelprice_run_cost_run_sla_escalated_at_and_more"),
    ]

    operations = [migrations.RunPython(enable, migrations.RunPython.noop)]
