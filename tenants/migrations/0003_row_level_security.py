"""Row-level security on PostgreSQL (tenants/rls.py). Does nothing on SQLite.

Creates the roles agentdesk_app and agentdesk_platform when they are missing (that needs
CREATEROLE; otherwise create them first, see README "Isolation model").
"""

from django.db import migrations

from tenants import rls


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0002_apikey_historicalapikey_apiratewindow"),
        ("roles", "0001_initial"),
        ("desk", "0003_run_api_key"),
        ("approvals", "0001_initial"),
        ("audit", "0001_initial"),
        # Every table that exists now gets the grants; later ones get default privileges.
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
        ("guardian", "0003_remove_groupobjectpermission_guardian_gr_content_ae6aec_idx_and_more"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("sessions", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [rls.migration_operation()]
