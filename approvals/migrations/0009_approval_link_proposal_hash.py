# Links remember the proposal they showed (its hash), and there is one per reviewer and
# action: a later e-mail replaces the earlier token.

from django.db import migrations, models
from django.db.models import Max


def keep_the_latest_link(apps, schema_editor):
    # Earlier e-mails' duplicates go; the latest token of each stays. A reviewer who used
    # an older one has a decision on record, which already makes the rest of theirs dead.
    Link = apps.get_model("approvals", "ApprovalLink")
    latest = (
        Link.objects.values("request_id", "reviewer_id", "action")
        .annotate(keep=Max("pk"))
        .values_list("keep", flat=True)
    )
    Link.objects.exclude(pk__in=list(latest)).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0008_approval_links"),
    ]

    operations = [
        migrations.AddField(
            model_name="approvallink",
            name="proposal_hash",
            # Links issued before this know no hash: they are refused as changed (fail closed).
            field=models.CharField(
                default="",
                help_text="SHA-256 of the proposal (canonical JSON) the e-mail showed.",
                max_length=64,
            ),
            preserve_default=False,
        ),
        migrations.RunPython(keep_the_latest_link, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="approvallink",
            constraint=models.UniqueConstraint(
                fields=("request", "reviewer", "action"), name="approvallink_one_per_action"
            ),
        ),
    ]
