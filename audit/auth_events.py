"""Getting in and out on the audit trail: who signed in, who tried and failed, who left.

An event about a person goes on the chain of each tenant they are a member of, where that
tenant's auditors see it, and on the platform chain when they belong to none (platform
staff, a name nobody has). Each is written in the row-level-security context of its chain,
whatever context the caller is in (Django's auth signals fire in the sign-in page's, which
sees no tenant). The request's id, address and user agent come with every event through
`audit.context`. Django's auth signals reach these through `audit.receivers`.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from audit.services import Actor, record
from tenants import locking, rls
from tenants.selectors import membership_tenant_ids


class SignInFailure:
    """Why a sign-in failed, as recorded (`data["reason"]`)."""

    UNKNOWN_USER = "unknown_user"
    WRONG_PASSWORD = "wrong_password"
    INACTIVE_USER = "inactive_user"
    NOT_STAFF = "not_staff"  # the right password, but no admin access
    INVALID_USERNAME = "invalid_username"  # refused by the form before any look-up
    LOCKED_OUT = "locked_out"  # refused unchecked: the name or the address is locked out


# Who tries a sign-in that fails is not known, whatever name they typed.
ANONYMOUS = Actor.system("anonymous")


def user_chains(user) -> list[int | None]:
    """The chains events about `user` go on: their tenants', or the platform's (None)."""
    tenant_ids = membership_tenant_ids(user) if user is not None else []
    return list(tenant_ids) or [None]


def chains_context(chains: list[int | None]):
    """The row-level-security context that may write on these chains (from `user_chains`):
    the platform's, since an event about a person goes on their tenants' chains whoever
    asks (a visitor who typed their name has no right to those tenants)."""
    return rls.platform_context()


def record_for_user(
    *, user, actor: Actor, action: str, reason: str = "", data: dict | None = None
) -> list[AuditEvent]:
    """Write one event about `user` (None: nobody known) on each of their chains."""
    chains = user_chains(user)
    with locking.tracked(), chains_context(chains):
        return [
            record(tenant=chain, actor=actor, action=action, obj=user, reason=reason, data=data)
            for chain in chains
        ]


def record_sign_in(*, user) -> list[AuditEvent]:
    """Record that `user` signed in."""
    return record_for_user(
        user=user,
        actor=Actor.for_user(user),
        action="auth.signed_in",
        data={"username": user.get_username()},
    )


def record_sign_out(*, user) -> list[AuditEvent]:
    """Record that `user` signed out (nothing for a visitor who was not signed in)."""
    if user is None or not user.is_authenticated:
        return []
    return record_for_user(
        user=user,
        actor=Actor.for_user(user),
        action="auth.signed_out",
        data={"username": user.get_username()},
    )


def record_locked_out(*, username, ip_address: str | None, failures: int) -> list[AuditEvent]:
    """Record that sign-in was locked out for a name or an address after `failures` failures."""
    tried = "" if username is None else str(username)
    longest = _username_length()
    data = {
        "username": recorded_username(tried),
        "ip_address": ip_address,
        "failures": failures,
    }
    user = _user_named(tried, longest)
    return record_for_user(user=user, actor=ANONYMOUS, action="auth.locked_out", data=data)


def record_lockout_lifted(
    *, username: str, ip_address: str | None, attempts: int, actor: Actor, reason: str
) -> list[AuditEvent]:
    """Record that `actor` lifted the lockout of a name and an address (their failures erased)."""
    user = _user_named(username, _username_length())
    data = {"username": username, "ip_address": ip_address, "attempts_erased": attempts}
    return record_for_user(
        user=user, actor=actor, action="auth.lockout_lifted", reason=reason, data=data
    )


def record_second_factor(
    *, user, action: str, actor: Actor | None = None, reason: str = "", data: dict | None = None
) -> list[AuditEvent]:
    """Record a second-factor event about `user` (`auth.second_factor_*`, by them unless an
    `actor` is given)."""
    return record_for_user(
        user=user,
        actor=actor or Actor.for_user(user),
        action=action,
        reason=reason,
        data={"username": user.get_username(), **(data or {})},
    )


def record_failed_sign_in(*, username, reason: str | None = None) -> list[AuditEvent]:
    """Record a sign-in that failed: the name tried and why, never the password.

    Without a `reason`, it is found from the name: nobody has it, the account is
    inactive, or else the password was wrong. A name nobody can have (too long, a NUL
    byte) is recorded, shortened and with its NUL bytes written out, on the platform chain.
    """
    tried = "" if username is None else str(username)
    longest = _username_length()
    shown = tried.replace("\x00", "\\x00")
    data = {"username": recorded_username(tried)}
    if len(shown) > longest:
        data["username_length"] = len(tried)
    user = _user_named(tried, longest)
    if reason is None:
        if user is None:
            reason = SignInFailure.UNKNOWN_USER
        elif not user.is_active:
            reason = SignInFailure.INACTIVE_USER
        else:
            reason = SignInFailure.WRONG_PASSWORD
    data["reason"] = reason
    return record_for_user(user=user, actor=ANONYMOUS, action="auth.sign_in_failed", data=data)


def recorded_username(name: str) -> str:
    """A name as typed, as the trail (and the lockout counts) hold it: NUL bytes written
    out, cut to the longest name an account can have."""
    return name.replace("\x00", "\\x00")[: _username_length()]


def _username_length() -> int:
    User = get_user_model()
    return User._meta.get_field(User.USERNAME_FIELD).max_length or 150


def _user_named(name: str, longest: int):
    if not name or "\x00" in name or len(name) > longest:
        return None  # nobody can have it (and PostgreSQL refuses NUL in a query)
    User = get_user_model()
    try:
        return User._default_manager.get_by_natural_key(name)
    except User.DoesNotExist:
        return None
