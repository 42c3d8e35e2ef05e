"""Row-level security for the break-glass grants table (tenants/rls.py; idempotent)."""

from django.db import migrations

from tenants import rls


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0004_platform_staff_break_glass"),
        ("tenants", "0003_row_level_security"),
    ]

    operations = [rls.migration_operation()]
