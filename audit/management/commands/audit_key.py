"""`manage.py audit_key [--create]`: print the verifier key auditors pin; create the key."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit import signing


class Command(BaseCommand):
    help = (
        "Print the audit verifier key (C2SP signed-note format) that auditors pin to check "
        "checkpoints and exports. --create writes a new signing key if there is none."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--create",
            action="store_true",
            help="Create the signing key at AUDIT_SIGNING_KEY_FILE if it does not exist.",
        )

    def handle(self, *args, **options):
        path = signing.key_path()
        if options["create"] and not path.exists():
            try:
                signing.create_key()
            except (signing.SigningKeyMissing, OSError) as exc:
                raise CommandError(str(exc)) from None
            self.stderr.write(f"Created the audit signing key at {path} (keep it secret).")
        try:
            verifier = signing.verifier()
        except signing.SigningKeyMissing as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(verifier.encode())
