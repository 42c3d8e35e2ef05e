"""Least privilege in the database (tenants/rls.py): the application role can no longer
become the platform role; the cluster gets its own role, `agentdesk_worker`; the platform
role becomes a login of its own; and the app role's policy shows only the tenants its
transaction proves a right to (a membership, a break-glass grant or an API key).

Needs CREATEROLE (or the roles made first, see README "Production").
"""

from django.db import migrations

from tenants import rls


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0010_random_ids"),
        ("roles", "0004_random_ids"),
        ("desk", "0008_random_ids"),
        ("approvals", "0011_random_ids"),
        ("audit", "0004_random_ids"),
        ("webhooks", "0003_encrypted_secret"),
    ]

    operations = [rls.migration_operation()]
