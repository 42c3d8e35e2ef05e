"""Random primary keys (tenants.ids): which models have them, what they are, and that a
collision is an error rather than an overwrite."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import IntegrityError, transaction

from tenants import rls
from tenants.ids import MAX_ID, RandomIdField, random_id
from tenants.models import ClientRecord

TENANT_TABLES = {table for table, _ in rls.TENANT_TABLES}


def tenant_models():
    return [model for model in apps.get_models() if model._meta.db_table in TENANT_TABLES]


def test_every_tenant_scoped_table_has_random_ids():
    plain, historical = [], []
    for model in tenant_models():
        if model._meta.db_table.split("_", 1)[1].startswith("historical"):
            historical.append(model)
        else:
            plain.append(model)

    assert len(plain) == 28 and len(historical) == 8
    for model in plain:
        assert isinstance(model._meta.pk, RandomIdField), f"{model._meta.label}: sequential ids"
    for model in historical:
        # The history row's own id is in the admin's history URLs; the copied id is the row's.
        assert isinstance(model._meta.pk, RandomIdField), f"{model._meta.label}: history_id"
        assert model._meta.pk.name == "history_id"
        assert isinstance(model._meta.get_field("id"), RandomIdField)


def test_random_ids_stay_within_what_json_clients_read_exactly():
    drawn = [random_id() for _ in range(2000)]

    assert all(1 <= value <= MAX_ID for value in drawn)
    assert MAX_ID == 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER
    assert float(MAX_ID) == MAX_ID and len(set(drawn)) == len(drawn)
    # Spread over the whole range, not clustered at its bottom like a sequence.
    assert max(drawn) > MAX_ID // 2 > min(drawn)


def test_a_new_row_takes_a_random_id_and_forms_never_offer_to_edit_it(harbor):
    record = ClientRecord(tenant=harbor, kind="contact", reference="C-9", name="N")

    assert record._state.adding and 1 <= record.pk <= MAX_ID
    assert not ClientRecord._meta.pk.editable


def test_a_colliding_id_is_an_error_and_overwrites_nothing(harbor):
    existing = ClientRecord.objects.filter(tenant=harbor).first()
    before = ClientRecord.objects.filter(pk=existing.pk).values().get()

    with pytest.raises(IntegrityError), transaction.atomic():
        # save(), not create(): a new row whose drawn id is taken is inserted (and refused),
        # never taken for an update of the row that has it.
        ClientRecord(
            id=existing.pk, tenant=harbor, kind="contact", reference="C-COLLIDE", name="Other"
        ).save()

    assert ClientRecord.objects.filter(pk=existing.pk).values().get() == before
    assert not ClientRecord.objects.filter(reference="C-COLLIDE").exists()
