"""The second factor (django-otp, tenants/signin): without a verified device a signed-in
person reaches no admin page and no reviewer page; enrolment shows a QR code and recovery
codes once; a replayed code, a reused recovery code and wrong codes fail (and count towards
the lockout); platform staff reset a lost second factor, on the record."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.urls import NoReverseMatch, reverse
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from approvals.models import ApprovalRequest, Decision
from audit.models import AuditEvent
from audit.services import Actor
from desk.demo import DEMO_PASSWORD
from tenants.services import grant_membership, grant_platform_staff
from tenants.signin.second_factor import secret_text
from tests.admin import test_tenant_sweep as sweep
from tests.conftest import force_login_password_only, pass_second_factor
from tests.tenants.signin_support import (
    SETUP_URL,
    VERIFY_URL,
    admin_changelists,
    code_of,
    events,
    sign_in,
    signed_in_user_id,
)

User = get_user_model()
DEVICES_URL = reverse("admin:otp_totp_totpdevice_changelist")
REASON = "Ticket 4712: Hana's phone was stolen"


@pytest.fixture(autouse=True)
def quick_hashing(settings):
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


@pytest.fixture
def enrolled(users):
    """Hana (reviewer of harbor) with an authenticator app and recovery codes."""
    user = users["reviewer.harbor"]
    device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=True)
    codes = StaticDevice.objects.create(user=user, name="Recovery codes", confirmed=True)
    for token in ("aaaabbbb", "ccccdddd"):
        StaticToken.objects.create(device=codes, token=token)
    return user, device


def is_verified(client) -> bool:
    return client.get(reverse("admin:index")).status_code == 200


def test_the_requirement_is_on_in_tests_as_in_production():
    assert settings.DESK_REQUIRE_2FA is True


@pytest.mark.parametrize(
    ("environment", "required"),
    [
        ({}, "True"),
        ({"DESK_DEBUG": "1"}, "False"),
        ({"DESK_DEBUG": "1", "DESK_REQUIRE_2FA": "1"}, "True"),
    ],
)
def test_the_requirement_is_on_unless_debug_turns_it_off(environment, required, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DESK_DEBUG", "DESK_REQUIRE_2FA")}
    env.update(environment, DESK_VAR_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", "import desk.settings as s; print(s.DESK_REQUIRE_2FA)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=settings.BASE_DIR,
    )

    assert result.stdout.strip() == required


def test_production_refuses_to_start_with_the_second_factor_turned_off(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DESK_DEBUG", "DESK_REQUIRE_2FA")}
    env.update(DESK_REQUIRE_2FA="0", DESK_VAR_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", "import desk.settings"],
        env=env,
        capture_output=True,
        text=True,
        cwd=settings.BASE_DIR,
    )

    assert result.returncode == 1
    assert "DESK_REQUIRE_2FA is off but DESK_DEBUG is not" in result.stderr


class TestNothingWithoutTheSecondFactor:
    def admin_pages(self) -> list[str]:
        pages = [reverse("admin:index"), reverse("admin:password_change"), *admin_changelists()]
        pages += [
            reverse(f"admin:{m._meta.app_label}_{m._meta.model_name}_add") for m in sweep.REGISTERED
        ]
        for name in sorted(sweep.admin_routes_outside_the_admin_site()):
            if name.startswith("signin:"):
                continue  # the second factor's own pages
            try:
                pages.append(reverse(name))
            except NoReverseMatch:
                continue  # needs an object: the report's form page (no object) is enough
        return pages

    @pytest.mark.parametrize("who", ["ops", "reviewer.harbor", "auditor", "staff"])
    def test_a_staff_user_without_a_second_factor_reaches_no_admin_page(
        self, client, users, auditor, staff, harbor, who
    ):
        user = {"auditor": auditor, "staff": staff}.get(who) or users[who]
        force_login_password_only(client, user)
        before = AuditEvent.objects.count()

        refused = {}
        for page in self.admin_pages():
            for response in (client.get(page), client.post(page, {"name": "x", "post": "yes"})):
                if response.status_code != 302 or not response["Location"].startswith(SETUP_URL):
                    refused[page] = response.status_code

        assert refused == {}
        assert AuditEvent.objects.count() == before  # nothing ran
        assert not TOTPDevice.objects.filter(user=user, confirmed=True).exists()

    def test_with_a_device_but_no_code_every_page_sends_to_verify(self, client, enrolled):
        user, _ = enrolled
        force_login_password_only(client, user)

        answers = {client.get(page)["Location"].split("?")[0] for page in admin_changelists()}

        assert answers == {VERIFY_URL}

    def test_the_test_helper_passes_the_second_factor_as_django_otp_does(self, client, users):
        force_login_password_only(client, users["ops"])
        assert not is_verified(client)

        pass_second_factor(client, users["ops"])

        assert is_verified(client)

    def test_an_approval_link_decides_nothing_for_a_session_without_the_second_factor(
        self, client, users, parked_intake
    ):
        from django.core import mail

        from approvals.services import notify_reviewers

        request = ApprovalRequest.objects.get(run=parked_intake)
        ApprovalRequest.objects.filter(pk=request.pk).update(
            rule={**request.rule, "email_links": True}
        )
        notify_reviewers(request_id=request.pk)
        body = next(m.body for m in mail.outbox if m.to == ["reviewer.harbor@agentdesk.example"])
        path = re.search(r"(/approvals/link/[A-Za-z0-9_-]{43}/)", body).group(1)
        force_login_password_only(client, users["ops"])

        response = client.post(path, {"comment": "via a half-signed-in session"})

        assert response.status_code == 302 and response["Location"].startswith(SETUP_URL)
        assert not Decision.objects.filter(request=request).exists()


class TestEnrolment:
    def test_first_sign_in_enrols_with_a_qr_code_and_recovery_codes_shown_once(
        self, client, users, harbor
    ):
        user = users["reviewer.harbor"]
        signed = sign_in(client, "reviewer.harbor", DEMO_PASSWORD)
        to_setup = client.get(signed["Location"])
        page = client.get(to_setup["Location"])
        device = TOTPDevice.objects.get(user=user)

        done = client.post(SETUP_URL, {"code": code_of(device), "next": "/admin/"})

        assert to_setup["Location"].startswith(SETUP_URL)
        content = page.content.decode()
        assert "<svg" in content and "http" not in content.split("<svg", 1)[1].split("</svg>")[
            0
        ].replace("http://www.w3.org/2000/svg", "")
        assert secret_text(device) in content
        codes = re.findall(r"<li><code>([a-z2-7]{8})</code></li>", done.content.decode())
        assert done.status_code == 200 and len(codes) == settings.DESK_RECOVERY_CODES
        assert set(codes) == set(
            StaticToken.objects.filter(device__user=user).values_list("token", flat=True)
        )
        device.refresh_from_db()
        assert device.confirmed
        assert is_verified(client)
        assert client.get(SETUP_URL)["Location"].startswith(VERIFY_URL)  # not shown again
        enrolled = events("auth.second_factor_enrolled")
        assert [(e.tenant_id, e.actor_user, e.data["recovery_codes"]) for e in enrolled] == [
            (harbor.pk, user, settings.DESK_RECOVERY_CODES)
        ]

    def test_a_wrong_code_confirms_nothing_and_is_recorded(self, client, users):
        user = users["reviewer.harbor"]
        force_login_password_only(client, user)
        client.get(SETUP_URL)

        response = client.post(SETUP_URL, {"code": "000000"})

        assert response.status_code == 400
        assert not TOTPDevice.objects.filter(user=user, confirmed=True).exists()
        assert not StaticDevice.objects.filter(user=user).exists()
        assert [e.data["during"] for e in events("auth.second_factor_failed")] == ["enrolment"]

    def test_a_password_only_session_cannot_replace_an_enrolled_device(self, client, enrolled):
        user, device = enrolled
        force_login_password_only(client, user)

        page = client.get(SETUP_URL)
        posted = client.post(SETUP_URL, {"code": "123456"})

        assert page["Location"].startswith(VERIFY_URL)
        assert posted["Location"].startswith(VERIFY_URL)
        assert list(TOTPDevice.objects.filter(user=user)) == [device]


class TestVerification:
    def test_the_right_code_opens_the_admin(self, client, enrolled, harbor):
        user, device = enrolled
        force_login_password_only(client, user)

        response = client.post(VERIFY_URL, {"code": code_of(device), "next": "/admin/"})

        assert response.status_code == 302 and response["Location"] == "/admin/"
        assert is_verified(client)
        assert [e.actor_user for e in events("auth.second_factor_verified")] == [user]

    def test_a_replayed_totp_code_is_refused(self, client, enrolled):
        user, device = enrolled
        force_login_password_only(client, user)
        code = code_of(device)
        client.post(VERIFY_URL, {"code": code})
        client.post(reverse("admin:logout"))
        force_login_password_only(client, user)

        replayed = client.post(VERIFY_URL, {"code": code})

        assert replayed.status_code == 400
        assert not is_verified(client)
        assert [e.data["during"] for e in events("auth.second_factor_failed")] == ["sign_in"]

    def test_a_used_recovery_code_cannot_be_reused(self, client, enrolled):
        user, _ = enrolled
        force_login_password_only(client, user)
        first = client.post(VERIFY_URL, {"code": "AAAA-BBBB"})
        client.post(reverse("admin:logout"))
        force_login_password_only(client, user)

        again = client.post(VERIFY_URL, {"code": "aaaabbbb"})

        assert first.status_code == 302
        assert again.status_code == 400
        assert not is_verified(client)
        assert list(
            StaticToken.objects.filter(device__user=user).values_list("token", flat=True)
        ) == ["ccccdddd"]
        assert [e.data["recovery_codes_left"] for e in events("auth.recovery_code_used")] == [1]

    def test_wrong_codes_count_towards_the_lockout_and_the_right_one_then_fails(
        self, client, enrolled
    ):
        user, _device = enrolled
        force_login_password_only(client, user)

        answers = [client.post(VERIFY_URL, {"code": f"00000{n}"}).status_code for n in range(5)]
        signed_out = signed_in_user_id(client) is None
        again = sign_in(client, "reviewer.harbor", DEMO_PASSWORD)

        assert answers == [400, 400, 400, 400, 429]
        assert signed_out  # the lockout ended the password-only session
        assert again.status_code == 429
        assert signed_in_user_id(client) is None
        assert len(events("auth.second_factor_failed")) == 5
        assert [e.data["username"] for e in events("auth.locked_out")] == ["reviewer.harbor"]


class TestReset:
    def test_platform_staff_reset_a_lost_second_factor_and_it_is_audited(
        self, client, enrolled, staff, harbor
    ):
        user, device = enrolled
        victim = client.__class__()
        force_login_password_only(victim, user)
        victim.post(VERIFY_URL, {"code": code_of(device)})
        assert is_verified(victim)
        client.force_login(staff)

        response = client.post(
            DEVICES_URL,
            {
                "action": "reset_second_factors",
                ACTION_CHECKBOX_NAME: [device.pk],
                "confirm": "yes",
                "reason": REASON,
            },
        )

        assert response.status_code == 302
        assert not TOTPDevice.objects.filter(user=user).exists()
        assert not StaticDevice.objects.filter(user=user).exists()
        assert client.get(reverse("admin:index")).status_code == 200
        # Their session verified with the old device is not verified any more: they enrol again.
        assert victim.get(reverse("admin:index"))["Location"].startswith(SETUP_URL)
        reset = events("auth.second_factor_reset")
        assert [(e.tenant_id, e.actor_user, e.reason, e.data["username"]) for e in reset] == [
            (harbor.pk, staff, REASON, "reviewer.harbor")
        ]

    @pytest.mark.parametrize("who", ["ops", "superuser"])
    def test_an_operator_or_a_superuser_cannot_reset_someones_second_factor(
        self, client, enrolled, users, superuser, who
    ):
        user, device = enrolled
        client.force_login(users["ops"] if who == "ops" else superuser)

        response = client.post(
            DEVICES_URL,
            {
                "action": "reset_second_factors",
                ACTION_CHECKBOX_NAME: [device.pk],
                "confirm": "yes",
                "reason": "let me in",
            },
        )

        assert response.status_code == 403
        assert TOTPDevice.objects.filter(pk=device.pk).exists()
        assert StaticToken.objects.filter(device__user=user).count() == 2
        assert not AuditEvent.objects.filter(action="auth.second_factor_reset").exists()

    def test_the_second_factor_page_never_shows_a_secret(self, client, enrolled, staff):
        _user, device = enrolled
        client.force_login(staff)

        pages = [
            client.get(DEVICES_URL).content.decode(),
            client.get(
                reverse("admin:otp_totp_totpdevice_change", args=[device.pk])
            ).content.decode(),
        ]

        assert "reviewer.harbor" in pages[0]
        for page in pages:
            assert device.key not in page
            assert secret_text(device).replace(" ", "") not in page.replace(" ", "")
            assert "aaaabbbb" not in page
