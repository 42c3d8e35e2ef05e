"""Sign-in lockout (django-axes, tenants/signin/lockouts.py): repeated failures lock the name
and the address, the right password is then refused, a forged X-Forwarded-For changes
nothing, and only platform staff see and lift lockouts, on the record."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import Actor
from audit.verification import verify_chain
from desk.demo import DEMO_PASSWORD
from tenants.services import grant_membership, grant_platform_staff
from tests.tenants.signin_support import (
    WRONG_PASSWORD,
    events,
    sign_in,
    signed_in_user_id,
)

User = get_user_model()
LOCKOUTS_URL = reverse("admin:axes_accessattempt_changelist")
REASON = "Ticket 4711: Olivia mistyped after a password change"


@pytest.fixture(autouse=True)
def quick_hashing(settings):
    """Many sign-ins: names nobody has are checked against a quick hash (the demo's
    passwords keep theirs)."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]


@pytest.fixture
def staff(db):
    user = User.objects.create_user("sre", password="pw-sre-12345", is_staff=True)
    grant_platform_staff(user=user, actor=Actor.system("tests"))
    return user


@pytest.fixture
def auditor(harbor):
    user = User.objects.create_user("auditor.harbor", password="pw-auditor-1", is_staff=True)
    grant_membership(user=user, tenant=harbor, kind="auditor", actor=Actor.system("tests"))
    return user


def attempts() -> list[tuple]:
    return sorted(
        AccessAttempt.objects.values_list("username", "ip_address", "failures_since_start")
    )


def lock_out_ops(client, address="198.51.100.7"):
    for _ in range(5):
        sign_in(client, "ops", WRONG_PASSWORD, REMOTE_ADDR=address)


class TestLockout:
    def test_thirty_wrong_passwords_lock_the_account_and_the_right_one_then_fails(
        self, client, users, harbor, northwind
    ):
        answers = [sign_in(client, "ops", WRONG_PASSWORD).status_code for _ in range(30)]

        right = sign_in(client, "ops", DEMO_PASSWORD)

        assert answers[:4] == [200] * 4  # the form again, with its error
        assert answers[4:] == [429] * 26  # the fifth failure locks
        assert right.status_code == 429
        assert "Sign-in locked" in right.content.decode()
        assert "Even the right password is refused" in right.content.decode()
        assert signed_in_user_id(client) is None
        assert events("auth.signed_in") == []
        assert client.get("/admin/").status_code == 302  # still the sign-in page
        # The lockout is on Olivia's tenants' chains once; every refusal is recorded.
        locked = events("auth.locked_out")
        assert [e.tenant_id for e in locked] == sorted([harbor.pk, northwind.pk])
        assert {(e.data["username"], e.data["ip_address"], e.data["failures"]) for e in locked} == {
            ("ops", "127.0.0.1", 5)
        }
        reasons = [
            e.data["reason"] for e in events("auth.sign_in_failed") if e.tenant_id == harbor.pk
        ]
        assert reasons == ["wrong_password"] * 5 + ["locked_out"] * 26
        assert verify_chain(tenant_id=harbor.pk) == []

    def test_a_10_kb_name_is_counted_not_a_server_error(self, client, users):
        # Axes keeps names in 255 characters: the name is counted as the trail records it
        # (cut to the longest an account can have), and locks the address like any other.
        answers = [
            sign_in(client, "ops" + "x" * 10_000, WRONG_PASSWORD).status_code for _ in range(5)
        ]

        assert answers == [200] * 4 + [429]
        assert len(AccessAttempt.objects.get().username) == 150
        assert sign_in(client, "ops", DEMO_PASSWORD).status_code == 429  # the address is locked

    def test_a_name_with_a_nul_byte_is_refused_by_the_form_before_any_check(self, client, users):
        answers = [sign_in(client, "ops\x00admin", WRONG_PASSWORD).status_code for _ in range(5)]

        assert answers == [200] * 5  # the form's own error: no password was checked
        assert not AccessAttempt.objects.exists()

    def test_a_locked_out_name_is_locked_from_every_address(self, client, users):
        for number in range(5):
            sign_in(client, "ops", WRONG_PASSWORD, REMOTE_ADDR=f"198.51.100.{number + 1}")

        right = sign_in(client, "ops", DEMO_PASSWORD, REMOTE_ADDR="203.0.113.50")

        assert right.status_code == 429
        assert signed_in_user_id(client) is None

    def test_failures_across_names_lock_the_address_and_not_the_names(self, client, users):
        for name in ("reviewer.harbor", "reviewer.northwind", "partner.northwind", "x", "y"):
            sign_in(client, name, WRONG_PASSWORD, REMOTE_ADDR="198.51.100.9")

        from_there = sign_in(client, "ops", DEMO_PASSWORD, REMOTE_ADDR="198.51.100.9")
        from_elsewhere = sign_in(client, "ops", DEMO_PASSWORD, REMOTE_ADDR="203.0.113.50")

        assert from_there.status_code == 429
        assert from_elsewhere.status_code == 302
        assert signed_in_user_id(client) == str(users["ops"].pk)

    def test_a_spoofed_x_forwarded_for_does_not_dodge_the_ip_lock(self, client, users, settings):
        settings.AUDIT_TRUSTED_PROXIES = frozenset()
        names = ("reviewer.harbor", "reviewer.northwind", "partner.northwind", "x", "y")
        for number, name in enumerate(names):
            forged = {"HTTP_X_FORWARDED_FOR": f"192.0.2.{number + 1}"}
            sign_in(client, name, WRONG_PASSWORD, REMOTE_ADDR="198.51.100.9", **forged)

        right = sign_in(
            client,
            "ops",
            DEMO_PASSWORD,
            REMOTE_ADDR="198.51.100.9",
            HTTP_X_FORWARDED_FOR="192.0.2.200",
        )

        assert right.status_code == 429
        assert signed_in_user_id(client) is None
        assert {ip for _, ip, _ in attempts()} == {"198.51.100.9"}

    def test_behind_a_trusted_proxy_a_forged_first_hop_does_not_dodge_the_ip_lock(
        self, client, users, settings
    ):
        settings.AUDIT_TRUSTED_PROXIES = frozenset({"10.0.0.2"})
        names = ("reviewer.harbor", "reviewer.northwind", "partner.northwind", "x", "y")
        for number, name in enumerate(names):
            # The proxy appends the address it saw; the client forged what comes before.
            forged = {"HTTP_X_FORWARDED_FOR": f"192.0.2.{number + 1}, 203.0.113.66"}
            sign_in(client, name, WRONG_PASSWORD, REMOTE_ADDR="10.0.0.2", **forged)

        right = sign_in(
            client,
            "ops",
            DEMO_PASSWORD,
            REMOTE_ADDR="10.0.0.2",
            HTTP_X_FORWARDED_FOR="192.0.2.99, 203.0.113.66",
        )
        another_client = sign_in(
            client,
            "ops",
            DEMO_PASSWORD,
            REMOTE_ADDR="10.0.0.2",
            HTTP_X_FORWARDED_FOR="203.0.113.67",
        )

        assert right.status_code == 429
        assert another_client.status_code == 302
        assert {ip for _, ip, _ in attempts()} == {"203.0.113.66"}


class TestLockoutAdmin:
    def test_lockouts_are_visible_only_to_platform_staff(
        self, client, users, staff, auditor, superuser
    ):
        lock_out_ops(client)

        seen = {}
        for user in (users["ops"], users["reviewer.harbor"], auditor, superuser, staff):
            client.force_login(user)
            response = client.get(LOCKOUTS_URL)
            index = client.get(reverse("admin:index")).content.decode()
            seen[user.username] = (response.status_code, "Access attempts" in index)

        assert seen == {
            "ops": (403, False),
            "reviewer.harbor": (403, False),
            "auditor.harbor": (403, False),
            "platform": (403, False),  # a superuser who is not platform staff
            "sre": (200, True),
        }
        client.force_login(staff)
        page = client.get(LOCKOUTS_URL).content.decode()
        assert "ops" in page and "198.51.100.7" in page and "Locked out" in page

    def test_platform_staff_lift_a_lockout_and_it_is_audited(
        self, client, users, staff, harbor, northwind
    ):
        lock_out_ops(client)
        attempt = AccessAttempt.objects.get(username="ops")
        client.force_login(staff)

        confirm = client.post(
            LOCKOUTS_URL, {"action": "lift_lockouts", ACTION_CHECKBOX_NAME: [attempt.pk]}
        )
        lifted = client.post(
            LOCKOUTS_URL,
            {
                "action": "lift_lockouts",
                ACTION_CHECKBOX_NAME: [attempt.pk],
                "confirm": "yes",
                "reason": REASON,
            },
        )

        assert confirm.status_code == 200 and "Why" in confirm.content.decode()
        assert lifted.status_code == 302
        assert attempts() == []
        events_lifted = events("auth.lockout_lifted")
        assert [e.tenant_id for e in events_lifted] == sorted([harbor.pk, northwind.pk])
        assert {(e.actor_user, e.reason, e.data["username"]) for e in events_lifted} == {
            (staff, REASON, "ops")
        }
        client.logout()
        assert sign_in(client, "ops", DEMO_PASSWORD, REMOTE_ADDR="198.51.100.7").status_code == 302

    @pytest.mark.parametrize("who", ["ops", "superuser"])
    def test_an_operator_or_a_superuser_cannot_lift_a_lockout(self, client, users, superuser, who):
        lock_out_ops(client)
        attempt = AccessAttempt.objects.get(username="ops")
        before = attempts()
        client.force_login(users["ops"] if who == "ops" else superuser)

        response = client.post(
            LOCKOUTS_URL,
            {
                "action": "lift_lockouts",
                ACTION_CHECKBOX_NAME: [attempt.pk],
                "confirm": "yes",
                "reason": "let me in",
            },
        )

        assert response.status_code == 403
        assert attempts() == before
        assert not AuditEvent.objects.filter(action="auth.lockout_lifted").exists()
        client.logout()
        assert sign_in(client, "ops", DEMO_PASSWORD, REMOTE_ADDR="198.51.100.7").status_code == 429

    def test_lifting_without_a_reason_lifts_nothing(self, client, users, staff):
        lock_out_ops(client)
        attempt = AccessAttempt.objects.get(username="ops")
        before = attempts()
        client.force_login(staff)

        response = client.post(
            LOCKOUTS_URL,
            {"action": "lift_lockouts", ACTION_CHECKBOX_NAME: [attempt.pk], "confirm": "yes"},
        )

        assert response.status_code == 200  # the confirmation page again, with its error
        assert attempts() == before
        assert not AuditEvent.objects.filter(action="auth.lockout_lifted").exists()

    def test_the_lockout_page_costs_the_same_whatever_the_number_of_rows(
        self, client, users, staff
    ):
        lock_out_ops(client)
        client.force_login(staff)
        with CaptureQueriesContext(connection) as few:
            client.get(LOCKOUTS_URL)
        for number in range(10):
            sign_in(
                client, f"name{number}", WRONG_PASSWORD, REMOTE_ADDR=f"198.51.100.{number + 20}"
            )

        with CaptureQueriesContext(connection) as many:
            page = client.get(LOCKOUTS_URL)

        assert "name9" in page.content.decode()
        assert len(many.captured_queries) == len(few.captured_queries)


def test_the_libraries_own_admin_pages_are_not_installed():
    from django.contrib import admin

    registered = {model._meta.label_lower for model in admin.site._registry}

    assert {label for label in registered if label.startswith(("axes.", "otp_"))} == {
        "axes.accessattempt",  # tenants/signin/admin.py: platform staff only
        "otp_totp.totpdevice",  # likewise, without the secret
    }
