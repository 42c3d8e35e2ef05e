from django.core.management.base import BaseCommand

from desk.demo import DEMO_PASSWORD, USERS, seed_demo


class Command(BaseCommand):
    help = "Create the demo tenants, users, roles, policies and client records (idempotent)."

    def handle(self, *args, **options):
        created = seed_demo()
        summary = ", ".join(f"{count} {name}" for name, count in created.items())
        self.stdout.write(f"Demo data ready (created: {summary}).")
        self.stdout.write(f"Demo logins (password '{DEMO_PASSWORD}'): {', '.join(USERS)}")
