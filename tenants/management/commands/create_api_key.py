from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.services import Actor
from tenants.models import Tenant
from tenants.services import create_api_key


class Command(BaseCommand):
    help = "Create an intake API key for a tenant and print it (it is never shown again)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="The tenant's slug.")
        parser.add_argument(
            "--roles", default="", help="Comma-separated role slugs (default: all)."
        )
        parser.add_argument("--name", default="", help="What the key is for.")
        parser.add_argument("--rate-limit", type=int, default=120, help="Requests per minute.")

    def handle(self, *args, **options):
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant '{options['tenant']}'.")
        if options["rate_limit"] < 1:
            raise CommandError("--rate-limit must be at least 1.")
        roles = [slug.strip() for slug in options["roles"].split(",") if slug.strip()]
        try:
            _, key = create_api_key(
                tenant=tenant,
                name=options["name"] or "created with manage.py create_api_key",
                role_slugs=roles,
                rate_limit_per_minute=options["rate_limit"],
                actor=Actor.system("command:create_api_key"),
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(key)
