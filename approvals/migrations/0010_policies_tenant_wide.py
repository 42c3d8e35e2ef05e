"""Approval policies are tenant-wide: a role's own rules moved into its versions' bundles
(roles 0003)."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('approvals', '0009_approval_link_proposal_hash'),
        ('roles', '0003_bundle'),
        ('tenants', '0008_retention_minimum'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name='approvalpolicy',
            name='policy_unique_tenant_role_category',
        ),
        migrations.RemoveConstraint(
            model_name='approvalpolicy',
            name='policy_unique_tenant_default_category',
        ),
        migrations.RemoveField(
            model_name='approvalpolicy',
            name='role',
        ),
        migrations.RemoveField(
            model_name='historicalapprovalpolicy',
            name='role',
        ),
        migrations.AddConstraint(
            model_name='approvalpolicy',
            constraint=models.UniqueConstraint(fields=('tenant', 'category'), name='policy_unique_tenant_category'),
        ),
    ]
