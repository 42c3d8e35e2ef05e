"""django-axes' and django-otp's TOTP apps under the names their admin pages go by."""

from axes.apps import AppConfig as AxesConfig
from django_otp.plugins.otp_totp.apps import DefaultConfig as TOTPConfig


class LockoutsConfig(AxesConfig):
    verbose_name = "Sign-in lockouts (platform staff)"


class SecondFactorsConfig(TOTPConfig):
    verbose_name = "Second factors (platform staff)"
