"""`manage.py audit_verify [--tenant SLUG] [--key KEY]` and `audit_verify --export FILE`.

Recomputes hash chains and holds them against their signed checkpoints, or checks an export
bundle offline. Exits non-zero when anything is broken, naming the first bad place.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit import checkpoints, proof, signing
from audit.models import AuditEvent
from audit.verification import unproven, verify_chain
from tenants import rls
from tenants.models import Tenant

PLATFORM = "(platform)"


class Command(BaseCommand):
    help = (
        "Verify the audit chains of one tenant, or of every tenant and the platform, against "
        "their signed checkpoints; or, with --export, an export bundle without the database. "
        "Exits non-zero when anything is broken."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="Tenant slug; default: every chain.")
        parser.add_argument(
            "--key",
            help="The verifier key to trust (pin the one `audit_key` printed); default: the "
            "deployment's own.",
        )
        parser.add_argument("--export", type=Path, help="An export bundle (.zip) or file.")

    def handle(self, *args, **options):
        verifier = self._verifier(options["key"])
        if options["export"]:
            return self._verify_export(options["export"], verifier)
        with rls.platform_context():
            tenants = Tenant.objects.order_by("slug")
            if options["tenant"]:
                tenants = tenants.filter(slug=options["tenant"])
            chains = list(tenants.values_list("slug", "pk"))
        if options["tenant"] and not chains:
            raise CommandError(f"Unknown tenant '{options['tenant']}'.")
        if not options["tenant"]:
            chains.insert(0, (PLATFORM, None))
            # A log of checkpoints whose tenant is gone: its whole chain was deleted.
            known = {pk for _, pk in chains}
            for log in checkpoints.store().logs():
                tenant_id = checkpoints.tenant_of_log(log)
                if tenant_id not in known:
                    chains.append((f"(deleted tenant #{tenant_id})", tenant_id))
        first_bad = None
        for name, tenant_id in chains:
            context = rls.platform_context() if tenant_id is None else rls.tenant_context(tenant_id)
            with context:
                problems = verify_chain(tenant_id=tenant_id, verifier=verifier)
                count = AuditEvent.objects.filter(tenant_id=tenant_id).count()
                pending = unproven(tenant_id, verifier) if not problems else 0
            if not problems:
                note = f", {pending} newer than its last checkpoint" if pending else ""
                self.stdout.write(f"{name}: ok ({count} events{note})")
                continue
            self.stdout.write(f"{name}: BROKEN ({len(problems)} problem(s) in {count} events)")
            for problem in problems:
                self.stdout.write(f"  {problem}")
            first_bad = first_bad or f"{name} {problems[0]}"
        if first_bad:
            raise CommandError(f"Audit trail broken: {first_bad}")

    def _verifier(self, key: str | None) -> proof.Verifier:
        try:
            return proof.Verifier.decode(key) if key else signing.verifier()
        except (proof.ProofError, signing.SigningKeyMissing) as exc:
            raise CommandError(str(exc)) from None

    def _verify_export(self, path: Path, verifier: proof.Verifier) -> None:
        path = Path(path)
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        report = proof.verify_export(path, verifier)
        for problem in report.problems:
            self.stdout.write(f"BROKEN: {problem}")
        if not report.ok:
            raise CommandError(f"Export broken: {report.problems[0]}")
        self.stdout.write(
            f"{path.name}: ok ({report.rows} rows, {report.redacted} with their payload "
            "removed by retention)"
        )
