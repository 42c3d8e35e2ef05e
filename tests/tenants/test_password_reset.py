"""A tenant member's password is theirs: setting it for them (to sign in as them and approve)
is refused to anyone else, superusers included, unless they hold an open break-glass grant on
each of the member's tenants. Each attack fails, changes nothing, and is on the tenant's
record; with a grant the reset happens and is recorded naming the grant."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command, get_commands
from django.core.management.base import CommandError
from django.db.models import F
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from audit.services import Actor
from audit.verification import verify_chain
from desk.demo import DEMO_PASSWORD
from tenants.models import BreakGlassGrant
from tenants.services import close_break_glass, grant_platform_staff, open_break_glass

User = get_user_model()
NEW_PASSWORD = "Taken-over-9-times"
REASON = "Ticket 4522: reviewer locked out before a filing deadline"


def password_url(user) -> str:
    return reverse("admin:auth_user_password_change", args=[user.pk])


def reset_form(password: str = NEW_PASSWORD) -> dict:
    return {"password1": password, "password2": password, "usable_password": "true"}


def new_events(seen: frozenset[int]) -> list[AuditEvent]:
    """Events written since `seen` was taken: by tenant (platform first, then by slug), each
    tenant's in its chain's order. Ids are random, so they mark nothing."""
    events = AuditEvent.objects.exclude(pk__in=seen)
    return list(events.order_by(F("tenant__slug").asc(nulls_first=True), "seq"))


def seen_events() -> frozenset[int]:
    return frozenset(AuditEvent.objects.values_list("pk", flat=True))


def hash_of(user) -> str:
    return User.objects.get(pk=user.pk).password


def can_sign_in(client, user, password: str) -> bool:
    # django-axes checks every sign-in against its request (the address it comes from).
    request = RequestFactory().post("/admin/login/", REMOTE_ADDR="127.0.0.1")
    return client.login(request=request, username=user.get_username(), password=password)


@pytest.fixture
def reviewer(users):
    return users["reviewer.harbor"]


@pytest.fixture
def staff(db):
    """Platform staff who may change accounts in the admin (Django's user permissions)."""
    user = User.objects.create_user("sre", password="pw-sre-12345", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="auth", codename__in=["view_user", "change_user"]
        )
    )
    grant_platform_staff(user=user, actor=Actor.system("tests"))
    return User.objects.get(pk=user.pk)


class TestAdminResets:
    def test_a_superuser_cannot_reset_a_reviewers_password_to_sign_in_as_them(
        self, client, superuser, reviewer, harbor
    ):
        before = hash_of(reviewer)
        client.force_login(superuser)
        seen = seen_events()

        response = client.post(
            password_url(reviewer),
            reset_form(),
            headers={"User-Agent": "curl/8.5", "X-Request-ID": "takeover-0001"},
            REMOTE_ADDR="203.0.113.7",
        )

        events = new_events(seen)
        assert response.status_code == 200
        assert response.context["adminForm"].form.non_field_errors() == [
            "reviewer.harbor is a member of a client tenant: only they may set their password, "
            "or platform staff holding an open break-glass grant on each of their tenants. "
            "Nothing was changed; the attempt is on the tenant's audit trail."
        ]
        assert hash_of(reviewer) == before
        assert not can_sign_in(client, reviewer, NEW_PASSWORD)
        assert [(e.tenant_id, e.action, e.actor_user, e.object_id) for e in events] == [
            (harbor.pk, "auth.password_reset_refused", superuser, str(reviewer.pk))
        ]
        assert events[0].data == {"user": "reviewer.harbor", "via": "admin", "grant": None}
        assert (events[0].request_id, events[0].client_ip, events[0].user_agent) == (
            "takeover-0001",
            "203.0.113.7",
            "curl/8.5",
        )
        assert NEW_PASSWORD not in str(events[0].data)
        assert verify_chain(tenant_id=harbor.pk) == []

    def test_a_superuser_cannot_switch_off_a_reviewers_password_either(
        self, client, superuser, reviewer, harbor
    ):
        before = hash_of(reviewer)
        client.force_login(superuser)
        seen = seen_events()

        response = client.post(
            password_url(reviewer), {"usable_password": "false", "unset-password": "1"}
        )

        assert response.status_code == 200
        assert response.context["adminForm"].form.non_field_errors()
        assert hash_of(reviewer) == before
        assert [(e.tenant_id, e.action) for e in new_events(seen)] == [
            (harbor.pk, "auth.password_reset_refused")
        ]

    def test_platform_staff_without_a_grant_cannot_reset_a_reviewers_password(
        self, client, staff, reviewer, harbor
    ):
        before = hash_of(reviewer)
        client.force_login(staff)
        seen = seen_events()

        response = client.post(password_url(reviewer), reset_form())

        assert response.status_code == 200
        assert response.context["adminForm"].form.non_field_errors()
        assert hash_of(reviewer) == before
        assert [(e.tenant_id, e.action, e.actor_user) for e in new_events(seen)] == [
            (harbor.pk, "auth.password_reset_refused", staff)
        ]

    @pytest.mark.parametrize("state", ["closed", "expired", "for another tenant"])
    def test_a_grant_that_is_not_open_on_the_tenant_does_not_reset(
        self, client, staff, reviewer, harbor, northwind, state
    ):
        grant = open_break_glass(
            user=staff, tenant=northwind if state == "for another tenant" else harbor, reason=REASON
        )
        if state == "closed":
            close_break_glass(grant=grant, actor=Actor.for_user(staff))
        if state == "expired":
            an_hour_ago = timezone.now() - timedelta(hours=1)
            BreakGlassGrant.objects.filter(pk=grant.pk).update(
                started_at=an_hour_ago, expires_at=an_hour_ago + timedelta(minutes=30)
            )
        before = hash_of(reviewer)
        client.force_login(staff)
        seen = seen_events()

        response = client.post(password_url(reviewer), reset_form())

        refusals = [e for e in new_events(seen) if e.action.startswith("auth.password")]
        assert response.status_code == 200
        assert response.context["adminForm"].form.non_field_errors()
        assert hash_of(reviewer) == before
        assert [(e.tenant_id, e.action, e.data["grant"]) for e in refusals] == [
            (harbor.pk, "auth.password_reset_refused", None)
        ]

    def test_a_grant_on_one_of_a_members_tenants_is_not_enough(
        self, client, staff, users, harbor, northwind
    ):
        ops = users["ops"]  # operator and reviewer of both tenants
        grant = open_break_glass(user=staff, tenant=harbor, reason=REASON)
        before = hash_of(ops)
        client.force_login(staff)
        seen = seen_events()

        response = client.post(password_url(ops), reset_form())

        refusals = [e for e in new_events(seen) if e.action.startswith("auth.password")]
        assert response.status_code == 200
        assert hash_of(ops) == before
        assert [(e.tenant_id, e.action, e.data["grant"]) for e in refusals] == [
            (harbor.pk, "auth.password_reset_refused", grant.pk),
            (northwind.pk, "auth.password_reset_refused", None),
        ]

    def test_with_an_open_grant_platform_staff_reset_it_on_the_record(
        self, client, staff, reviewer, harbor
    ):
        grant = open_break_glass(user=staff, tenant=harbor, reason=REASON)
        client.force_login(staff)
        seen = seen_events()

        response = client.post(
            password_url(reviewer), reset_form(), headers={"X-Request-ID": "ticket-4522-reset"}
        )

        resets = [e for e in new_events(seen) if e.action.startswith("auth.password")]
        assert response.status_code == 302
        assert [e.request_id for e in resets] == ["ticket-4522-reset"]
        assert [(e.tenant_id, e.action, e.actor_user, e.reason) for e in resets] == [
            (harbor.pk, "auth.password_reset", staff, REASON)
        ]
        assert resets[0].data == {
            "user": "reviewer.harbor",
            "via": "admin",
            "grant": grant.pk,
            "grant_holder": "sre",
            "usable": True,
        }
        assert can_sign_in(client, reviewer, NEW_PASSWORD)
        assert verify_chain(tenant_id=harbor.pk) == []

    def test_a_superuser_sets_the_password_of_someone_in_no_tenant_on_the_platform_record(
        self, client, superuser, staff
    ):
        client.force_login(superuser)
        seen = seen_events()

        response = client.post(password_url(staff), reset_form())

        assert response.status_code == 302
        assert [(e.tenant_id, e.action, e.actor_user) for e in new_events(seen)] == [
            (None, "auth.password_reset", superuser)
        ]
        assert can_sign_in(client, staff, NEW_PASSWORD)


class TestOwnPassword:
    def test_a_reviewer_changes_their_own_password_on_the_record(self, client, reviewer, harbor):
        client.force_login(reviewer)
        seen = seen_events()

        response = client.post(
            reverse("admin:password_change"),
            {
                "old_password": DEMO_PASSWORD,
                "new_password1": NEW_PASSWORD,
                "new_password2": NEW_PASSWORD,
            },
        )

        events = new_events(seen)
        assert response.status_code == 302
        assert response.url == reverse("admin:password_change_done")
        assert client.get(reverse("admin:index")).status_code == 200  # still signed in
        assert [(e.tenant_id, e.action, e.actor_user) for e in events] == [
            (harbor.pk, "auth.password_changed", reviewer)
        ]
        assert events[0].data == {"user": "reviewer.harbor", "usable": True}
        assert can_sign_in(client, reviewer, NEW_PASSWORD)

    def test_a_wrong_old_password_changes_nothing(self, client, reviewer):
        before = hash_of(reviewer)
        client.force_login(reviewer)
        seen = seen_events()

        response = client.post(
            reverse("admin:password_change"),
            {
                "old_password": "not-it-at-all",
                "new_password1": NEW_PASSWORD,
                "new_password2": NEW_PASSWORD,
            },
        )

        assert response.status_code == 200
        assert "old_password" in response.context["form"].errors
        assert hash_of(reviewer) == before
        assert new_events(seen) == []

    def test_a_superuser_setting_their_own_password_in_the_user_admin_is_a_change(
        self, client, superuser
    ):
        client.force_login(superuser)
        seen = seen_events()

        response = client.post(password_url(superuser), reset_form())

        assert response.status_code == 302
        assert [(e.tenant_id, e.action) for e in new_events(seen)] == [
            (None, "auth.password_changed")
        ]
        assert client.get(reverse("admin:index")).status_code == 200


class TestChangepasswordCommand:
    @pytest.fixture
    def typed(self, monkeypatch):
        monkeypatch.setattr("getpass.getpass", lambda prompt="": NEW_PASSWORD)

    def run(self, *args) -> tuple[int, str]:
        """The command's exit status (run_from_argv exits with a CommandError's returncode)
        and its error message."""
        try:
            call_command("changepassword", *args)
        except CommandError as error:
            return error.returncode, str(error)
        return 0, ""

    def test_the_command_is_ours(self):
        assert get_commands()["changepassword"] == "tenants"

    def test_resetting_a_reviewers_password_from_the_shell_is_refused(
        self, typed, reviewer, harbor
    ):
        before, seen = hash_of(reviewer), seen_events()

        status, message = self.run("reviewer.harbor")

        events = new_events(seen)
        assert status == 1
        assert message.endswith("Give --break-glass GRANT_ID for each of their tenants.")
        assert hash_of(reviewer) == before
        assert [(e.tenant_id, e.action, e.actor_label) for e in events] == [
            (harbor.pk, "auth.password_reset_refused", "command:changepassword")
        ]
        assert events[0].data == {"user": "reviewer.harbor", "via": "command", "grant": None}

    def test_a_closed_grant_does_not_open_the_command(self, typed, staff, reviewer, harbor):
        grant = open_break_glass(user=staff, tenant=harbor, reason=REASON)
        close_break_glass(grant=grant, actor=Actor.for_user(staff))
        before, seen = hash_of(reviewer), seen_events()

        status, _ = self.run("reviewer.harbor", "--break-glass", str(grant.pk))

        assert status == 1
        assert hash_of(reviewer) == before
        assert [e.action for e in new_events(seen)] == ["auth.password_reset_refused"]

    def test_with_an_open_grant_the_command_resets_it_naming_the_grant(
        self, typed, staff, reviewer, harbor, client
    ):
        grant = open_break_glass(user=staff, tenant=harbor, reason=REASON)
        seen = seen_events()

        status, _ = self.run("reviewer.harbor", "--break-glass", str(grant.pk))

        events = new_events(seen)
        assert status == 0
        assert [(e.tenant_id, e.action, e.reason) for e in events] == [
            (harbor.pk, "auth.password_reset", REASON)
        ]
        assert events[0].data["grant"] == grant.pk
        assert events[0].data["grant_holder"] == "sre"
        assert can_sign_in(client, reviewer, NEW_PASSWORD)

    def test_someone_in_no_tenant_needs_no_grant(self, typed, staff, client):
        seen = seen_events()

        status, _ = self.run("sre")

        assert status == 0
        assert [(e.tenant_id, e.action) for e in new_events(seen)] == [
            (None, "auth.password_reset")
        ]
        assert can_sign_in(client, staff, NEW_PASSWORD)
