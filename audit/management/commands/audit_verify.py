"""`manage.py audit_verify [--tenant SLUG]`: recompute hash chains; non-zero exit if broken."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.models import AuditEvent
from audit.services import verify_chain
from tenants import rls
from tenants.models import Tenant

PLATFORM = "(platform)"


class Command(BaseCommand):
    help = (
        "Verify the audit hash chain of one tenant, or of every tenant and the platform. "
        "Exits non-zero when any chain is broken."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="Tenant slug; default: every tenant and the platform.")

    def handle(self, *args, **options):
        with rls.platform_context():
            tenants = Tenant.objects.order_by("slug")
            if options["tenant"]:
                tenants = tenants.filter(slug=options["tenant"])
            chains = list(tenants.values_list("slug", "pk"))
        if options["tenant"] and not chains:
            raise CommandError(f"Unknown tenant '{options['tenant']}'.")
        if not options["tenant"]:
            chains.insert(0, (PLATFORM, None))
        broken = []
        for name, tenant_id in chains:
            # Each chain is read in its own tenant's context; the platform's needs the
            # platform role (its events belong to no tenant).
            context = rls.platform_context() if tenant_id is None else rls.tenant_context(tenant_id)
            with context:
                problems = verify_chain(tenant_id=tenant_id)
                count = AuditEvent.objects.filter(tenant_id=tenant_id).count()
            if not problems:
                self.stdout.write(f"{name}: ok ({count} events)")
                continue
            broken.append(name)
            self.stdout.write(f"{name}: BROKEN ({len(problems)} problem(s) in {count} events)")
            for problem in problems:
                self.stdout.write(f"  seq {problem.seq}: {problem.problem}")
        if broken:
            raise CommandError(f"Audit chain broken: {', '.join(broken)}.")
