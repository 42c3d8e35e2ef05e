"""Checkpoints racing each other and appends, on PostgreSQL with real concurrent
transactions: the log never forks and every checkpoint names a head that exists."""

from __future__ import annotations

import pytest

from audit import checkpoints, signing
from audit.services import Actor, record
from audit.verification import verify_chain
from tenants import rls
from tenants.models import Tenant
from tests.conftest import on_postgres
from tests.tenants.test_locking import race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def harbor_id(transactional_db):
    from desk.demo import seed_demo

    assert on_postgres()
    seed_demo()
    return Tenant.objects.get(slug="harbor-legal").pk


def test_checkpoints_and_appends_racing_never_fork_the_log(harbor_id):
    def checkpointing():
        for _ in range(5):
            checkpoints.checkpoint(harbor_id)

    def appending():
        for i in range(5):
            with rls.tenant_context(harbor_id):
                record(tenant=harbor_id, actor=Actor.system(), action=f"test.race.{i}")

    errors = race(checkpointing, checkpointing, appending)

    assert errors == []
    entries = checkpoints.store().entries(checkpoints.log_name(harbor_id))
    assert [number for number, _ in entries] == list(range(1, 11))
    with rls.tenant_context(harbor_id):
        assert verify_chain(tenant_id=harbor_id, verifier=signing.verifier()) == []
