"""`manage.py role_import --tenant SLUG --file FILE [--as USERNAME] [--note TEXT]`."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.services import Actor
from roles import files
from tenants import rls
from tenants.models import Membership, Tenant
from tenants.scoping import member_tenant_ids
from tenants.selectors import tenant_id_for_slug


class Command(BaseCommand):
    help = (
        "Read a role file (from role_export; .json, .yaml or .yml) into a tenant as a new DRAFT "
        "version of the role, creating the role if the tenant lacks it (the file's own tenant "
        "is ignored). Its golden cases are created, or updated where a case of that name "
        "differs; the role's cases that the file leaves out are NOT retired. Nothing is "
        "published or activated: the draft needs a publication review in the admin. A file "
        "whose bundle equals the role's latest version is refused. On any error nothing is "
        "written."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug to import into.")
        parser.add_argument("--file", required=True, help="The role file to read.")
        parser.add_argument(
            "--as",
            dest="username",
            help="Import as this user (an active operator of the tenant); default: the system.",
        )
        parser.add_argument(
            "--note", default="", help="Change note of the draft (default: the file's)."
        )

    def handle(self, *args, **options):
        path = Path(options["file"])
        text = _read(path)
        tenant_id = tenant_id_for_slug(options["tenant"])
        if tenant_id is None:
            raise CommandError(f"Unknown tenant '{options['tenant']}'.")
        with rls.tenant_context(tenant_id):
            tenant = Tenant.objects.get(pk=tenant_id)
            actor = _actor(options["username"], tenant)
            try:
                document = files.loads(text, files.format_for(path))
                result = files.import_document(
                    tenant=tenant, document=document, actor=actor, change_note=options["note"]
                )
            except ValidationError as exc:
                raise CommandError(
                    f"Nothing imported from {path}:\n" + "\n".join(f"- {m}" for m in exc.messages)
                ) from None
        version = result.version
        if result.role_created:
            self.stdout.write(f"Created role {result.role.slug} in {tenant.slug}.")
        self.stdout.write(
            f"Drafted {result.role.slug} v{version.number} ({version.status}) from {path}."
        )
        self.stdout.write(f"Golden cases created: {', '.join(result.cases_created) or 'none'}.")
        self.stdout.write(f"Golden cases updated: {', '.join(result.cases_updated) or 'none'}.")
        self.stdout.write(
            "The draft is not published: it needs a publication review in the admin "
            "(a second operator, and its golden cases)."
        )


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path} is not UTF-8 text (byte {exc.start}).") from None


def _actor(username: str | None, tenant: Tenant) -> Actor:
    if not username:
        return Actor.system("command:role_import")
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"No user '{username}'.")
    if tenant.pk not in member_tenant_ids(user, kinds=(Membership.Kind.OPERATOR,)):
        raise CommandError(f"'{username}' is not an active operator of {tenant.slug}.")
    return Actor.for_user(user)
