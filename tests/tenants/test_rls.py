"""Row-level security on PostgreSQL: the boundary holds beneath the ORM."""

import pytest
from django.apps import apps
from django.db import connection

from audit.services import Actor
from desk.services import start_run
from tenants import rls
from tenants.ids import random_id
from tests.conftest import INTAKE_INPUT
from tests.runtime import advance

pytestmark = pytest.mark.postgres


def tenant_models():
    for model in apps.get_models():
        columns = {f.attname for f in model._meta.concrete_fields}
        if "tenant_id" in columns or model._meta.label in {
            "tenants.Tenant",
            "tenants.HistoricalTenant",
        }:
            yield model


def fetch(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


@pytest.fixture
def harbor_run(harbor, intake_role):
    run = start_run(
        tenant=harbor, role=intake_role, input=INTAKE_INPUT, actor=Actor.system("t"), via="api"
    )
    advance(run.pk)
    return run


def test_every_tenant_table_is_listed_and_forced(db):
    listed = dict(rls.TENANT_TABLES)

    for model in tenant_models():
        table = model._meta.db_table
        assert table in listed, f"{model._meta.label} has a tenant but no RLS policy"
        [(enabled, forced)] = fetch(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = %s",
            [table],
        )
        assert (enabled, forced) == (True, True), table


@pytest.mark.parametrize("role", [rls.APP_ROLE, rls.WORKER_ROLE, rls.PLATFORM_ROLE])
def test_no_role_of_the_application_can_bypass_or_owns_a_table(db, role):
    [(superuser, bypass, inherit)] = fetch(
        "SELECT rolsuper, rolbypassrls, rolinherit FROM pg_roles WHERE rolname = %s", [role]
    )
    owned = fetch("SELECT count(*) FROM pg_tables WHERE tableowner = %s", [role])

    assert (superuser, bypass, inherit) == (False, False, False)
    assert owned == [(0,)]


def test_the_app_role_is_a_member_of_no_role(db):
    granted = fetch(
        "SELECT r.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid"
        " JOIN pg_roles m ON m.oid = a.member WHERE m.rolname = %s",
        [rls.APP_ROLE],
    )

    assert granted == []


def test_a_raw_select_in_one_tenants_context_sees_none_of_anothers_rows(
    harbor_run, harbor, northwind
):
    for table, column in rls.TENANT_TABLES:
        total = fetch(f"SELECT count(*) FROM {table} WHERE {column} = %s", [harbor.pk])[0][0]

        with rls.tenant_context(northwind.pk):
            seen = fetch(f"SELECT count(*) FROM {table} WHERE {column} = %s", [harbor.pk])[0][0]
            everything = fetch(f"SELECT DISTINCT {column} FROM {table}")

        assert seen == 0, table
        assert harbor.pk not in {row[0] for row in everything}, table
        if table in {"desk_run", "desk_steprun", "tenants_clientrecord", "audit_auditevent"}:
            assert total > 0, f"{table} has no harbor rows, so the check proves nothing"


def test_with_no_tenant_set_tenant_tables_read_as_empty(harbor_run):
    with rls.lookup_context():
        counts = {t: fetch(f"SELECT count(*) FROM {t}")[0][0] for t, _ in rls.TENANT_TABLES}

    assert set(counts.values()) == {0}


def test_another_tenants_rows_cannot_be_changed_or_created(harbor_run, northwind):
    from django.db import DatabaseError

    with rls.tenant_context(northwind.pk):
        updated = fetch(
            "UPDATE desk_run SET error = 'x' WHERE id = %s RETURNING id", [harbor_run.pk]
        )

    assert updated == []
    with pytest.raises(DatabaseError, match="row-level security"), rls.tenant_context(northwind.pk):
        fetch(
            "INSERT INTO tenants_clientrecord (id, tenant_id, kind, reference, name, email,"
            " data, updated_at) VALUES (%s, %s, 'contact', 'X', 'x', '', '{}', now())"
            " RETURNING id",
            [random_id(), harbor_run.tenant_id],
        )


def test_the_context_does_not_outlive_its_transaction(harbor):
    before = fetch("SELECT current_user, current_setting('agentdesk.tenant_ids', true)")

    with rls.tenant_context(harbor.pk):
        inside = fetch("SELECT current_user, current_setting('agentdesk.tenant_ids', true)")
    with rls.acting_for(user_id=42), rls.tenant_context(harbor.pk):
        for_a_user = fetch("SELECT current_user, current_setting('agentdesk.user_id', true)")

    after = fetch("SELECT current_user, current_setting('agentdesk.tenant_ids', true)")
    assert inside == [(rls.WORKER_ROLE, str(harbor.pk))]
    assert for_a_user == [(rls.APP_ROLE, "42")]
    assert after == before


def test_the_platform_role_sees_every_tenant(harbor_run, harbor, northwind):
    with rls.platform_context():
        tenants = {row[0] for row in fetch("SELECT DISTINCT tenant_id FROM audit_auditevent")}

    assert {harbor.pk, northwind.pk} <= tenants


def test_the_policy_leaves_the_tenant_index_usable(harbor_run, harbor):
    with rls.tenant_context(harbor.pk), connection.cursor() as cursor:
        # Few rows here, so ask whether the planner *can* use the index at all.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN SELECT * FROM desk_steprun")
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("SET LOCAL enable_seqscan = on")

    assert "Index" in plan
    assert "tenant_id = ANY" in plan.split("Cond:", 1)[1]
