"""`manage.py role_export --tenant SLUG --role SLUG [--version N] [--format F] --out FILE`."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from roles import files
from roles.models import Role
from tenants import rls
from tenants.models import Tenant
from tenants.selectors import tenant_id_for_slug


class Command(BaseCommand):
    help = (
        "Write one version of a tenant's role to a file: its whole bundle (workflow, prompts, "
        "model settings, tools, input schema, approval rules) and the role's active golden "
        "cases, keys sorted, so the same version always gives the same bytes. "
        "Read it back with role_import."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        # --version names the role version here, not Django's: let ours replace the base one.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--role", required=True, help="Role slug within the tenant.")
        parser.add_argument(
            "--version",
            type=int,
            help="Version number (default: the active version, else the latest).",
        )
        parser.add_argument(
            "--format",
            choices=files.FORMATS,
            help="json or yaml (default: from the --out extension, else json).",
        )
        parser.add_argument(
            "--out", required=True, help="The file to write (replaced if present), or - for stdout."
        )

    def handle(self, *args, **options):
        out = options["out"]
        fmt = options["format"] or (None if out == "-" else files.format_for(out)) or "json"
        tenant_id = tenant_id_for_slug(options["tenant"])
        if tenant_id is None:
            raise CommandError(f"Unknown tenant '{options['tenant']}'.")
        with rls.tenant_context(tenant_id):
            tenant = Tenant.objects.get(pk=tenant_id)
            role = Role.objects.filter(tenant=tenant, slug=options["role"]).first()
            if role is None:
                raise CommandError(f"No role '{options['role']}' in tenant '{tenant.slug}'.")
            version = _version(role, options["version"])
            document = files.export_document(version)
        text = files.dumps(document, fmt)
        summary = f"{role.slug} v{version.number} ({len(document['golden_cases'])} golden cases)"
        if out == "-":
            self.stdout.write(text, ending="")
            self.stderr.write(f"Wrote {summary} to stdout")
            return
        try:
            files.write_atomically(out, text)
        except OSError as exc:
            raise CommandError(f"Cannot write {out}: {exc.strerror or exc}.") from None
        self.stdout.write(f"Wrote {summary} to {out}")


def _version(role: Role, number: int | None):
    if number is not None:
        version = role.versions.filter(number=number).first()
        if version is None:
            numbers = sorted(role.versions.values_list("number", flat=True))
            known = ", ".join(f"v{n}" for n in numbers) or "none"
            raise CommandError(f"Role '{role.slug}' has no version {number} (it has {known}).")
        return version
    version = role.active_version or role.versions.order_by("-number").first()
    if version is None:
        raise CommandError(f"Role '{role.slug}' has no versions to export.")
    return version
