# The sweeps read only what is due, through partial indexes on the deadline: runs store
# their service-level deadline (sla_due_at = created_at + the pinned version's target
# turnaround, as start_run now writes it), filled here for the runs that are open or may
# open again (a failed run can be retried); closed runs keep none, and sla_state calls a
# closed run done without one. Ready steps get an index by ready_at and queued runs one by
# (tenant, created_at), for the reaper.

from contextlib import contextmanager
from datetime import timedelta

import django.utils.timezone
from django.conf import settings
from django.db import migrations, models
from django.db.models import F

# Run.OPEN_STATUSES and "failed" (retry and reopen_for_review open it again).
FILL_STATUSES = ("queued", "running", "waiting_approval", "on_hold", "failed")
DEFAULT_TARGET_MINUTES = 240  # roles.workflow.BUNDLE_DEFAULTS when this was written
BATCH = 1000
TABLES = ("desk_run", "roles_roleversion")


@contextmanager
def every_row(schema_editor):
    """Every tenant's rows, for the tables' owner that runs migrations: FORCE ROW LEVEL
    SECURITY (tenants/rls.py) would show it none. Put back in the same transaction."""
    if schema_editor.connection.vendor != "postgresql":
        yield
        return
    for table in TABLES:
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
    yield
    for table in TABLES:
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")


def target_minutes(definition) -> int | None:
    """The bundle's target turnaround as RoleVersion.target_turnaround_minutes reads it;
    None when it holds none usable (desk.selectors.sla_target_minutes)."""
    try:
        return int(definition.get("target_turnaround_minutes", DEFAULT_TARGET_MINUTES))
    except (AttributeError, TypeError, ValueError):
        return None


def fill_deadlines(Run, RoleVersion, *, batch=BATCH) -> int:
    """Give the runs that are or may become open their deadline, a batch of runs (in id
    order) per statement; return how many got one."""
    targets: dict[int, int | None] = {}
    filled, last_pk = 0, None
    while True:
        runs = Run.objects.filter(status__in=FILL_STATUSES, sla_due_at__isnull=True)
        if last_pk is not None:
            runs = runs.filter(pk__gt=last_pk)
        rows = list(runs.order_by("pk").values_list("pk", "role_version_id")[:batch])
        if not rows:
            return filled
        last_pk = rows[-1][0]
        unknown = {version for _, version in rows} - targets.keys()
        for version, definition in RoleVersion.objects.filter(pk__in=unknown).values_list(
            "pk", "definition"
        ):
            targets[version] = target_minutes(definition)
        by_target: dict[int, list[int]] = {}
        for pk, version in rows:
            minutes = targets.get(version)
            if minutes is not None:
                by_target.setdefault(minutes, []).append(pk)
        for minutes, pks in by_target.items():
            filled += Run.objects.filter(pk__in=pks).update(
                sla_due_at=F("created_at") + timedelta(minutes=minutes)
            )


def fill(apps, schema_editor):
    with every_row(schema_editor):
        fill_deadlines(apps.get_model("desk", "Run"), apps.get_model("roles", "RoleVersion"))

class Migration(migrations.Migration):

    dependencies = [
        ('desk', '0008_random_ids'),
        ('roles', '0004_random_ids'),
        ('tenants', '0010_random_ids'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='run',
            name='sla_due_at',
            field=models.DateTimeField(blank=True, help_text="When the run misses its pinned version's target turnaround (created_at + the target); set once, when the run is started.", null=True),
        ),
        migrations.AlterField(
            model_name='run',
            name='created_at',
            field=models.DateTimeField(default=django.utils.timezone.now, editable=False),
        ),
        # Before the indexes, which are then built once over the filled column. Nothing to
        # undo going back: the column goes.
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name='run',
            index=models.Index(condition=models.Q(('sla_escalated_at__isnull', True), ('status__in', ['queued', 'running', 'waiting_approval', 'on_hold'])), fields=['sla_due_at'], name='run_sla_due'),
        ),
        migrations.AddIndex(
            model_name='run',
            index=models.Index(condition=models.Q(('status', 'queued')), fields=['tenant', 'created_at'], name='run_queued'),
        ),
        migrations.AddIndex(
            model_name='steprun',
            index=models.Index(condition=models.Q(('status', 'ready')), fields=['ready_at'], name='steprun_ready_since'),
        ),
    ]
