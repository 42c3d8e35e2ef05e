# Indexes for the admin's pages at a million runs: a tenant's runs newest first (the runs
# list's order, key last) and a tenant's steps by when they finished (the tenants page's
# throughput). The index led by a run's role goes: with it the planner, who cannot tell how
# many rows row-level security lets through, started a page of runs from the role and read
# every run of a big tenant to keep a hundred.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('desk', '0010_run_search_text'),
        ('roles', '0004_random_ids'),
        ('tenants', '0011_least_privilege'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='run',
            name='role',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='runs', to='roles.role'),
        ),
        migrations.AddIndex(
            model_name='run',
            index=models.Index(fields=['tenant', '-created_at', '-id'], name='run_tenant_created'),
        ),
        migrations.AddIndex(
            model_name='steprun',
            index=models.Index(fields=['tenant', 'finished_at'], name='steprun_tenant_finished'),
        ),
    ]
