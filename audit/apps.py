from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self):
        from axes.signals import user_locked_out
        from django.contrib.auth import signals

        from audit import receivers

        # Sign-in, failed sign-in and sign-out, wherever they happen, are audit events.
        signals.user_logged_in.connect(
            receivers.on_user_logged_in, dispatch_uid="audit.on_user_logged_in"
        )
        signals.user_logged_out.connect(
            receivers.on_user_logged_out, dispatch_uid="audit.on_user_logged_out"
        )
        signals.user_login_failed.connect(
            receivers.on_user_login_failed, dispatch_uid="audit.on_user_login_failed"
        )
        # django-axes: a name or an address locked out after repeated failures.
        user_locked_out.connect(receivers.on_user_locked_out, dispatch_uid="audit.on_locked_out")
