from audit.models import AuditEvent
from audit.services import Actor, record, verify_chain


def test_events_form_a_gapless_hash_chain_per_tenant(harbor, northwind):
    first = record(tenant=harbor, actor=Actor.system(), action="test.one")
    second = record(tenant=harbor, actor=Actor.system(), action="test.two", data={"n": 1})
    other = record(tenant=northwind, actor=Actor.system(), action="test.other")

    assert second.seq == first.seq + 1
    assert second.prev_hash == first.hash
    assert other.prev_hash != second.hash
    assert verify_chain(tenant_id=harbor.pk) == []
    assert verify_chain(tenant_id=northwind.pk) == []


def test_an_edited_event_breaks_the_chain_at_that_event(harbor):
    event = record(tenant=harbor, actor=Actor.system(), action="test.one", reason="original")
    record(tenant=harbor, actor=Actor.system(), action="test.two")

    AuditEvent.objects.filter(pk=event.pk).update(reason="rewritten")

    problems = verify_chain(tenant_id=harbor.pk)
    assert [(p.seq, p.problem) for p in problems] == [
        (event.seq, "content does not match its hash")
    ]


def test_a_deleted_event_breaks_the_chain(harbor):
    record(tenant=harbor, actor=Actor.system(), action="test.one")
    middle = record(tenant=harbor, actor=Actor.system(), action="test.two")
    record(tenant=harbor, actor=Actor.system(), action="test.three")

    AuditEvent.objects.filter(pk=middle.pk).delete()

    problems = verify_chain(tenant_id=harbor.pk)
    assert {p.problem for p in problems} == {
        f"sequence gap: expected {middle.seq}",
        "previous hash does not match",
    }


def test_data_with_dates_and_decimals_verifies(harbor):
    from datetime import UTC, datetime
    from decimal import Decimal

    record(
        tenant=harbor,
        actor=Actor.system(),
        action="test.types",
        data={"at": datetime(2026, 1, 2, tzinfo=UTC), "amount": Decimal("10.50")},
    )

    assert verify_chain(tenant_id=harbor.pk) == []
