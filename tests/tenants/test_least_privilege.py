"""Least privilege in the database, tried as an attacker holding the application's own
login would: connected as `agentdesk_app` (or `agentdesk_worker`), with any SQL it likes.

The web process's role can become no other role, and a tenant context it sets for itself
shows nothing unless the transaction proves a right to that tenant (a membership or open
break-glass grant of the user it names, or an API key's secret). Platform work runs on its
own connection, as its own login. Rows are committed (transactional tests), since every
attack here comes in on a connection of its own.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections
from django.utils import timezone

from tenants import rls
from tenants.models import BreakGlassGrant, ClientRecord, PlatformStaff
from tenants.services import create_api_key, revoke_api_key

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True, databases=["default", "platform"]),
]

# Tables every tenant has rows in once the demo is seeded.
SEEDED = ("tenants_clientrecord", "audit_auditevent", "approvals_approvalpolicy")


@contextmanager
def login_as(role: str):
    """A connection of its own, logged in as `role` (the test server trusts local logins)."""
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        dbname=db["NAME"],
        user=role,
        autocommit=False,
    ) as conn:
        yield conn


def in_context(conn, *, tenant_ids, user_id=None, api_key="") -> dict[str, int]:
    """Row counts of the seeded tables after setting this context by hand, as the app could."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('agentdesk.tenant_ids', %s, true),"
            " set_config('agentdesk.user_id', %s, true),"
            " set_config('agentdesk.api_key', %s, true)",
            [",".join(map(str, tenant_ids)), str(user_id or ""), api_key],
        )
        counts = {}
        for table in SEEDED:
            cursor.execute(f"SELECT count(*) FROM {table}")
            counts[table] = cursor.fetchone()[0]
    conn.rollback()
    return counts


def seen(counts: dict[str, int]) -> bool:
    return any(counts.values())


@pytest.fixture(autouse=True)
def close_platform_connection():
    yield
    connections[rls.PLATFORM_ALIAS].close()


@pytest.fixture
def member(demo):
    """A reviewer of Harbor only."""
    return get_user_model().objects.get(username="reviewer.harbor")


# --- the app role may become nothing else ----------------------------------------------------


@pytest.mark.parametrize("login", [rls.APP_ROLE, rls.WORKER_ROLE])
@pytest.mark.parametrize(
    "statement",
    [
        f"SET ROLE {rls.PLATFORM_ROLE}",
        f"SET LOCAL ROLE {rls.PLATFORM_ROLE}",
        "SET SESSION AUTHORIZATION postgres",
        f"SET SESSION AUTHORIZATION {rls.PLATFORM_ROLE}",
        f"GRANT {rls.PLATFORM_ROLE} TO {rls.APP_ROLE}",
    ],
)
@pytest.mark.django_db
def test_the_application_logins_cannot_become_the_platform_role(login, statement):
    with login_as(login) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)

    with login_as(login) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (login,)


@pytest.mark.django_db
def test_the_web_login_cannot_become_the_worker():
    with login_as(rls.APP_ROLE) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(f"SET ROLE {rls.WORKER_ROLE}")


@pytest.mark.django_db
def test_the_web_login_cannot_replace_the_proof_function():
    with login_as(rls.APP_ROLE) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "CREATE OR REPLACE FUNCTION agentdesk_tenant_ids() RETURNS bigint[]"
            " LANGUAGE sql AS $$ SELECT array_agg(id) FROM tenants_tenant $$"
        )
    with login_as(rls.APP_ROLE) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("ALTER TABLE tenants_clientrecord NO FORCE ROW LEVEL SECURITY")


# --- a context set by hand shows nothing without a proof ---------------------------------------


def test_tenant_ids_set_by_hand_without_a_user_or_key_show_nothing(harbor, northwind):
    with login_as(rls.APP_ROLE) as conn:
        counts = in_context(conn, tenant_ids=[harbor.pk, northwind.pk])

    assert not seen(counts), counts


def test_another_tenants_ids_with_a_members_own_id_show_nothing(member, harbor, northwind):
    with login_as(rls.APP_ROLE) as conn:
        stolen = in_context(conn, tenant_ids=[northwind.pk], user_id=member.pk)
        own = in_context(conn, tenant_ids=[harbor.pk], user_id=member.pk)

    assert not seen(stolen), stolen
    assert all(own.values()), own  # the same query with the right membership sees rows
    with rls.tenant_context(harbor.pk):
        assert own["tenants_clientrecord"] == ClientRecord.objects.count()


def test_a_deactivated_members_id_shows_nothing(member, harbor):
    get_user_model().objects.filter(pk=member.pk).update(is_active=False)

    with login_as(rls.APP_ROLE) as conn:
        counts = in_context(conn, tenant_ids=[harbor.pk], user_id=member.pk)

    assert not seen(counts), counts


def test_the_app_cannot_write_into_a_tenant_it_cannot_prove(member, northwind):
    before = ClientRecord.objects.count()
    with login_as(rls.APP_ROLE) as conn, conn.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('agentdesk.tenant_ids', %s, true),"
            " set_config('agentdesk.user_id', %s, true)",
            [str(northwind.pk), str(member.pk)],
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            cursor.execute(
                "INSERT INTO tenants_clientrecord (id, tenant_id, kind, reference, name, email,"
                " data, updated_at) VALUES (42, %s, 'contact', 'X', 'x', '', '{}', now())",
                [northwind.pk],
            )

    assert ClientRecord.objects.count() == before


def staff_grant(tenant, **times) -> tuple[int, BreakGlassGrant]:
    user = get_user_model().objects.create_user(username="staff", is_staff=True)
    PlatformStaff.objects.create(user=user)
    now = timezone.now()
    grant = BreakGlassGrant.objects.create(
        user=user,
        tenant=tenant,
        reason="incident 42",
        started_at=times.get("started_at", now - timedelta(minutes=5)),
        expires_at=times.get("expires_at", now + timedelta(minutes=55)),
        ended_at=times.get("ended_at"),
    )
    return user.pk, grant


@pytest.mark.parametrize(
    "times",
    [
        {"expires_at": -timedelta(seconds=1)},
        {"ended_at": -timedelta(minutes=1)},
        {"started_at": timedelta(hours=1), "expires_at": timedelta(hours=2)},
    ],
    ids=["expired", "closed", "not yet started"],
)
def test_a_break_glass_grant_that_is_not_open_proves_nothing(harbor, times):
    # Offsets from the test's own time (a time taken at collection may be minutes old).
    now = timezone.now()
    with rls.platform_context():
        user_id, _ = staff_grant(harbor, **{name: now + delta for name, delta in times.items()})

    with login_as(rls.APP_ROLE) as conn:
        counts = in_context(conn, tenant_ids=[harbor.pk], user_id=user_id)

    assert not seen(counts), counts


def test_an_open_break_glass_grant_proves_its_tenant_only(harbor, northwind):
    with rls.platform_context():
        user_id, _ = staff_grant(harbor)

    with login_as(rls.APP_ROLE) as conn:
        granted = in_context(conn, tenant_ids=[harbor.pk], user_id=user_id)
        other = in_context(conn, tenant_ids=[northwind.pk], user_id=user_id)

    assert all(granted.values()), granted
    assert not seen(other), other


def test_an_api_key_proves_its_own_tenant_only(harbor, northwind, system_actor):
    api_key, secret = create_api_key(tenant=harbor, name="intake", actor=system_actor)
    prefix, _, body = secret.rpartition("_")
    forged = f"{prefix}_{'A' * len(body)}"

    with login_as(rls.APP_ROLE) as conn:
        own = in_context(conn, tenant_ids=[harbor.pk], api_key=secret)
        other = in_context(conn, tenant_ids=[northwind.pk], api_key=secret)
        wrong_secret = in_context(conn, tenant_ids=[harbor.pk], api_key=forged)
        # The hash is readable by prefix (to authenticate a request); it is no proof.
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('agentdesk.api_key_prefix', %s, true)", [api_key.prefix]
            )
            cursor.execute("SELECT key_hash FROM tenants_apikey")
            [(key_hash,)] = cursor.fetchall()
        conn.rollback()
        the_hash = in_context(conn, tenant_ids=[harbor.pk], api_key=key_hash)

    assert all(own.values()), own
    assert not seen(other), other
    assert not seen(wrong_secret), wrong_secret
    assert not seen(the_hash), the_hash


def test_a_revoked_api_key_proves_nothing(harbor, system_actor):
    api_key, secret = create_api_key(tenant=harbor, name="intake", actor=system_actor)
    revoke_api_key(api_key=api_key, actor=system_actor)

    with login_as(rls.APP_ROLE) as conn:
        counts = in_context(conn, tenant_ids=[harbor.pk], api_key=secret)

    assert not seen(counts), counts


def test_the_worker_sees_the_tenants_it_sets(harbor, northwind):
    with login_as(rls.WORKER_ROLE) as conn:
        harbor_only = in_context(conn, tenant_ids=[harbor.pk])
        nothing = in_context(conn, tenant_ids=[])

    assert all(harbor_only.values()), harbor_only
    assert not seen(nothing), nothing


# --- the code path: a web request's contexts are proved, platform work has its own login ---------


def test_a_request_context_for_a_user_sees_only_the_tenants_they_belong_to(
    member, harbor, northwind
):
    with rls.acting_for(user_id=member.pk), rls.tenant_context([harbor.pk, northwind.pk]):
        tenants = set(ClientRecord.objects.values_list("tenant_id", flat=True))
        role = connection.cursor().execute("SELECT current_user").fetchone()[0]

    assert tenants == {harbor.pk}
    assert role == rls.APP_ROLE


def test_a_request_for_nobody_sees_no_tenant(harbor):
    with rls.acting_for(), rls.tenant_context(harbor.pk):
        assert not ClientRecord.objects.exists()


@contextmanager
def platform_login(user: str):
    platform = connections[rls.PLATFORM_ALIAS]
    platform.close()
    saved = platform.settings_dict["USER"]
    platform.settings_dict["USER"] = user
    try:
        yield platform
    finally:
        platform.close()
        platform.settings_dict["USER"] = saved


def test_platform_work_runs_on_its_own_connection_as_its_own_login(harbor, northwind):
    with platform_login(rls.PLATFORM_ROLE) as platform, rls.tenant_context(harbor.pk):
        with rls.platform_context():
            with platform.cursor() as cursor:
                cursor.execute("SELECT session_user, current_user, pg_backend_pid()")
                session_user, current_user, pid = cursor.fetchone()
            tenants = set(ClientRecord.objects.values_list("tenant_id", flat=True))
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            [web_pid] = cursor.fetchone()

    assert (session_user, current_user) == (rls.PLATFORM_ROLE, rls.PLATFORM_ROLE)
    assert pid != web_pid
    assert {harbor.pk, northwind.pk} <= tenants


def test_platform_work_with_the_web_login_fails_closed_and_writes_nothing(harbor, system_actor):
    from tenants.services import create_tenant

    with platform_login(rls.APP_ROLE), pytest.raises(ImproperlyConfigured, match="PLATFORM"):
        create_tenant(slug="intruder", name="Intruder", actor=system_actor)

    with rls.platform_context():
        assert not harbor.__class__.objects.filter(slug="intruder").exists()


# --- every use of the platform role is on the audit trail ----------------------------------------


def test_each_platform_use_is_recorded_with_its_purpose(settings, harbor):
    from audit.models import AuditEvent
    from tenants.selectors import tenant_id_for_slug

    settings.DESK_PLATFORM_AUDIT_SECONDS = 0
    with rls.platform_context():
        before = set(AuditEvent.objects.filter(action="platform.used").values_list("pk", flat=True))

    with rls.tenant_context(harbor.pk):
        record = ClientRecord.objects.first()
    assert tenant_id_for_slug(harbor.slug) == harbor.pk
    assert rls.tenant_of("tenants_clientrecord", record.pk) == harbor.pk

    with rls.platform_context():
        events = list(
            AuditEvent.objects.filter(action="platform.used", tenant=None)
            .exclude(pk__in=before)
            .order_by("seq")
        )
    uses = [event.data["uses"] for event in events]
    # Each use on its own record (0 s), this test's own last reads included.
    assert uses == [
        {"tenants.selectors.tenant_id_for_slug": 1},
        {"tenant_of tenants_clientrecord": 1},
        {f"{__name__}.test_each_platform_use_is_recorded_with_its_purpose": 1},
    ]


def test_a_process_records_its_first_use_at_once_then_its_uses_each_period(settings, monkeypatch):
    from audit.models import AuditEvent

    settings.DESK_PLATFORM_AUDIT_SECONDS = 60
    quiet = rls._PlatformUses()
    quiet.since = time.time()  # nothing due while the test takes its baseline
    monkeypatch.setattr(rls, "_uses", quiet)
    with rls.platform_context():
        before = set(AuditEvent.objects.filter(action="platform.used").values_list("pk", flat=True))

    def recorded() -> list[dict]:
        with rls.platform_context():
            rows = AuditEvent.objects.filter(action="platform.used").exclude(pk__in=before)
            return [event.data["uses"] for event in rows.order_by("seq")]

    monkeypatch.setattr(rls, "_uses", rls._PlatformUses())  # a process that just started
    rls.tenant_of("tenants_clientrecord", 1)
    assert recorded() == [{"tenant_of tenants_clientrecord": 1}]
    for _ in range(3):
        rls.tenant_of("tenants_clientrecord", 1)
    assert len(recorded()) == 1  # within the period: counted, not yet written

    rls._uses.since -= 61  # the period has passed
    with rls.platform_context("the period's last use"):
        pass
    uses = recorded()
    assert len(uses) == 2
    assert uses[1] == {
        "tenant_of tenants_clientrecord": 3,
        f"{__name__}.recorded": 2,
        "the period's last use": 1,
    }
