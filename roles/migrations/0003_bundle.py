"""The bundle is the version: what the role and its role-scoped approval policies decided
moves into every version's definition, as it is at migration time (so each version keeps
behaving as its runs did), with its allowed tools pinned; then those fields go.

Runs after approvals 0009 (the policies it reads) and before approvals 0010 (which drops
role-scoped policies' column); role-scoped policies are deleted here once copied.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import tenants.rls

ROLE_KEYS = (
    "input_schema",
    "outputs",
    "escalation_conditions",
    "target_turnaround_minutes",
    "allowed_tools",
    "allowed_data_kinds",
)
RULE_KEYS = (
    "required_approvals",
    "due_minutes",
    "remind_every_minutes",
    "max_reminders",
    "final_action",
    "max_rounds",
    "allow_bulk",
    "email_links",
)


def rule_of(policy) -> dict:
    rule = {"category": policy.category, **{k: getattr(policy, k) for k in RULE_KEYS}}
    rule["approver_groups"] = sorted(policy.approver_groups.values_list("name", flat=True))
    return rule


def bundle_versions(apps, schema_editor):
    from roles.workflow import pin_tools

    Role = apps.get_model("roles", "Role")
    RoleVersion = apps.get_model("roles", "RoleVersion")
    ApprovalPolicy = apps.get_model("approvals", "ApprovalPolicy")
    for role in Role.objects.all():
        own = ApprovalPolicy.objects.filter(role_id=role.pk)
        # A role's own policy in auto mode never loosened the floor: only review rules count.
        rules = [rule_of(p) for p in own.filter(mode="review").order_by("category")]
        for version in RoleVersion.objects.filter(role_id=role.pk):
            definition = dict(version.definition)
            for key in ROLE_KEYS:
                definition.setdefault(key, getattr(role, key))
            definition.setdefault("approval_rules", rules)
            version.definition = pin_tools(definition)
            version.save(update_fields=["definition"])
        own.delete()


def unbundle_versions(apps, schema_editor):
    Role = apps.get_model("roles", "Role")
    for role in Role.objects.all():
        latest = role.active_version or role.versions.order_by("-number").first()
        if latest is None:
            continue
        for key in ROLE_KEYS:
            if key in latest.definition:
                setattr(role, key, latest.definition[key])
        role.save()


class Migration(migrations.Migration):

    dependencies = [
        ('roles', '0002_golden_cases'),
        ('approvals', '0009_approval_link_proposal_hash'),
        ('tenants', '0008_retention_minimum'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(bundle_versions, unbundle_versions),
        migrations.RemoveField(
            model_name='historicalrole',
            name='allowed_data_kinds',
        ),
        migrations.RemoveField(
            model_name='historicalrole',
            name='allowed_tools',
        ),
        migrations.RemoveField(
            model_name='historicalrole',
            name='escalation_conditions',
        ),
        migrations.RemoveField(
            model_name='historicalrole',
            name='input_schema',
        ),
        migrations.RemoveField(
            model_name='historicalrole',
            name='outputs',
        ),
        migrations.RemoveField(
            model_name='historicalrole',
            name='target_turnaround_minutes',
        ),
        migrations.RemoveField(
            model_name='role',
            name='allowed_data_kinds',
        ),
        migrations.RemoveField(
            model_name='role',
            name='allowed_tools',
        ),
        migrations.RemoveField(
            model_name='role',
            name='escalation_conditions',
        ),
        migrations.RemoveField(
            model_name='role',
            name='input_schema',
        ),
        migrations.RemoveField(
            model_name='role',
            name='outputs',
        ),
        migrations.RemoveField(
            model_name='role',
            name='target_turnaround_minutes',
        ),
        migrations.AlterField(
            model_name='historicalroleversion',
            name='definition',
            field=models.JSONField(help_text='The bundle: workflow, prompts, model, tools, schemas, SLA, approval rules.'),
        ),
        migrations.AlterField(
            model_name='roleversion',
            name='definition',
            field=models.JSONField(help_text='The bundle: workflow, prompts, model, tools, schemas, SLA, approval rules.'),
        ),
        migrations.CreateModel(
            name='Publication',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('status', models.CharField(choices=[('pending', 'Waiting for a second operator'), ('approved', 'Approved'), ('rejected', 'Rejected'), ('withdrawn', 'Withdrawn'), ('lapsed', 'Lapsed (the draft changed)')], default='pending', max_length=20)),
                ('digest', models.CharField(help_text='SHA-256 of the bundle under review.', max_length=64)),
                ('gate', models.JSONField(default=dict, help_text="The regression gate's report when asked.")),
                ('override_reason', models.TextField(blank=True, help_text='Why it may be published although the regression gate refused.')),
                ('requested_at', models.DateTimeField(auto_now_add=True)),
                ('note', models.TextField(blank=True)),
                ('decided_at', models.DateTimeField(blank=True, null=True)),
                ('decision_note', models.TextField(blank=True)),
                ('decided_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('requested_by', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL)),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenants.tenant')),
                ('version', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='publications', to='roles.roleversion')),
            ],
            options={
                'indexes': [models.Index(fields=['tenant', 'status', 'requested_at'], name='roles_publi_tenant__d7581c_idx')],
                'constraints': [models.UniqueConstraint(condition=models.Q(('status', 'pending')), fields=('version',), name='publication_one_pending_per_version')],
            },
        ),
        tenants.rls.migration_operation(),
]
