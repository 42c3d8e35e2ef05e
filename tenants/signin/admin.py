"""Platform staff's pages of sign-in protection: lockouts (lift one) and second factors
(reset one). Nobody else sees them: they name people of every tenant. The libraries' own
admins (axes' attempts and logs, django-otp's devices with their secrets) are not used."""

from __future__ import annotations

from axes.models import AccessAttempt
from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.utils.html import format_html
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.services import Actor
from tenants.admin_scoping import confirm_with_reason
from tenants.scoping import is_platform_staff
from tenants.signin.lockouts import attempts_with_totals, is_locking, lift_lockout
from tenants.signin.second_factor import reset_second_factor

for model in (AccessAttempt, TOTPDevice, StaticDevice):
    if admin.site.is_registered(model):
        admin.site.unregister(model)


class PlatformOnlyAdmin(admin.ModelAdmin):
    """Read-only for platform staff, closed to everyone else (superusers included); what
    changes, changes through an action."""

    def has_module_permission(self, request):
        return is_platform_staff(request.user)

    def has_view_permission(self, request, obj=None):
        return is_platform_staff(request.user)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_platform_permission(self, request, obj=None):
        """For admin actions declared with permissions=["platform"]."""
        return is_platform_staff(request.user)


@admin.register(AccessAttempt)
class LockoutAdmin(PlatformOnlyAdmin):
    """Failed sign-ins by name and address (inside the cool-off time), the lockouts they
    make, and lifting one."""

    actions = ("lift_lockouts",)
    list_display = (
        "username",
        "ip_address",
        "state",
        "failures_since_start",
        "username_failures",
        "address_failures",
        "attempt_time",
    )
    search_fields = ("username", "ip_address")
    ordering = ("-attempt_time",)
    fields = ("username", "ip_address", "user_agent", "path_info", "failures_since_start")
    readonly_fields = fields

    def get_queryset(self, request):
        return attempts_with_totals()

    @admin.display(description="state")
    def state(self, attempt):
        if is_locking(attempt):
            return format_html('<span class="desk-badge failed">{}</span>', "Locked out")
        return "—"

    @admin.display(description="failures of the name")
    def username_failures(self, attempt):
        return attempt.username_failures

    @admin.display(description="failures from the address")
    def address_failures(self, attempt):
        return attempt.address_failures

    @admin.action(
        description="Lift the lockout of the selected names and addresses", permissions=["platform"]
    )
    def lift_lockouts(self, request, queryset):
        actor = Actor.for_user(request.user)

        def lift(attempt, reason):
            lifted = lift_lockout(attempt=attempt, actor=actor, reason=reason)
            self.message_user(
                request,
                f"Lifted the lockout of {lifted.username or '—'} and {lifted.ip_address or '—'} "
                f"({lifted.attempts} recorded attempts erased).",
                messages.SUCCESS,
            )

        return confirm_with_reason(
            self,
            request,
            queryset,
            action="lift_lockouts",
            title="Lift lockouts",
            question="Lift the lockout of these names and addresses? Their recorded failures "
            "are erased; the lifting is on the audit trail.",
            label="Why (a ticket, who asked)",
            submit="Lift the lockouts",
            apply=lift,
        )


@admin.register(TOTPDevice)
class SecondFactorAdmin(PlatformOnlyAdmin):
    """People's authenticator apps (never their secrets), and resetting one's second factor."""

    actions = ("reset_second_factors",)
    list_display = ("person", "name", "confirmed", "recovery_codes", "created_at", "last_used_at")
    list_filter = ("confirmed",)
    list_select_related = ("user",)
    search_fields = ("user__username",)
    ordering = ("user__username",)
    fields = ("person", "name", "confirmed", "created_at", "last_used_at")
    readonly_fields = fields

    def get_queryset(self, request):
        codes = (
            StaticToken.objects.filter(device__user=OuterRef("user"), device__confirmed=True)
            .order_by()
            .values("device__user")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(recovery_codes_left=Subquery(codes, output_field=IntegerField()))
        )

    @admin.display(description="person", ordering="user__username")
    def person(self, device):
        return device.user.get_username()

    @admin.display(description="recovery codes left")
    def recovery_codes(self, device):
        return device.recovery_codes_left or 0

    @admin.action(
        description="Reset the second factor of the selected people", permissions=["platform"]
    )
    def reset_second_factors(self, request, queryset):
        actor = Actor.for_user(request.user)
        done = set()

        def reset(device, reason):
            if device.user_id in done:
                return
            done.add(device.user_id)
            reset_second_factor(user=device.user, actor=actor, reason=reason)
            self.message_user(
                request,
                f"Reset the second factor of {device.user.get_username()}: they set it up "
                "again at their next sign-in.",
                messages.SUCCESS,
            )

        return confirm_with_reason(
            self,
            request,
            queryset.select_related("user"),
            action="reset_second_factors",
            title="Reset second factors",
            question="Remove these people's authenticator apps and recovery codes? They set "
            "up a new second factor at their next sign-in; the reset is on the audit trail.",
            label="Why (a ticket: lost phone, new phone)",
            submit="Reset",
            apply=reset,
        )
