import pytest

from audit.models import AuditEvent
from audit.services import Actor
from tenants.models import Membership
from tenants.permissions import (
    can_audit_tenant,
    can_operate_tenant,
    can_review_tenant,
    can_view_tenant,
)
from tenants.scoping import scope_to_user, tenants_for_user
from tenants.services import change_membership_kind, grant_membership, revoke_membership


def fresh(user):
    """The same user without this request's permission cache."""
    return type(user).objects.get(pk=user.pk)


def test_membership_kinds_map_to_object_permissions(harbor, northwind, users):
    reviewer = users["reviewer.harbor"]

    assert can_review_tenant(reviewer, harbor)
    assert can_view_tenant(reviewer, harbor)
    assert not can_operate_tenant(reviewer, harbor)
    assert not can_audit_tenant(reviewer, harbor)
    assert not can_view_tenant(reviewer, northwind)
    assert can_audit_tenant(users["auditor"], northwind)
    assert not can_review_tenant(users["auditor"], northwind)


def test_grant_change_and_revoke_are_audited_with_history(harbor, northwind, users):
    ops = Actor.for_user(users["ops"])
    reviewer = users["reviewer.harbor"]

    membership = grant_membership(user=reviewer, tenant=northwind, kind="auditor", actor=ops)
    membership_id = membership.pk
    assert can_audit_tenant(fresh(reviewer), northwind)

    change_membership_kind(membership=membership, kind="reviewer", actor=ops)
    assert can_review_tenant(fresh(reviewer), northwind)
    assert not can_audit_tenant(fresh(reviewer), northwind)

    revoke_membership(membership=membership, actor=ops)
    assert not can_view_tenant(fresh(reviewer), northwind)
    assert list(
        AuditEvent.objects.filter(tenant=northwind, action__startswith="membership.")
        .order_by("-seq")
        .values_list("action", flat=True)[:3]
    ) == ["membership.revoked", "membership.changed", "membership.granted"]
    history = Membership.history.filter(id=membership_id).order_by("history_date")
    assert [h.history_type for h in history] == ["+", "~", "-"]
    assert {h.history_user for h in history} == {users["ops"]}


def test_granting_twice_changes_nothing(harbor, users):
    before = AuditEvent.objects.count()

    grant_membership(
        user=users["reviewer.harbor"], tenant=harbor, kind="reviewer", actor=Actor.system()
    )

    assert AuditEvent.objects.count() == before


def test_scoping_follows_memberships_not_model_permissions(harbor, northwind, users):
    from django.contrib.auth.models import Permission

    reviewer = users["reviewer.harbor"]
    # A model-level grant must not widen what the reviewer sees.
    reviewer.user_permissions.add(Permission.objects.get(codename="view_tenant"))
    reviewer = fresh(reviewer)

    assert list(tenants_for_user(reviewer)) == [harbor]
    assert not can_view_tenant(reviewer, northwind)
    assert set(
        scope_to_user(Membership.objects.all(), reviewer).values_list("tenant", flat=True)
    ) == {harbor.pk}


def test_settings_changes_are_audited_and_validated(harbor, users):
    from django.core.exceptions import ValidationError

    from tenants.services import update_tenant_settings

    update_tenant_settings(
        tenant=harbor, actor=Actor.for_user(users["ops"]), changes={"max_concurrent_runs": 3}
    )

    event = AuditEvent.objects.filter(tenant=harbor, action="tenant.updated").latest("seq")
    assert event.data == {"max_concurrent_runs": [10, 3]}
    with pytest.raises(ValidationError):
        update_tenant_settings(
            tenant=harbor, actor=Actor.for_user(users["ops"]), changes={"priority_weight": 0}
        )
    harbor.refresh_from_db()
    assert (harbor.max_concurrent_runs, harbor.priority_weight) == (3, 1)


def test_client_record_writes_are_audited(harbor, users):
    from tenants.services import delete_client_record, upsert_client_record

    actor = Actor.for_user(users["ops"])
    created = upsert_client_record(
        tenant=harbor, reference="C-9", kind="contact", name="New", actor=actor
    )
    upsert_client_record(
        tenant=harbor, reference="C-9", kind="contact", name="Renamed", actor=actor
    )
    record_id = str(created.pk)
    delete_client_record(client_record=created, actor=actor)

    assert list(
        AuditEvent.objects.filter(tenant=harbor, object_id=record_id)
        .filter(action__startswith="client_record.")
        .order_by("seq")
        .values_list("action", flat=True)
    ) == ["client_record.created", "client_record.updated", "client_record.deleted"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "In\x00es"}, "name"),
        ({"email": "\ud800@example.com"}, "email"),
        ({"reference": "C-\x00"}, "reference"),
        ({"data": ["a", "list"]}, "data"),
        ({"data": {"notes": {"deep": "\x00"}}}, "data"),
        ({"data": {"revenue": float("nan")}}, "data"),
    ],
)
def test_a_client_record_no_database_stores_is_refused_and_writes_nothing(
    harbor, users, changes, field
):
    from django.core.exceptions import ValidationError

    from tenants.models import ClientRecord
    from tenants.services import upsert_client_record

    arguments = {"reference": "C-9", "kind": "contact", "name": "New", **changes}
    events, records = AuditEvent.objects.count(), ClientRecord.objects.count()

    with pytest.raises(ValidationError) as raised:
        upsert_client_record(tenant=harbor, actor=Actor.for_user(users["ops"]), **arguments)

    assert list(raised.value.message_dict) == [field]
    assert (AuditEvent.objects.count(), ClientRecord.objects.count()) == (events, records)


def test_a_new_tenant_can_start_with_its_first_operator(users):
    from tenants.models import Tenant
    from tenants.permissions import can_operate_tenant
    from tenants.services import create_tenant

    tenant = create_tenant(
        slug="acme-law",
        name="Acme Law",
        actor=Actor.system("t"),
        first_operator=users["reviewer.harbor"],
    )

    assert Tenant.objects.get(slug="acme-law") == tenant
    assert can_operate_tenant(fresh(users["reviewer.harbor"]), tenant)
    assert list(
        AuditEvent.objects.filter(tenant=tenant).order_by("seq").values_list("action", flat=True)
    ) == ["tenant.created", "membership.granted"]
