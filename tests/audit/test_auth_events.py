"""Signing in, failing to and signing out are on the record, through the real sign-in page:
on the chains of the person's tenants (the platform's for anyone else), with the request's
id, address and user agent, and never with a password."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.db.models import F
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import Actor
from audit.verification import verify_chain
from desk.demo import DEMO_PASSWORD
from tenants.services import grant_platform_staff

LOGIN_URL = reverse("admin:login")
LOGOUT_URL = reverse("admin:logout")
REQUEST_ID = "sign-in-4711"
AGENT = "Mozilla/5.0 (attack test)"
AS_BROWSER = {"User-Agent": AGENT, "X-Request-ID": REQUEST_ID}
WRONG_PASSWORD = "Hunter2-not-the-password"


def request_of(event: AuditEvent) -> tuple:
    return (event.request_id, event.client_ip, event.user_agent)


def events(action: str) -> list[AuditEvent]:
    # By tenant (platform first, then by slug: ids are random), each in its chain's order.
    ordered = AuditEvent.objects.filter(action=action).order_by(
        F("tenant__slug").asc(nulls_first=True), "seq"
    )
    return list(ordered)


def sign_in(client, username: str, password: str):
    return client.post(
        LOGIN_URL,
        {"username": username, "password": password, "next": "/admin/"},
        headers=AS_BROWSER,
    )


def nothing_holds(secret: str) -> bool:
    stored = json.dumps(list(AuditEvent.objects.values()), default=str)
    return secret not in stored


@pytest.fixture
def staff(db):
    user = get_user_model().objects.create_user("sre", password="pw-sre-12345", is_staff=True)
    grant_platform_staff(user=user, actor=Actor.system("tests"))
    return user


class TestSignIn:
    def test_a_sign_in_is_on_each_of_the_members_tenants_chains(
        self, client, users, harbor, northwind
    ):
        response = sign_in(client, "ops", DEMO_PASSWORD)

        signed_in = events("auth.signed_in")
        assert response.status_code == 302
        assert [e.tenant_id for e in signed_in] == [harbor.pk, northwind.pk]
        assert {(e.actor_user, e.object_id, e.data["username"]) for e in signed_in} == {
            (users["ops"], str(users["ops"].pk), "ops")
        }
        assert {request_of(e) for e in signed_in} == {(REQUEST_ID, "127.0.0.1", AGENT)}
        assert verify_chain(tenant_id=harbor.pk) == []
        assert verify_chain(tenant_id=northwind.pk) == []

    def test_platform_staffs_sign_in_is_on_the_platform_chain(self, client, staff, harbor):
        response = sign_in(client, "sre", "pw-sre-12345")

        assert response.status_code == 302
        assert [(e.tenant_id, e.actor_user) for e in events("auth.signed_in")] == [(None, staff)]
        assert verify_chain(tenant_id=None) == []


class TestFailedSignIn:
    def test_guessing_a_reviewers_password_is_on_their_tenants_chain_without_the_guess(
        self, client, users, harbor
    ):
        response = sign_in(client, "reviewer.harbor", WRONG_PASSWORD)

        failed = events("auth.sign_in_failed")
        assert response.status_code == 200
        assert "_auth_user_id" not in client.session
        assert [(e.tenant_id, e.object_id) for e in failed] == [
            (harbor.pk, str(users["reviewer.harbor"].pk))
        ]
        assert failed[0].data == {"username": "reviewer.harbor", "reason": "wrong_password"}
        assert (failed[0].actor_type, failed[0].actor_label, failed[0].actor_user) == (
            AuditEvent.ActorType.SYSTEM,
            "anonymous",
            None,
        )
        assert request_of(failed[0]) == (REQUEST_ID, "127.0.0.1", AGENT)
        assert nothing_holds(WRONG_PASSWORD)
        assert nothing_holds("********")  # not even Django's mask of it
        assert not events("auth.signed_in")

    def test_a_name_nobody_has_is_on_the_platform_chain(self, client, harbor):
        response = sign_in(client, "admin", WRONG_PASSWORD)

        failed = events("auth.sign_in_failed")
        assert response.status_code == 200
        assert [(e.tenant_id, e.object_id, e.data) for e in failed] == [
            (None, "", {"username": "admin", "reason": "unknown_user"})
        ]
        assert nothing_holds(WRONG_PASSWORD)

    def test_a_deactivated_reviewer_signing_in_is_recorded_as_inactive(self, client, users, harbor):
        reviewer = users["reviewer.harbor"]
        get_user_model().objects.filter(pk=reviewer.pk).update(is_active=False)

        response = sign_in(client, "reviewer.harbor", DEMO_PASSWORD)

        assert response.status_code == 200
        assert [(e.tenant_id, e.data["reason"]) for e in events("auth.sign_in_failed")] == [
            (harbor.pk, "inactive_user")
        ]
        assert not events("auth.signed_in")

    def test_someone_without_admin_access_is_refused_and_recorded(self, client, db):
        get_user_model().objects.create_user("client.contact", password="pw-contact-123")

        response = sign_in(client, "client.contact", "pw-contact-123")

        assert response.status_code == 200
        assert "_auth_user_id" not in client.session
        assert [(e.tenant_id, e.data) for e in events("auth.sign_in_failed")] == [
            (None, {"username": "client.contact", "reason": "not_staff"})
        ]
        assert nothing_holds("pw-contact-123")

    def test_a_nul_byte_in_the_name_is_refused_and_recorded_written_out(self, client, harbor):
        response = sign_in(client, "reviewer.harbor\x00' OR 1=1", WRONG_PASSWORD)

        failed = events("auth.sign_in_failed")
        assert response.status_code == 200
        assert [(e.tenant_id, e.data) for e in failed] == [
            (None, {"username": "reviewer.harbor\\x00' OR 1=1", "reason": "invalid_username"})
        ]
        assert nothing_holds(WRONG_PASSWORD)
        assert verify_chain(tenant_id=None) == []

    def test_a_10_kb_name_is_recorded_shortened(self, client, harbor):
        name = "reviewer.harbor" + "x" * 10_240

        response = sign_in(client, name, WRONG_PASSWORD)

        failed = events("auth.sign_in_failed")
        assert response.status_code == 200
        assert [(e.tenant_id, e.data) for e in failed] == [
            (None, {"username": name[:150], "username_length": len(name), "reason": "unknown_user"})
        ]
        assert verify_chain(tenant_id=None) == []


class TestSignOut:
    def test_signing_out_is_recorded_on_the_members_chain(self, client, users, harbor):
        sign_in(client, "reviewer.harbor", DEMO_PASSWORD)

        response = client.post(LOGOUT_URL, headers=AS_BROWSER)

        signed_out = events("auth.signed_out")
        assert response.status_code == 200
        assert "_auth_user_id" not in client.session
        assert [(e.tenant_id, e.actor_user) for e in signed_out] == [
            (harbor.pk, users["reviewer.harbor"])
        ]
        assert request_of(signed_out[0]) == (REQUEST_ID, "127.0.0.1", AGENT)

    def test_signing_out_when_not_signed_in_records_nothing(self, client, db):
        response = client.post(LOGOUT_URL)

        assert response.status_code == 302
        assert not events("auth.signed_out")
