"""`manage.py secrets_key [--create | --rotate | --reencrypt | --retire-old]`: the keys that
encrypt tenants' secrets at rest (tenants.encryption)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.services import Actor
from tenants import encryption
from tenants.services import (
    add_secrets_key,
    reencrypt_secrets,
    retire_old_secrets_keys,
    secrets_census,
)

ACTOR = Actor.system("command:secrets_key")


class Command(BaseCommand):
    help = (
        "Without an option: say where the secrets keys are, how many there are, and how the "
        "stored secrets stand against them (never prints a key or a secret). --create writes "
        "the key file if there is none. --rotate puts a new key first and re-encrypts every "
        "stored secret with it; --reencrypt does the second half only (after a new key was put "
        "first in DESK_SECRETS_KEYS, or to finish an interrupted rotation); --retire-old then "
        "removes the older keys, and refuses while a stored secret still needs one."
    )

    def add_arguments(self, parser):
        what = parser.add_mutually_exclusive_group()
        what.add_argument("--create", action="store_true", help="Create the key file if missing.")
        what.add_argument(
            "--rotate", action="store_true", help="Add a new key and re-encrypt with it."
        )
        what.add_argument(
            "--reencrypt",
            action="store_true",
            help="Re-encrypt every stored secret with the newest key.",
        )
        what.add_argument(
            "--retire-old",
            action="store_true",
            help="Remove every key but the newest (refused while a secret still needs one).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Secrets re-encrypted per transaction (default DESK_SECRETS_REENCRYPT_BATCH).",
        )

    def handle(self, *args, **options):
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            if options["create"]:
                return self.create()
            if options["rotate"]:
                count = add_secrets_key(actor=ACTOR)
                path = encryption.key_path()
                self.stderr.write(f"Added a new key first in {path} ({count} keys now).")
                return self.reencrypt(options["batch_size"])
            if options["reencrypt"]:
                return self.reencrypt(options["batch_size"])
            if options["retire_old"]:
                removed = retire_old_secrets_keys(actor=ACTOR)
                self.stdout.write(
                    f"Removed {removed} old key(s); every stored secret opens with the newest."
                    if removed
                    else "Only one key: nothing to retire."
                )
                return None
            return self.status()
        except (encryption.SecretsError, OSError) as exc:
            raise CommandError(str(exc)) from None

    def create(self) -> None:
        if encryption.keys_from_environment():
            self.stderr.write(f"The keys come from {encryption.ENV_KEYS}: no key file is used.")
            return
        path = encryption.key_path()
        if encryption.create_key_file():
            self.stderr.write(f"Created the secrets key file at {path} (keep it secret).")
        encryption.keys()  # a file that is there but holds no usable key fails here

    def reencrypt(self, batch_size: int | None) -> None:
        counts = reencrypt_secrets(actor=ACTOR, batch_size=batch_size)
        self.stdout.write(f"Re-encrypted {counts['reencrypted']} secret(s) with the newest key.")
        if counts["unreadable"]:
            raise CommandError(
                f"{counts['unreadable']} stored secret(s) open with no key at all and were left "
                "as they are: set new ones (`manage.py secrets_key` lists them)."
            )

    def status(self) -> None:
        keys = encryption.keys()
        where = (
            encryption.ENV_KEYS
            if encryption.keys_from_environment()
            else str(encryption.key_path())
        )
        census = secrets_census()
        self.stdout.write(f"{len(keys)} key(s) in {where}; {census.total} stored secret(s).")
        for label, pk in census.need_old_key:
            self.stdout.write(f"needs an old key: {label} {pk}")
        for label, pk in census.unreadable:
            self.stdout.write(f"opens with no key: {label} {pk}")
        if census.unreadable:
            raise CommandError(f"{len(census.unreadable)} stored secret(s) open with no key.")
