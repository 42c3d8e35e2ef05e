"""The second factor (django-otp): a TOTP app, and one-time recovery codes.

Whoever signs in without a confirmed device enrols: a new secret (shown as a QR code drawn
here, and as text), confirmed with a code from the app, which also issues recovery codes,
shown once. Whoever has one proves it with a code from the app or an unused recovery code;
django-otp refuses a TOTP code already used (or an older one) and deletes a recovery code
as it is used. A wrong code counts towards the sign-in lockout like a wrong password.
Platform staff reset a person's second factor (a lost phone); they enrol again.
Every enrolment, failure, use of a recovery code and reset is on the audit trail.
"""

from __future__ import annotations

import enum
import re
from base64 import b32encode

import segno
from django.conf import settings
from django.db import transaction
from django_otp import login as otp_login
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.auth_events import record_second_factor
from audit.services import Actor
from tenants.signin import lockouts

APP_DEVICE_NAME = "Authenticator app"
RECOVERY_DEVICE_NAME = "Recovery codes"
_TOTP_CODE = re.compile(r"^[0-9]{6}$")
_RECOVERY_CODE = re.compile(r"^[a-z2-7]{8}$")  # django-otp's StaticToken.random_token()


class EnrolmentRefused(Exception):
    """This person already has a second factor: only platform staff's reset removes it."""


class Outcome(enum.Enum):
    VERIFIED = "verified"
    RECOVERY_CODE_USED = "recovery_code_used"
    WRONG_CODE = "wrong_code"
    LOCKED_OUT = "locked_out"


def normalized(code: str) -> str:
    """A code as typed, without spaces or dashes, in lower case."""
    return re.sub(r"[\s-]", "", code or "").lower()


def has_second_factor(user) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def recovery_codes_left(user) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


# --- enrolment ------------------------------------------------------------------------------


def pending_device(user) -> TOTPDevice:
    """The unconfirmed TOTP device this person is enrolling (the same one on every visit,
    so a reloaded page shows the same QR code).

    Raises EnrolmentRefused when they already have a confirmed one.
    """
    with transaction.atomic():
        if has_second_factor(user):
            raise EnrolmentRefused("You already have a second factor.")
        device = (
            TOTPDevice.objects.select_for_update()
            .filter(user=user, confirmed=False)
            .order_by("pk")
            .first()
        )
        if device is None:
            device = TOTPDevice.objects.create(user=user, name=APP_DEVICE_NAME, confirmed=False)
        return device


def qr_svg(device: TOTPDevice) -> str:
    """The device's otpauth:// URL as an inline SVG QR code, drawn here (nothing external)."""
    return segno.make(device.config_url, error="m").svg_inline(
        scale=5, dark="#000", light="#fff", title="Scan with your authenticator app"
    )


def secret_text(device: TOTPDevice) -> str:
    """The secret as an app asks for it when typed in: base32, in groups of four."""
    secret = b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def confirm_enrolment(*, request, user, device_id: int, code: str) -> list[str] | Outcome:
    """Confirm the pending device with a code from the app: the person is then verified in
    this session and gets new recovery codes (returned, to be shown once).

    A wrong code is recorded and counted towards the lockout (the Outcome is returned).
    Raises EnrolmentRefused when the person already has a confirmed device.
    """
    username = user.get_username()
    if lockouts.is_locked_out(request, username=username):
        return Outcome.LOCKED_OUT
    with transaction.atomic():
        if has_second_factor(user):
            raise EnrolmentRefused("You already have a second factor.")
        device = (
            TOTPDevice.objects.select_for_update()
            .filter(pk=device_id, user=user, confirmed=False)
            .first()
        )
        token = normalized(code)
        if device is None or not _TOTP_CODE.match(token) or not device.verify_token(token):
            record_second_factor(
                user=user, action="auth.second_factor_failed", data={"during": "enrolment"}
            )
            verified = False
        else:
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            TOTPDevice.objects.filter(user=user, confirmed=False).delete()
            codes = _new_recovery_codes(user)
            record_second_factor(
                user=user,
                action="auth.second_factor_enrolled",
                data={"device": device.name, "recovery_codes": len(codes)},
            )
            verified = True
    if not verified:
        if lockouts.count_failure(request, username=username):
            return Outcome.LOCKED_OUT
        return Outcome.WRONG_CODE
    otp_login(request, device)
    lockouts.forget_failures(username=username)
    return codes


def _new_recovery_codes(user) -> list[str]:
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name=RECOVERY_DEVICE_NAME, confirmed=True)
    codes = [StaticToken.random_token() for _ in range(settings.DESK_RECOVERY_CODES)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=c) for c in codes])
    return codes


# --- verification ---------------------------------------------------------------------------


def verify(*, request, user, code: str) -> Outcome:
    """Check a code from the app, or a recovery code (used up by this), and mark the session
    verified when it is right. A wrong code is recorded and counts towards the lockout; a
    locked-out name or address gets no check at all."""
    outcome, device = _check(request=request, user=user, code=code, during="sign_in")
    if device is not None:
        otp_login(request, device)
        lockouts.forget_failures(username=user.get_username())
    return outcome


def check_code(*, request, user, code: str, during: str) -> Outcome:
    """Check `user`'s code for one action taken without a session of theirs (a decision
    from an e-mail link), as `verify` does, but sign nobody in: the code proves the person
    at this moment (the failures counted against their name stay: it proves no password).
    `during` names the action on the audit trail."""
    return _check(request=request, user=user, code=code, during=during)[0]


def _check(*, request, user, code: str, during: str):
    """(Outcome, the device that took the code or None)."""
    username = user.get_username()
    if lockouts.is_locked_out(request, username=username):
        return Outcome.LOCKED_OUT, None
    token = normalized(code)
    with transaction.atomic():
        device = None
        if _TOTP_CODE.match(token):
            candidates = TOTPDevice.objects.filter(user=user, confirmed=True)
        elif _RECOVERY_CODE.match(token):
            candidates = StaticDevice.objects.filter(user=user, confirmed=True)
        else:
            candidates = TOTPDevice.objects.none()
        for candidate in candidates.select_for_update().order_by("pk"):
            if candidate.verify_token(token):
                device = candidate
                break
        if device is None:
            record_second_factor(
                user=user, action="auth.second_factor_failed", data={"during": during}
            )
        elif isinstance(device, StaticDevice):
            left = device.token_set.count()
            record_second_factor(
                user=user,
                action="auth.recovery_code_used",
                data={"recovery_codes_left": left, "during": during},
            )
        else:
            record_second_factor(
                user=user, action="auth.second_factor_verified", data={"during": during}
            )
    if device is None:
        if lockouts.count_failure(request, username=username):
            return Outcome.LOCKED_OUT, None
        return Outcome.WRONG_CODE, None
    if isinstance(device, StaticDevice):
        return Outcome.RECOVERY_CODE_USED, device
    return Outcome.VERIFIED, device


# --- reset ----------------------------------------------------------------------------------


def reset_second_factor(*, user, actor: Actor, reason: str) -> int:
    """Remove every device of `user` (app and recovery codes), so that they enrol again at
    their next sign-in; recorded with who did it and why. How many devices went.

    Raises ValueError without a reason.
    """
    if not reason.strip():
        raise ValueError("Say why the second factor is reset.")
    with transaction.atomic():
        apps = TOTPDevice.objects.filter(user=user).delete()[1].get(TOTPDevice._meta.label, 0)
        codes = StaticDevice.objects.filter(user=user).delete()[1].get(StaticDevice._meta.label, 0)
        record_second_factor(
            user=user,
            actor=actor,
            action="auth.second_factor_reset",
            reason=reason,
            data={"devices_removed": apps + codes},
        )
    return apps + codes
