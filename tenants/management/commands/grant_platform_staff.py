from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from audit.services import Actor
from tenants.services import grant_platform_staff


class Command(BaseCommand):
    help = (
        "Flag a user as platform staff: they may use the task-queue admin and open audited "
        "break-glass access to a tenant; they see no tenant's data without it."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--note", default="", help="Who they are, for the record.")

    def handle(self, *args, username, note, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user '{username}'.")
        if not user.is_staff:
            raise CommandError(f"'{username}' cannot log in to the admin (is_staff is off).")
        grant_platform_staff(
            user=user, actor=Actor.system("command:grant_platform_staff"), note=note
        )
        self.stdout.write(f"{username} is platform staff.")
