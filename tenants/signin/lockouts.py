"""Lockout after repeated sign-in failures, by django-axes (settings: AXES_*, README
"Sign-in protection").

A failure counts for the name tried and for the client's address (the one audit events
carry: `audit.context.client_ip`); once either has AXES_FAILURE_LIMIT failures inside the
cool-off time, sign-in with that name, or from that address, is refused without the
password being checked. Lifting a lockout erases the failures of its name and its address.
"""

from __future__ import annotations

from dataclasses import dataclass

from axes.backends import AxesStandaloneBackend
from axes.exceptions import AxesBackendPermissionDenied
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet, Sum, Window
from django.utils import timezone

from audit.auth_events import record_lockout_lifted, recorded_username
from audit.services import Actor

# Set on a request whose sign-in attempt was refused because of a lockout (its password
# was never checked): the audit trail records that reason, not a wrong password.
REFUSED_ATTRIBUTE = "desk_refused_by_lockout"


class LockoutBackend(AxesStandaloneBackend):
    """Axes' check before the backends that check passwords (ModelBackend; guardian's
    answers permissions only): a locked-out name or address gets no further."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        try:
            return super().authenticate(request, username=username, password=password, **kwargs)
        except AxesBackendPermissionDenied:
            setattr(request, REFUSED_ATTRIBUTE, True)
            raise


def attempted_username(request, credentials=None) -> str | None:
    """The name an attempt counts against (AXES_USERNAME_CALLABLE): as typed, held as the
    audit trail holds it, so a 10 KB name or a NUL byte is counted, not a database error
    (axes keeps names in 255 characters; PostgreSQL refuses NUL in text)."""
    field = settings.AXES_USERNAME_FORM_FIELD
    if credentials:
        name = credentials.get(field)
    else:
        name = getattr(request, "data", request.POST).get(field)
    return None if name is None else recorded_username(str(name))


def refused_by_lockout(request) -> bool:
    """Whether this request's sign-in attempt was refused, unchecked, by a lockout."""
    return bool(getattr(request, REFUSED_ATTRIBUTE, False))


def count_failure(request, *, username: str) -> bool:
    """Count a failure that is not a password's (a wrong second-factor code) against the name
    and the request's address; whether they are now locked out."""
    credentials = {str(settings.AXES_USERNAME_FORM_FIELD): username}
    AxesProxyHandler.user_login_failed(
        sender=count_failure, credentials=credentials, request=request
    )
    return bool(getattr(request, "axes_locked_out", False))


def is_locked_out(request, *, username: str) -> bool:
    """Whether sign-in with this name, or from the request's address, is locked out."""
    return AxesProxyHandler.is_locked(request, {str(settings.AXES_USERNAME_FORM_FIELD): username})


def forget_failures(*, username: str) -> None:
    """Erase the name's own failures once its owner passed both factors (not the address's:
    a person signing in must not clear what was tried on others from the same address)."""
    AxesProxyHandler.reset_attempts(username=username)


# --- what platform staff see and do ---------------------------------------------------------


@dataclass(frozen=True)
class Lifted:
    username: str
    ip_address: str | None
    attempts: int


def cool_off_threshold():
    """Failures before this no longer count (None: every failure counts until lifted)."""
    cool_off = get_cool_off()
    return timezone.now() - cool_off if cool_off is not None else None


def attempts_with_totals() -> QuerySet[AccessAttempt]:
    """Every recorded attempt with the failures of its name and of its address, counted as
    axes counts them (inside the cool-off time); `locked` when either reached the limit."""
    attempts = AccessAttempt.objects.all()
    threshold = cool_off_threshold()
    if threshold is not None:
        attempts = attempts.filter(attempt_time__gte=threshold)
    return attempts.annotate(
        username_failures=Window(Sum("failures_since_start"), partition_by=[F("username")]),
        address_failures=Window(Sum("failures_since_start"), partition_by=[F("ip_address")]),
    )


def is_locking(attempt: AccessAttempt) -> bool:
    """Whether this attempt's name or address is locked out (on an `attempts_with_totals` row)."""
    limit = settings.AXES_FAILURE_LIMIT
    return attempt.username_failures >= limit or attempt.address_failures >= limit


def lift_lockout(*, attempt: AccessAttempt, actor: Actor, reason: str) -> Lifted:
    """Lift the lockout of the attempt's name and address: erase every failure recorded for
    either, and record who did it and why on the audit trail of the person so named.

    Raises ValueError without a reason.
    """
    if not reason.strip():
        raise ValueError("Say why the lockout is lifted.")
    username, ip_address = attempt.username or "", attempt.ip_address
    with transaction.atomic():
        matching = Q(username=attempt.username)
        if ip_address:
            matching |= Q(ip_address=ip_address)
        _, deleted = AccessAttempt.objects.filter(matching).delete()
        erased = deleted.get(AccessAttempt._meta.label, 0)
        record_lockout_lifted(
            username=username,
            ip_address=ip_address,
            attempts=erased,
            actor=actor,
            reason=reason,
        )
    return Lifted(username=username, ip_address=ip_address, attempts=erased)
