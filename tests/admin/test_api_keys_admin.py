"""API keys in the admin: created through the service, the secret shown once, revoked."""

from __future__ import annotations

import hashlib

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from audit.services import Actor
from roles.services import create_role
from tenants.models import ApiKey
from tenants.services import authenticate_api_key

ADD_URL = reverse("admin:tenants_apikey_add")
CHANGELIST_URL = reverse("admin:tenants_apikey_changelist")


def key_form(tenant, **overrides) -> dict:
    return {
        "tenant": tenant.pk,
        "name": "Website intake",
        "role_slugs": ["intake-coordinator"],
        "rate_limit_per_minute": 30,
        **overrides,
    }


def test_an_operator_of_several_clients_picks_the_client_first(client, users, harbor, northwind):
    client.force_login(users["ops"])

    choose = client.get(ADD_URL)
    form_page = client.get(ADD_URL, {"tenant": harbor.pk})

    assert choose.status_code == 200
    assert f'href="?tenant={harbor.pk}"' in choose.content.decode()
    assert f'href="?tenant={northwind.pk}"' in choose.content.decode()
    form = form_page.context["adminform"].form
    assert list(form.fields["tenant"].queryset) == [harbor]
    assert form.fields["role_slugs"].choices == [
        ("client-follow-up", "Client follow-up"),
        ("intake-coordinator", "Intake coordinator"),
    ]


def test_the_secret_is_shown_once_and_only_its_hash_is_kept(client, users, harbor):
    client.force_login(users["ops"])

    created = client.post(
        f"{ADD_URL}?tenant={harbor.pk}", key_form(harbor), headers={"X-Request-ID": "new-key-0001"}
    )

    api_key = ApiKey.objects.get(tenant=harbor, name="Website intake")
    secret = created.context["secret"]
    assert created.status_code == 200
    assert secret in created.content.decode()
    assert "no-store" in created["Cache-Control"]
    assert secret.startswith(f"adk_{api_key.prefix}_")
    assert api_key.key_hash != secret
    assert api_key.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert (api_key.role_slugs, api_key.rate_limit_per_minute, api_key.created_by) == (
        ["intake-coordinator"],
        30,
        users["ops"],
    )
    assert authenticate_api_key(secret) == api_key
    event = AuditEvent.objects.get(action="api_key.created", object_id=str(api_key.pk))
    assert secret not in str(event.data)
    assert (event.request_id, event.client_ip) == ("new-key-0001", "127.0.0.1")

    later_pages = [
        CHANGELIST_URL,
        reverse("admin:tenants_apikey_change", args=[api_key.pk]),
        reverse("admin:tenants_apikey_history", args=[api_key.pk]),
        reverse(
            "admin:tenants_apikey_simple_history",
            args=[api_key.pk, api_key.history.get().history_id],
        ),
        reverse("admin:index"),
        reverse("admin:audit_auditevent_change", args=[event.pk]),
    ]
    for page in later_pages:
        response = client.get(page)
        assert response.status_code == 200, page
        assert secret not in response.content.decode(), page
        assert api_key.key_hash not in response.content.decode(), page
    assert secret not in str(dict(client.session))


def test_a_key_is_revoked_after_a_confirmation(client, users, harbor):
    client.force_login(users["ops"])
    secret = client.post(f"{ADD_URL}?tenant={harbor.pk}", key_form(harbor)).context["secret"]
    api_key = ApiKey.objects.get(tenant=harbor, name="Website intake")
    selected = {"action": "revoke_keys", "_selected_action": [api_key.pk]}

    page = client.get(reverse("admin:tenants_apikey_change", args=[api_key.pk]))
    confirmation = client.post(CHANGELIST_URL, {**selected, "index": "0"})
    api_key.refresh_from_db()
    assert "Revoke…" in page.content.decode()
    assert confirmation.status_code == 200
    assert api_key.revoked_at is None

    done = client.post(
        CHANGELIST_URL,
        {**selected, "confirm": "yes"},
        headers={"User-Agent": "Firefox/140", "X-Request-ID": "revoke-key-0001"},
    )

    api_key.refresh_from_db()
    assert done.status_code == 302
    assert api_key.revoked_at is not None
    assert authenticate_api_key(secret) is None
    revoked = AuditEvent.objects.get(action="api_key.revoked", object_id=str(api_key.pk))
    assert (revoked.request_id, revoked.client_ip, revoked.user_agent) == (
        "revoke-key-0001",
        "127.0.0.1",
        "Firefox/140",
    )


def test_a_key_is_never_edited_nor_deleted(client, users, harbor):
    client.force_login(users["ops"])
    client.post(f"{ADD_URL}?tenant={harbor.pk}", key_form(harbor))
    api_key = ApiKey.objects.get(tenant=harbor)
    change_url = reverse("admin:tenants_apikey_change", args=[api_key.pk])

    page = client.get(change_url)
    edit = client.post(change_url, {"name": "Renamed", "rate_limit_per_minute": 9999})
    delete = client.post(reverse("admin:tenants_apikey_delete", args=[api_key.pk]), {"post": "yes"})

    api_key.refresh_from_db()
    assert 'name="_save"' not in page.content.decode()
    assert (edit.status_code, delete.status_code) == (403, 403)
    assert (api_key.name, api_key.rate_limit_per_minute, api_key.revoked_at) == (
        "Website intake",
        30,
        None,
    )


@pytest.fixture
def harbor_only_role(harbor):
    return create_role(
        tenant=harbor, slug="scheduler", name="Scheduler", actor=Actor.system("tests")
    )


def test_a_northwind_operator_cannot_create_a_key_for_harbor(
    client, ops_northwind, harbor, northwind, harbor_only_role
):
    client.force_login(ops_northwind)
    keys, events = ApiKey.objects.count(), AuditEvent.objects.count()

    form_page = client.get(ADD_URL, {"tenant": harbor.pk})
    for_harbor = client.post(
        f"{ADD_URL}?tenant={harbor.pk}", key_form(harbor, role_slugs=["scheduler"])
    )
    harbors_role = client.post(ADD_URL, key_form(northwind, role_slugs=["scheduler"]))

    assert list(form_page.context["adminform"].form.fields["tenant"].queryset) == [northwind]
    assert for_harbor.status_code == 200
    assert "tenant" in for_harbor.context["adminform"].form.errors
    assert harbors_role.status_code == 200
    assert "role_slugs" in harbors_role.context["adminform"].form.errors
    assert "Scheduler" not in harbors_role.content.decode()
    assert (ApiKey.objects.count(), AuditEvent.objects.count()) == (keys, events)


def test_auditors_see_keys_reviewers_do_not(client, users, harbor):
    client.force_login(users["ops"])
    client.post(f"{ADD_URL}?tenant={harbor.pk}", key_form(harbor))

    client.force_login(users["auditor"])
    listing = client.get(CHANGELIST_URL)
    add = client.get(ADD_URL)
    client.force_login(users["reviewer.harbor"])
    refused = client.get(CHANGELIST_URL)

    assert [key.name for key in listing.context["cl"].result_list] == ["Website intake"]
    assert "revoke_keys" not in listing.content.decode()
    assert add.status_code == 403
    assert refused.status_code == 403
