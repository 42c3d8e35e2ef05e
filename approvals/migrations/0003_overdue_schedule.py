from django.db import migrations


def create_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name="approvals.process_overdue_requests",
        defaults={
            "func": "approvals.tasks.process_overdue_requests",
            "schedule_type": "I",
            "minutes": 1,
            "repeats": -1,
        },
    )


def delete_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(
        name="approvals.process_overdue_requests"
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0002_escalation_kind"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [migrations.RunPython(create_schedule, delete_schedule)]
