"""`manage.py audit_export --tenant SLUG --format csv|jsonl --out FILE [--since] [--until]`."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.exports import (
    FORMATS,
    Export,
    ExportError,
    audit_data,
    check_target,
    parse_bound,
    start,
    write_export,
)
from audit.services import Actor, record
from tenants import rls
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Export a tenant's audit events in chain order (seq) as CSV or JSON Lines, with a "
        "signed manifest beside it (FILE.manifest.json); check it with "
        "`audit_verify --export FILE`. The files appear only once complete."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument(
            "--since", help="ISO date or date-time; events at or after it (naive = UTC)."
        )
        parser.add_argument(
            "--until",
            help="ISO date (that whole day included) or date-time (exclusive end).",
        )
        parser.add_argument("--format", required=True, choices=FORMATS)
        parser.add_argument("--out", required=True, help="The file to write (replaced if present).")

    def handle(self, *args, **options):
        try:
            since = parse_bound(options["since"], is_end=False) if options["since"] else None
            until = parse_bound(options["until"], is_end=True) if options["until"] else None
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        slug = options["tenant"]
        with rls.platform_context():  # the slug's id: the one cross-tenant read
            tenant_id = Tenant.objects.filter(slug=slug).values_list("pk", flat=True).first()
        if tenant_id is None:
            raise CommandError(f"Unknown tenant '{slug}'.")
        export = Export(
            tenant_id=tenant_id,
            tenant_slug=slug,
            format=options["format"],
            since=since,
            until=until,
            exported_by="command:audit_export",
            name=Path(options["out"]).name,
        )
        try:
            check_target(options["out"])
            upto = start(export)  # a signed checkpoint: the export covers the chain up to it
            with rls.tenant_context(tenant_id):
                manifest = write_export(path=options["out"], export=export, upto_seq=upto)
                record(
                    tenant=tenant_id,
                    actor=Actor.system("command:audit_export"),
                    action="audit.exported",
                    data=audit_data(export, manifest, via="command"),
                )
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Wrote {export.rows} audit event(s) of {slug} to {options['out']} "
            f"(seq {manifest['first_seq']} to {manifest['last_seq']}), manifest in "
            f"{options['out']}.manifest.json."
        )
