"""`manage.py audit_checkpoint [--tenant SLUG]`: sign and store checkpoints now."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit import checkpoints, signing
from tenants import rls
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Write a signed checkpoint of the platform's and every tenant's audit chain (or of "
        "one tenant's) to the checkpoint store. The worker does this every "
        "AUDIT_CHECKPOINT_SECONDS."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="Tenant slug; default: every chain.")

    def handle(self, *args, **options):
        if options["tenant"]:
            with rls.platform_context():  # the slug's id: the one cross-tenant read
                tenant_id = (
                    Tenant.objects.filter(slug=options["tenant"])
                    .values_list("pk", flat=True)
                    .first()
                )
            if tenant_id is None:
                raise CommandError(f"Unknown tenant '{options['tenant']}'.")
            chains = [tenant_id]
        else:
            with rls.platform_context():
                chains = [None, *Tenant.objects.order_by("pk").values_list("pk", flat=True)]
        for tenant_id in chains:
            try:
                written = checkpoints.checkpoint(tenant_id)
            except (signing.SigningKeyMissing, checkpoints.CheckpointStoreError) as exc:
                raise CommandError(str(exc)) from None
            point = written.checkpoint
            self.stdout.write(
                f"{checkpoints.log_name(tenant_id)}: checkpoint #{written.number} at seq "
                f"{point.size}"
            )
