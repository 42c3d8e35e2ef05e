"""Adding a member: the operator types a username or an e-mail address exactly; the page
lists nobody, and a guess that finds no one, or finds someone of another tenant, shows
nothing of other tenants' people."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from audit.models import AuditEvent
from tenants.models import Membership
from tests.admin.conftest import make_platform_staff

User = get_user_model()
ADD = reverse("admin:tenants_membership_add")
CHANGELIST = reverse("admin:tenants_membership_changelist")


@pytest.fixture
def newcomer(db):
    """An account that is nobody's member yet."""
    return User.objects.create_user(
        "new.hire", "New.Hire@Example.com", "pw-new-hire-1", is_staff=True, first_name="Nia"
    )


def outsiders_of(tenant) -> list:
    """Every account that is not a member of the tenant."""
    return list(User.objects.exclude(memberships__tenant=tenant))


def traces(user) -> list[str]:
    return [text for text in (user.username, user.email, user.get_full_name()) if text]


def assert_shows_no_one_of(content: str, people) -> None:
    for person in people:
        for text in traces(person):
            assert text not in content, f"the page shows {text!r} of {person.username}"


def memberships_and_events() -> tuple:
    return (
        sorted(Membership.objects.values_list("user_id", "tenant_id", "kind")),
        AuditEvent.objects.count(),
    )


def test_an_operator_adding_a_member_sees_no_other_accounts(
    client, ops_northwind, northwind, users, ops_harbor, newcomer
):
    make_platform_staff("sre.hidden")
    client.force_login(ops_northwind)

    page = client.get(ADD)

    assert page.status_code == 200
    form = page.context["adminform"].form
    assert "user" not in form.fields and "person" in form.fields
    outsiders = outsiders_of(northwind)
    assert {"reviewer.harbor", "ops.harbor", "new.hire", "sre.hidden"} <= {
        u.username for u in outsiders
    }
    assert_shows_no_one_of(page.content.decode(), outsiders)


def test_an_operator_adds_a_member_by_email(client, ops_northwind, northwind, newcomer):
    client.force_login(ops_northwind)

    response = client.post(
        ADD, {"person": "new.hire@example.COM", "tenant": northwind.pk, "kind": "reviewer"}
    )

    assert response.status_code == 302
    membership = Membership.objects.get(user=newcomer, tenant=northwind)
    assert membership.kind == "reviewer"
    event = AuditEvent.objects.get(action="membership.granted", object_id=str(membership.pk))
    assert event.tenant_id == northwind.pk and event.actor_user == ops_northwind


def test_an_operator_adds_a_member_by_username(client, ops_northwind, northwind, newcomer):
    client.force_login(ops_northwind)

    response = client.post(ADD, {"person": "new.hire", "tenant": northwind.pk, "kind": "auditor"})

    assert response.status_code == 302
    assert Membership.objects.filter(user=newcomer, tenant=northwind, kind="auditor").exists()


@pytest.mark.parametrize(
    "guess",
    [
        "reviewer.harb",  # a prefix
        "REVIEWER.HARBOR",  # a username is matched exactly, case included
        "reviewer",  # a fragment many accounts share
        "%",  # a wildcard
        "@agentdesk.example",  # the domain of every demo address
        "",
    ],
)
def test_guessing_at_accounts_finds_no_one_and_shows_no_one(
    client, ops_northwind, northwind, users, guess
):
    client.force_login(ops_northwind)
    before = memberships_and_events()

    response = client.post(ADD, {"person": guess, "tenant": northwind.pk, "kind": "reviewer"})

    assert response.status_code == 200
    assert "person" in response.context["adminform"].form.errors
    assert memberships_and_events() == before
    assert_shows_no_one_of(response.content.decode(), outsiders_of(northwind))


def test_adding_a_person_of_another_tenant_by_guessing_shows_nothing_of_their_tenants(
    client, ops_northwind, northwind, harbor, users
):
    # An exact address finds its account (that much an exact match cannot hide) ...
    guessed = users["reviewer.harbor"]
    client.force_login(ops_northwind)

    response = client.post(
        ADD, {"person": guessed.email, "tenant": northwind.pk, "kind": "reviewer"}, follow=True
    )

    assert response.status_code == 200
    assert Membership.objects.filter(user=guessed, tenant=northwind, kind="reviewer").exists()
    # ... and shows nothing of where else they work, now or on the member list.
    for page in (response, client.get(CHANGELIST)):
        content = page.content.decode()
        assert "Harbor Legal LLP" not in content and "harbor-legal" not in content
    listed = client.get(CHANGELIST).context["cl"].result_list
    assert {m.tenant_id for m in listed} == {northwind.pk}


def test_an_address_two_accounts_share_names_neither(client, ops_northwind, northwind):
    twins = [
        User.objects.create_user(name, "shared@example.com", "pw-twin-1", is_staff=True)
        for name in ("twin.one", "twin.two")
    ]
    client.force_login(ops_northwind)
    before = memberships_and_events()

    response = client.post(
        ADD, {"person": "shared@example.com", "tenant": northwind.pk, "kind": "reviewer"}
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["person"] == [
        "More than one account has this e-mail address: type the person's username."
    ]
    assert memberships_and_events() == before
    content = response.content.decode()
    assert all(twin.username not in content for twin in twins)


def test_an_inactive_or_non_staff_account_cannot_be_added(client, ops_northwind, northwind):
    User.objects.create_user(
        "gone", "gone@example.com", "pw-gone-1", is_staff=True, is_active=False
    )
    User.objects.create_user("customer", "customer@example.com", "pw-customer-1")
    client.force_login(ops_northwind)
    before = memberships_and_events()

    for person in ("gone", "customer@example.com"):
        response = client.post(ADD, {"person": person, "tenant": northwind.pk, "kind": "reviewer"})

        assert response.status_code == 200
        assert "person" in response.context["adminform"].form.errors
    assert memberships_and_events() == before
