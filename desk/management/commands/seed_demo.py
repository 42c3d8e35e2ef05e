from django.conf import settings
from django.core.management.base import BaseCommand

from desk.demo import DEMO_PASSWORD, USERS, seed_demo


class Command(BaseCommand):
    help = "Create the demo tenants, users, roles, policies and client records (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--without-change-control",
            action="store_true",
            help="Leave out the change-control walkthrough (golden cases, drafts, a run).",
        )

    def handle(self, *args, **options):
        created = seed_demo(change_control=not options["without_change_control"])
        summary = ", ".join(f"{count} {name}" for name, count in created.items())
        self.stdout.write(f"Demo data ready (created: {summary}).")
        self.stdout.write(f"Demo logins (password '{DEMO_PASSWORD}'): {', '.join(USERS)}")
        if settings.DESK_REQUIRE_2FA:
            self.stdout.write(
                "Each login sets up its second factor at its first sign-in: scan the QR code "
                "with an authenticator app (README: Sign-in protection)."
            )
