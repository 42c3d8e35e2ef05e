"""Golden cases, suite runs and case results (the regression suite), with row-level security
for the new tables (tenants/rls.py)."""

import django.db.models.deletion
import simple_history.models
from django.conf import settings
from django.db import migrations, models

from tenants import rls


class Migration(migrations.Migration):

    dependencies = [
        ('approvals', '0009_approval_link_proposal_hash'),
        ('desk', '0007_outbox_attempts'),
        ('roles', '0001_initial'),
        ('tenants', '0008_retention_minimum'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='GoldenCase',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=200)),
                ('input', models.JSONField(help_text="The run input (checked against the role's schema).")),
                ('expectations', models.JSONField(default=dict, help_text='What the result must satisfy (see roles/golden.py).')),
                ('source', models.CharField(choices=[('manual', 'Written by hand'), ('decision', "A reviewer's edit"), ('run', 'A completed run')], default='manual', max_length=20)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('retired_at', models.DateTimeField(blank=True, null=True)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('retired_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('role', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='golden_cases', to='roles.role')),
                ('source_decision', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='approvals.decision')),
                ('source_run', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='desk.run')),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenants.tenant')),
            ],
        ),
        migrations.CreateModel(
            name='HistoricalGoldenCase',
            fields=[
                ('id', models.BigIntegerField(auto_created=True, blank=True, db_index=True, verbose_name='ID')),
                ('name', models.CharField(max_length=200)),
                ('input', models.JSONField(help_text="The run input (checked against the role's schema).")),
                ('expectations', models.JSONField(default=dict, help_text='What the result must satisfy (see roles/golden.py).')),
                ('source', models.CharField(choices=[('manual', 'Written by hand'), ('decision', "A reviewer's edit"), ('run', 'A completed run')], default='manual', max_length=20)),
                ('created_at', models.DateTimeField(blank=True, editable=False)),
                ('retired_at', models.DateTimeField(blank=True, null=True)),
                ('history_id', models.AutoField(primary_key=True, serialize=False)),
                ('history_date', models.DateTimeField(db_index=True)),
                ('history_change_reason', models.CharField(max_length=100, null=True)),
                ('history_type', models.CharField(choices=[('+', 'Created'), ('~', 'Changed'), ('-', 'Deleted')], max_length=1)),
                ('created_by', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('history_user', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('retired_by', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('role', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='roles.role')),
                ('source_decision', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='approvals.decision')),
                ('source_run', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='desk.run')),
                ('tenant', models.ForeignKey(blank=True, db_constraint=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='tenants.tenant')),
            ],
            options={
                'verbose_name': 'historical golden case',
                'verbose_name_plural': 'historical golden cases',
                'ordering': ('-history_date', '-history_id'),
                'get_latest_by': ('history_date', 'history_id'),
            },
            bases=(simple_history.models.HistoricalChanges, models.Model),
        ),
        migrations.CreateModel(
            name='SuiteRun',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('bundle_digest', models.CharField(help_text="SHA-256 of the version's definition when the suite started.", max_length=64)),
                ('status', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('passed', 'Passed'), ('failed', 'Failed'), ('error', 'Error')], default='queued', max_length=20)),
                ('cases_total', models.PositiveIntegerField(default=0)),
                ('cases_done', models.PositiveIntegerField(default=0)),
                ('provider', models.CharField(blank=True, max_length=100)),
                ('error', models.TextField(blank=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('is_baseline', models.BooleanField(default=False)),
                ('role', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='suite_runs', to='roles.role')),
                ('started_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenants.tenant')),
                ('version', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='suite_runs', to='roles.roleversion')),
            ],
        ),
        migrations.CreateModel(
            name='CaseResult',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('case_digest', models.CharField(help_text="SHA-256 of the case's input and expectations when evaluated.", max_length=64)),
                ('status', models.CharField(choices=[('passed', 'Passed'), ('failed', 'Failed'), ('error', 'Error')], max_length=20)),
                ('checks', models.JSONField(default=list, help_text='[{check, ok, detail}]')),
                ('output', models.JSONField(default=dict, help_text='Outputs by step key.')),
                ('tools_called', models.JSONField(default=list)),
                ('gates_hit', models.JSONField(default=list)),
                ('tokens', models.PositiveIntegerField(default=0)),
                ('cost', models.DecimalField(decimal_places=6, default=0, max_digits=14)),
                ('error', models.TextField(blank=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenants.tenant')),
                ('case', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='results', to='roles.goldencase')),
                ('suite_run', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='results', to='roles.suiterun')),
            ],
        ),
        migrations.AddConstraint(
            model_name='goldencase',
            constraint=models.UniqueConstraint(fields=('role', 'name'), name='goldencase_unique_role_name'),
        ),
        migrations.AddIndex(
            model_name='suiterun',
            index=models.Index(fields=['version', 'created_at'], name='roles_suite_version_e30c43_idx'),
        ),
        migrations.AddConstraint(
            model_name='suiterun',
            constraint=models.CheckConstraint(condition=models.Q(('is_baseline', False), ('status', 'passed'), _connector='OR'), name='suiterun_baseline_passed'),
        ),
        migrations.AddConstraint(
            model_name='suiterun',
            constraint=models.UniqueConstraint(condition=models.Q(('is_baseline', True)), fields=('role',), name='suiterun_one_baseline'),
        ),
        migrations.AddConstraint(
            model_name='caseresult',
            constraint=models.UniqueConstraint(fields=('suite_run', 'case'), name='caseresult_unique_suite_case'),
        ),
        rls.migration_operation(),
    ]
