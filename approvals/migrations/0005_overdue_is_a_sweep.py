from django.db import migrations


def delete_schedule(apps, schema_editor):
    # Overdue approvals are handled by a sweep now (desk_worker's sweeper), not a schedule.
    apps.get_model("django_q", "Schedule").objects.filter(
        name="approvals.process_overdue_requests"
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0004_notification_sent"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [migrations.RunPython(delete_schedule, migrations.RunPython.noop)]
