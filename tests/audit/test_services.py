from datetime import UTC, datetime
from decimal import Decimal

from audit import context, proof
from audit.services import Actor, export_row, hashed_fields, record
from audit.verification import verify_chain


def test_events_form_a_gapless_hash_chain_per_tenant(harbor, northwind):
    first = record(tenant=harbor, actor=Actor.system(), action="test.one")
    second = record(tenant=harbor, actor=Actor.system(), action="test.two", data={"n": 1})
    other = record(tenant=northwind, actor=Actor.system(), action="test.other")

    assert second.seq == first.seq + 1
    assert second.prev_hash == first.hash
    assert other.prev_hash != second.hash
    assert verify_chain(tenant_id=harbor.pk) == []
    assert verify_chain(tenant_id=northwind.pk) == []


def test_the_hash_covers_exactly_what_an_export_carries(harbor, users):
    event = record(
        tenant=harbor,
        actor=Actor.for_user(users["ops"]),
        action="test.fields",
        reason="why",
        data={"kind": "client_record"},
    )
    row = export_row(event)

    assert set(proof.HASHED_FIELDS) <= set(row)
    assert row["tenant"] == harbor.pk and row["actor_user"] == users["ops"].pk
    assert proof.event_hash(hashed_fields(event)) == event.hash == row["hash"]
    assert proof.row_problems(row) == []
    assert proof.payload_digest(data={"kind": "client_record"}, reason="why") == (
        event.payload_digest
    )


def test_an_event_written_in_a_request_carries_its_id_address_and_agent(harbor):
    info = context.RequestInfo(request_id="req-12345678", client_ip="10.1.2.3", user_agent="UA/1")
    token = context._current.set(info)
    try:
        event = record(tenant=harbor, actor=Actor.system(), action="test.request")
    finally:
        context._current.reset(token)

    event.refresh_from_db()
    assert (event.request_id, event.client_ip, event.user_agent) == (
        "req-12345678",
        "10.1.2.3",
        "UA/1",
    )
    assert verify_chain(tenant_id=harbor.pk) == []


def test_a_nul_byte_in_a_reason_or_data_is_stored_replaced_and_verifies(harbor):
    event = record(
        tenant=harbor,
        actor=Actor.system("bad\x00label"),
        action="test.nul",
        reason="a\x00b",
        data={"k\x00": ["v\x00"]},
    )

    event.refresh_from_db()
    assert (event.reason, event.data, event.actor_label) == (
        "a\ufffdb",
        {"k\ufffd": ["v\ufffd"]},
        "bad\ufffdlabel",
    )
    assert verify_chain(tenant_id=harbor.pk) == []


def test_data_with_dates_and_decimals_verifies(harbor):
    record(
        tenant=harbor,
        actor=Actor.system(),
        action="test.types",
        data={"at": datetime(2026, 1, 2, tzinfo=UTC), "amount": Decimal("10.50")},
    )

    assert verify_chain(tenant_id=harbor.pk) == []
