"""Django's `changepassword`, but a tenant member's password only under break-glass access."""

from __future__ import annotations

import getpass

from django.contrib.auth import get_user_model
from django.contrib.auth.management.commands import changepassword
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from audit.services import Actor
from tenants.services import PasswordResetRefused, reset_password

MAX_TRIES = 3


class Command(changepassword.Command):
    help = (
        "Change a user's password. A client tenant's member's password is theirs: setting it "
        "takes an open break-glass grant on each of their tenants (--break-glass GRANT_ID); "
        "without one the attempt is refused and recorded on the tenant's audit trail."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "username", nargs="?", help="Whose password; by default, the current login name's."
        )
        parser.add_argument(
            "--break-glass",
            dest="grant_ids",
            type=int,
            action="append",
            metavar="GRANT_ID",
            help="An open break-glass grant on the user's tenant (once per tenant).",
        )

    def handle(self, *args, username=None, grant_ids=None, **options):
        username = username or getpass.getuser()
        User = get_user_model()
        user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"user '{username}' does not exist")
        self.stdout.write(f"Changing password for user '{user}'")
        password = self._new_password(user)
        try:
            reset_password(
                user=user,
                password=password,
                actor=Actor.system("command:changepassword"),
                via="command",
                grant_ids=grant_ids,
            )
        except PasswordResetRefused as refused:
            raise CommandError(
                f"{refused} Give --break-glass GRANT_ID for each of their tenants."
            ) from None
        return f"Password changed successfully for user '{user}'"

    def _new_password(self, user) -> str:
        """Ask twice, as Django's command does, until both match and pass the validators."""
        for _ in range(MAX_TRIES):
            first = self._get_pass()
            if first != self._get_pass("Password (again): "):
                self.stdout.write("Passwords do not match. Please try again.")
                continue
            try:
                validate_password(first, user)
            except ValidationError as error:
                self.stderr.write("\n".join(error.messages))
                continue
            return first
        raise CommandError(f"Aborting password change for user '{user}' after {MAX_TRIES} attempts")
