"""`manage.py start_run --tenant SLUG --role SLUG --input JSON`: queue one run from a shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.services import Actor
from desk.models import Run
from desk.services import RunError, start_run
from roles.models import Role
from tenants import rls, safe_json
from tenants.models import Tenant
from tenants.selectors import tenant_id_for_slug


def parse_input(raw: str) -> Any:
    """The run input from `--input`: JSON text, or `@path` to a JSON file."""
    source = "--input"
    if raw.startswith("@"):
        path = Path(raw[1:])
        source = str(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot read the input file {path}: {exc.strerror}.") from None
    try:
        return safe_json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"The input is not valid JSON ({source}, line {exc.lineno} column {exc.colno}): "
            f"{exc.msg}."
        ) from None
    except safe_json.UnsafeJSON as exc:
        raise CommandError(f"The input is not safe JSON ({source}): {exc}") from None


class Command(BaseCommand):
    help = (
        "Start a run of a tenant's role and print it as one JSON line. "
        "The input is JSON text, or @file.json."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--role", required=True, help="Role slug within the tenant.")
        parser.add_argument(
            "--input", required=True, help="The run input as a JSON object, or @path/to/file.json."
        )
        parser.add_argument(
            "--idempotency-key",
            default="",
            help="Refuse to start a second run with the same key for this tenant.",
        )

    def handle(self, *args, **options):
        run_input = parse_input(options["input"])
        tenant_id = tenant_id_for_slug(options["tenant"])
        if tenant_id is None:
            raise CommandError(f"Unknown tenant '{options['tenant']}'.")
        with rls.tenant_context(tenant_id):
            tenant = Tenant.objects.get(pk=tenant_id)
            role = Role.objects.filter(tenant=tenant, slug=options["role"]).first()
            if role is None:
                raise CommandError(f"No role '{options['role']}' in tenant '{tenant.slug}'.")
            try:
                run = start_run(
                    tenant=tenant,
                    role=role,
                    input=run_input,
                    actor=Actor.system("command:start_run"),
                    via=Run.Via.COMMAND,
                    idempotency_key=options["idempotency_key"],
                )
            except RunError as exc:
                raise CommandError(_describe(exc)) from None
            printed = {
                "id": run.pk,
                "status": run.status,
                "tenant": tenant.slug,
                "role": role.slug,
                "version": run.role_version.number,
            }
        self.stdout.write(json.dumps(printed))


def _describe(error: RunError) -> str:
    lines = [f"{error.message} [{error.code}]"]
    lines += [f"  {d.get('field', '(root)')}: {d.get('message', '')}" for d in error.details]
    return "\n".join(lines)
