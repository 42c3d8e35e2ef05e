"""PostgreSQL row-level security: the tenant boundary beneath the ORM.

Three roles, three sets of credentials:

- `agentdesk_app`, the web process's login. Its policy shows the rows of the tenants set
  for the current transaction (`agentdesk.tenant_ids`, set with SET LOCAL, so it cannot
  outlive the transaction on a pooled connection) *only where the transaction proves a
  right to them*: a membership or open break-glass grant of `agentdesk.user_id`, or the
  API key whose secret is `agentdesk.api_key` (checked by its hash in the database). A
  context the app sets for itself without such a proof reads as empty.
- `agentdesk_worker`, the cluster's login: it works for no user, so its policy shows the
  tenants it sets. Tasks carry row ids and re-derive their tenant from the row.
- `agentdesk_platform` sees every row. It is its own login, on its own connection (the
  `platform` entry of DATABASES, `DESK_PLATFORM_DATABASE_URL`): neither other role may
  SET ROLE to it. Code takes it only in `platform_context(purpose)`, which names why.

Every request, task and command runs its database work inside `tenant_context(...)`,
`lookup_context(...)` or `platform_context(...)`. A web request says who it works for
with `acting_for(...)` (tenants.middleware, desk.api); tenant contexts inside it then run
as the app role with that proof, and any other context runs as the worker. On SQLite these
are plain transactions: application-level scoping (tenants.scoping) is the only boundary.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction

APP_ROLE = "agentdesk_app"
WORKER_ROLE = "agentdesk_worker"
PLATFORM_ROLE = "agentdesk_platform"
# The DATABASES entry holding the platform role's credentials (PostgreSQL only).
PLATFORM_ALIAS = "platform"

# (table, column holding the tenant id). tests/tenants/test_rls.py checks that every model
# with a tenant is listed here and protected in the database.
TENANT_TABLES = [
    ("tenants_tenant", "id"),
    ("tenants_historicaltenant", "id"),
    ("tenants_membership", "tenant_id"),
    ("tenants_historicalmembership", "tenant_id"),
    ("tenants_clientrecord", "tenant_id"),
    ("tenants_apikey", "tenant_id"),
    ("tenants_historicalapikey", "tenant_id"),
    ("tenants_breakglassgrant", "tenant_id"),
    ("roles_role", "tenant_id"),
    ("roles_historicalrole", "tenant_id"),
    ("roles_roleversion", "tenant_id"),
    ("roles_historicalroleversion", "tenant_id"),
    ("roles_goldencase", "tenant_id"),
    ("roles_historicalgoldencase", "tenant_id"),
    ("roles_suiterun", "tenant_id"),
    ("roles_caseresult", "tenant_id"),
    ("roles_publication", "tenant_id"),
    ("desk_run", "tenant_id"),
    ("desk_steprun", "tenant_id"),
    ("desk_outboxmessage", "tenant_id"),
    ("desk_outboxattempt", "tenant_id"),
    ("desk_tenantusage", "tenant_id"),
    ("approvals_approvalpolicy", "tenant_id"),
    ("approvals_historicalapprovalpolicy", "tenant_id"),
    ("approvals_approvalrequest", "tenant_id"),
    ("approvals_decision", "tenant_id"),
    ("approvals_escalation", "tenant_id"),
    ("approvals_reviewergroup", "tenant_id"),
    ("approvals_groupmember", "tenant_id"),
    ("approvals_delegation", "tenant_id"),
    ("approvals_policychange", "tenant_id"),
    ("approvals_approvallink", "tenant_id"),
    ("audit_auditchain", "tenant_id"),
    ("audit_auditevent", "tenant_id"),
    ("webhooks_webhookendpoint", "tenant_id"),
    ("webhooks_historicalwebhookendpoint", "tenant_id"),
]
# Extra ways a row may be seen, for lookups that happen before the tenant is known:
# a user's own memberships (to find their tenants) and a key by its prefix (to find its tenant).
EXTRA_VISIBILITY = {
    "tenants_membership": "user_id = agentdesk_user_id()",
    "tenants_apikey": "prefix = current_setting('agentdesk.api_key_prefix', true)",
    "tenants_breakglassgrant": "user_id = agentdesk_user_id()",
}


def is_enabled() -> bool:
    return connection.vendor == "postgresql"


def _ids_text(tenant_ids: Iterable[int]) -> str:
    return ",".join(str(int(i)) for i in sorted(set(tenant_ids)))


@dataclass(frozen=True)
class Principal:
    """Whom a web request's database work is for: its proof of a right to a tenant."""

    user_id: int | None = None
    api_key: str = ""


# The web request's principal (None outside a request: a task or command, the worker).
_principal: ContextVar[Principal | None] = ContextVar("agentdesk_principal", default=None)
# The DATABASES alias the current context works on; the router sends the ORM there.
_alias: ContextVar[str] = ContextVar("agentdesk_db_alias", default=DEFAULT_DB_ALIAS)


@contextmanager
def acting_for(*, user_id: int | None = None, api_key: str = "") -> Iterator[None]:
    """Run a web request's work for this user or API key (or, with neither, for nobody:
    its tenant contexts then see no tenant at all)."""
    token = _principal.set(Principal(user_id=user_id, api_key=api_key))
    try:
        yield
    finally:
        _principal.reset(token)


def current_alias() -> str:
    """The DATABASES alias of the current context (`platform` inside platform_context)."""
    return _alias.get()


class ContextRouter:
    """Send the ORM to the current context's connection (settings.DATABASE_ROUTERS)."""

    def db_for_read(self, model, **hints):
        return _alias.get()

    def db_for_write(self, model, **hints):
        return _alias.get()

    def allow_relation(self, obj1, obj2, **hints):
        return True

    def allow_migrate(self, db, app_label, **hints):
        return db == DEFAULT_DB_ALIAS


def _has_platform_connection() -> bool:
    from django.conf import settings

    return PLATFORM_ALIAS in settings.DATABASES


# The context this connection's current transaction runs in, as set by _role_context.
_APPLIED = "_agentdesk_rls_applied"


@contextmanager
def _role_context(role: str, settings: dict[str, str], *, platform: bool = False) -> Iterator[None]:
    alias = _alias.get()
    if platform and alias == DEFAULT_DB_ALIAS and _has_platform_connection():
        # Its own connection, so its own transaction: platform credentials never serve the
        # application's work. Inside it, narrower contexts stay on that connection.
        alias = PLATFORM_ALIAS
    alias_token = _alias.set(alias)
    try:
        with _on_connection(connections[alias], alias, role, settings):
            yield
    finally:
        _alias.reset(alias_token)


@contextmanager
def _on_connection(conn, alias: str, role: str, settings: dict[str, str]) -> Iterator[None]:
    nested = conn.in_atomic_block
    wanted = (role, tuple(sorted(settings.items())))
    current = getattr(conn, _APPLIED, None) if nested else None
    with transaction.atomic(using=alias):
        if conn.vendor != "postgresql":
            yield
            return
        if current == wanted:
            yield  # the enclosing transaction runs in this very context: a savepoint is all
            return
        names = sorted(settings)
        with conn.cursor() as cursor:
            if nested:  # what to put back when the inner context ends
                cursor.execute(
                    "SELECT current_user, session_user, "
                    + ", ".join(f"current_setting('{name}', true)" for name in names)
                )
                previous_role, session_user, *previous = cursor.fetchone()
            _apply(cursor, role, {name: settings[name] for name in names})
        setattr(conn, _APPLIED, wanted)
        try:
            yield
            if nested:
                # A released savepoint keeps SET LOCAL values: put back what the enclosing
                # transaction had, so an inner context never widens or narrows an outer one.
                with conn.cursor() as cursor:
                    _apply(
                        cursor,
                        None if previous_role == session_user else previous_role,
                        {name: value or "" for name, value in zip(names, previous, strict=True)},
                    )
        finally:
            setattr(conn, _APPLIED, current)


def _apply(cursor, role: str | None, settings: dict[str, str]) -> None:
    """SET LOCAL ROLE and the settings, in one statement (set_config('role', …, true) is
    SET LOCAL ROLE): a round trip per transaction, not one per setting."""
    values = [("role", role or "none"), *settings.items()]
    calls = ", ".join("set_config(%s, %s, true)" for _ in values)
    try:
        cursor.execute(f"SELECT {calls}", [v for item in values for v in item])
    except DatabaseError as exc:
        if role == PLATFORM_ROLE:
            raise ImproperlyConfigured(
                "Platform work needs the agentdesk_platform role's own credentials: set "
                "DESK_PLATFORM_DATABASE_URL (README, Production)."
            ) from exc
        raise


def _proof(user_id: int | None) -> tuple[str, dict[str, str]]:
    principal = _principal.get()
    if user_id is not None:
        principal = Principal(user_id=user_id, api_key=principal.api_key if principal else "")
    if principal is None:
        return WORKER_ROLE, {"agentdesk.user_id": "", "agentdesk.api_key": ""}
    return APP_ROLE, {
        "agentdesk.user_id": str(principal.user_id or ""),
        "agentdesk.api_key": principal.api_key,
    }


def tenant_context(tenant_ids: int | Iterable[int], *, user_id: int | None = None):
    """A transaction that may see only these tenants' rows (and the user's memberships).

    In a web request (or with `user_id`) the database shows only those of the tenants the
    user or API key has a right to; elsewhere it runs as the worker.
    """
    if isinstance(tenant_ids, int):
        tenant_ids = [tenant_ids]
    role, proof = _proof(user_id)
    return _role_context(
        role,
        {"agentdesk.tenant_ids": _ids_text(tenant_ids), "agentdesk.api_key_prefix": "", **proof},
    )


def lookup_context(*, user_id: int | None = None, api_key_prefix: str = ""):
    """A transaction that sees no tenant's rows, only a user's memberships or one API key."""
    return _role_context(
        APP_ROLE,
        {
            "agentdesk.tenant_ids": "",
            "agentdesk.user_id": str(user_id or ""),
            "agentdesk.api_key_prefix": api_key_prefix,
            "agentdesk.api_key": "",
        },
    )


def platform_context(purpose: str = ""):
    """A transaction that sees every tenant, on the platform role's own connection.

    Every use is counted by its purpose (by default, the calling function) and the counts
    go on the platform's audit chain (`_audit_platform_uses`); what people do with it
    their callers also record as events of their own (see tenants.services).
    """
    if not purpose:
        caller = sys._getframe(1)
        purpose = f"{caller.f_globals.get('__name__', '?')}.{caller.f_code.co_name}"
    return _platform_context(purpose)


@contextmanager
def _platform_context(purpose: str) -> Iterator[None]:
    outermost = _alias.get() == DEFAULT_DB_ALIAS
    with _role_context(PLATFORM_ROLE, {"agentdesk.tenant_ids": ""}, platform=True):
        if outermost:
            _audit_platform_uses(purpose)
        yield


class _PlatformUses:
    """This process's uses of the platform role since they were last recorded."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.since: float | None = None  # None: nothing recorded yet by this process


_uses = _PlatformUses()


def _audit_platform_uses(purpose: str) -> None:
    """Count one use; record the counts (`platform.used`, on the platform chain, in this
    very transaction) at a process's first use and then at its first use once
    DESK_PLATFORM_AUDIT_SECONDS have passed since the last record.

    A record a minute per process keeps every use on the trail without one event per
    scheduler poll (a short command's use is recorded at once); 0 records each use at once.
    """
    from django.conf import settings

    _uses.counts[purpose] += 1
    now = time.time()
    if _uses.since is not None and now - _uses.since < settings.DESK_PLATFORM_AUDIT_SECONDS:
        return
    from audit.services import Actor, record

    counts, since = dict(_uses.counts), _uses.since or now
    _uses.counts.clear()
    _uses.since = now
    record(
        tenant=None,
        actor=Actor.system(f"process {os.getpid()}"),
        action="platform.used",
        data={
            "uses": counts,
            "from": datetime.fromtimestamp(since, UTC).isoformat(),
            "to": datetime.fromtimestamp(now, UTC).isoformat(),
            "host": socket.gethostname(),
        },
    )


def tenant_of(table: str, row_id: int) -> int | None:
    """The tenant id of one row, found before that tenant's context can be set.

    Reads only the tenant column of a fixed list of tables; a task re-derives its tenant
    this way from the id it carries.
    """
    column = dict(TENANT_TABLES)[table]
    with platform_context(f"tenant_of {table}"), connections[current_alias()].cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [row_id])
        row = cursor.fetchone()
    return row[0] if row else None


# --- DDL, used by the migration ------------------------------------------------------------

FUNCTIONS_SQL = f"""
-- The proof function reads tables later migrations create; its body is checked when called.
SET LOCAL check_function_bodies = off;
CREATE OR REPLACE FUNCTION agentdesk_requested_tenant_ids() RETURNS bigint[]
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        string_to_array(nullif(current_setting('agentdesk.tenant_ids', true), ''), ',')::bigint[],
        '{{}}'::bigint[])
$$;
CREATE OR REPLACE FUNCTION agentdesk_user_id() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nullif(current_setting('agentdesk.user_id', true), '')::bigint
$$;
-- The requested tenants the transaction proves a right to: an active user's membership or
-- open break-glass grant, or the active API key whose secret it holds (its SHA-256 is what
-- the table keeps). A grant is open at the statement's time (not the transaction's start:
-- a grant opened earlier in a long transaction counts). Runs as the platform role
-- (SECURITY DEFINER) to read those rows, which the app role cannot. Policies call it as
-- `(SELECT agentdesk_tenant_ids())`: once a query.
CREATE OR REPLACE FUNCTION agentdesk_tenant_ids() RETURNS bigint[]
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT coalesce(array_agg(requested.id), '{{}}'::bigint[])
    FROM unnest(agentdesk_requested_tenant_ids()) AS requested (id)
    WHERE requested.id IN (
        SELECT m.tenant_id FROM tenants_membership m
        JOIN auth_user u ON u.id = m.user_id AND u.is_active
        WHERE m.user_id = agentdesk_user_id()
        UNION ALL
        SELECT g.tenant_id FROM tenants_breakglassgrant g
        JOIN auth_user u ON u.id = g.user_id AND u.is_active
        WHERE g.user_id = agentdesk_user_id() AND g.ended_at IS NULL
            AND g.started_at <= statement_timestamp() AND g.expires_at > statement_timestamp()
        UNION ALL
        SELECT k.tenant_id FROM tenants_apikey k
        WHERE nullif(current_setting('agentdesk.api_key', true), '') IS NOT NULL
            AND k.prefix = split_part(current_setting('agentdesk.api_key', true), '_', 2)
            AND k.key_hash = encode(sha256(convert_to(
                current_setting('agentdesk.api_key', true), 'UTF8')), 'hex')
            AND k.revoked_at IS NULL
    )
$$;
ALTER FUNCTION agentdesk_tenant_ids() OWNER TO {PLATFORM_ROLE};
REVOKE ALL ON FUNCTION agentdesk_tenant_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agentdesk_tenant_ids() TO {APP_ROLE};
"""

ROLES_SQL = f"""
DO $$
BEGIN
    -- Three logins, none superuser or BYPASSRLS, all NOINHERIT (a policy for one role must
    -- not apply to another through membership).
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WORKER_ROLE}') THEN
        CREATE ROLE {WORKER_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PLATFORM_ROLE}') THEN
        CREATE ROLE {PLATFORM_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
    IF (SELECT rolinherit OR NOT rolcanlogin FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        ALTER ROLE {APP_ROLE} LOGIN NOINHERIT;
    END IF;
    IF (SELECT rolinherit OR NOT rolcanlogin FROM pg_roles WHERE rolname = '{PLATFORM_ROLE}') THEN
        ALTER ROLE {PLATFORM_ROLE} LOGIN NOINHERIT;
    END IF;
    -- The application role may become nothing else (it once could become the platform).
    IF pg_has_role('{APP_ROLE}', '{PLATFORM_ROLE}', 'MEMBER') THEN
        REVOKE {PLATFORM_ROLE} FROM {APP_ROLE};
    END IF;
    -- Wider roles may narrow themselves: the worker to the app role (work for one user),
    -- the platform to either (a tenant's context inside platform work).
    IF NOT pg_has_role('{WORKER_ROLE}', '{APP_ROLE}', 'MEMBER') THEN
        GRANT {APP_ROLE} TO {WORKER_ROLE};
    END IF;
    IF NOT pg_has_role('{PLATFORM_ROLE}', '{APP_ROLE}', 'MEMBER') THEN
        GRANT {APP_ROLE} TO {PLATFORM_ROLE};
    END IF;
    IF NOT pg_has_role('{PLATFORM_ROLE}', '{WORKER_ROLE}', 'MEMBER') THEN
        GRANT {WORKER_ROLE} TO {PLATFORM_ROLE};
    END IF;
END $$;
"""


# Append-only tables: the roles may SELECT and INSERT, and UPDATE only these columns (the
# audit retention's removal of old payloads; the chain head moving on). Triggers of the
# audit app refuse anything else, whoever asks (audit/migrations/0003_append_only.py).
APPEND_ONLY = {
    "audit_auditevent": ("data", "reason", "payload_redacted_at"),
    "audit_auditchain": ("last_seq", "last_hash"),
}


def append_only_sql(roles: str) -> str:
    blocks = []
    for table, columns in APPEND_ONLY.items():
        names = ", ".join(f"'{c}'" for c in columns)
        blocks.append(f"""
DO $$
BEGIN
    IF (SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema()
        AND table_name = '{table}' AND column_name IN ({names})) = {len(columns)} THEN
        REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM {roles};
        GRANT UPDATE ({", ".join(columns)}) ON {table} TO {roles};
    END IF;
END $$;""")
    return "\n".join(blocks)


def grants_sql() -> str:
    roles = f"{APP_ROLE}, {WORKER_ROLE}, {PLATFORM_ROLE}"
    return f"""
GRANT USAGE ON SCHEMA public TO {roles};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {roles};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {roles};
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {roles};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {roles};
{append_only_sql(roles)}
"""


def _policies(table: str, *, app: str, app_check: str, worker: str) -> str:
    return f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON {table};
DROP POLICY IF EXISTS worker_access ON {table};
DROP POLICY IF EXISTS platform_access ON {table};
CREATE POLICY tenant_isolation ON {table} TO {APP_ROLE} USING ({app}) WITH CHECK ({app_check});
CREATE POLICY worker_access ON {table} TO {WORKER_ROLE} USING ({worker}) WITH CHECK ({worker});
CREATE POLICY platform_access ON {table} TO {PLATFORM_ROLE} USING (true) WITH CHECK (true);
"""


def policy_sql(table: str, column: str) -> str:
    # `(SELECT f())`: evaluated once a query (an init plan), so the tenant index stays usable.
    proved = f"{column} = ANY ((SELECT agentdesk_tenant_ids())::bigint[])"
    requested = f"{column} = ANY ((SELECT agentdesk_requested_tenant_ids())::bigint[])"
    extra = EXTRA_VISIBILITY.get(table)
    return _policies(
        table,
        app=f"{proved} OR {extra}" if extra else proved,
        app_check=proved,
        worker=f"{requested} OR {extra}" if extra else requested,
    )


def rate_window_policy_sql() -> str:
    # Counters belong to a key; they are visible where the key is.
    through_key = "EXISTS (SELECT 1 FROM tenants_apikey k WHERE k.id = api_key_id)"
    return _policies(
        "tenants_apiratewindow", app=through_key, app_check=through_key, worker=through_key
    )


def enable_sql(existing_tables: set[str]) -> str:
    """Roles, functions, grants and policies; idempotent. Tables a later migration creates
    are skipped here and covered by that migration running this again."""
    return "\n".join(
        [
            ROLES_SQL,
            FUNCTIONS_SQL,
            grants_sql(),
            *(policy_sql(t, c) for t, c in TENANT_TABLES if t in existing_tables),
            rate_window_policy_sql() if "tenants_apiratewindow" in existing_tables else "",
        ]
    )


def disable_sql(existing_tables: set[str]) -> str:
    statements = []
    for table, _ in [*TENANT_TABLES, ("tenants_apiratewindow", "")]:
        if table not in existing_tables:
            continue
        statements.append(
            f"DROP POLICY IF EXISTS tenant_isolation ON {table};"
            f"DROP POLICY IF EXISTS worker_access ON {table};"
            f"DROP POLICY IF EXISTS platform_access ON {table};"
            f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY;"
            f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;"
        )
    return "\n".join(statements)


def migration_operation():
    """The migration step that (re)applies roles, grants and policies to the tables that
    exist at that point; each migration adding a tenant table ends with one of these."""
    from django.db import migrations

    def tables(schema_editor) -> set[str]:
        return set(schema_editor.connection.introspection.table_names())

    def enable(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(enable_sql(tables(schema_editor)))

    def disable(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(disable_sql(tables(schema_editor)))

    return migrations.RunPython(enable, disable, elidable=False)
