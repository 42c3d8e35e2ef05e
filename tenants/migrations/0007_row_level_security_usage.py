"""Row-level security for the monthly usage table (tenants/rls.py; idempotent)."""

from django.db import migrations

from tenants import rls


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0006_historicaltenant_budget_lifted_until_and_more"),
        ("desk", "0004_modelprice_run_cost_run_sla_escalated_at_and_more"),
    ]

    operations = [rls.migration_operation()]
