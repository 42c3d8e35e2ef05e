"""PostgreSQL row-level security: the tenant boundary beneath the ORM.

Every tenant-scoped table has a policy for the application role `agentdesk_app` that shows
only rows of the tenants set for the current transaction (`agentdesk.tenant_ids`, set with
SET LOCAL, so it cannot outlive the transaction on a pooled connection). With no tenant
set a tenant table reads as empty. The role `agentdesk_platform` sees every row; code
takes it only in `platform_context`, which is audited by its callers.

Every request, task and command runs its database work inside `tenant_context(...)` or
`platform_context(...)`. On SQLite these are plain transactions: application-level
scoping (tenants.scoping) is the only boundary there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from django.db import connection, transaction

APP_ROLE = "agentdesk_app"
PLATFORM_ROLE = "agentdesk_platform"

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


# The context this connection's current transaction runs in, as set by _role_context.
_APPLIED = "_agentdesk_rls_applied"


@contextmanager
def _role_context(role: str, settings: dict[str, str]) -> Iterator[None]:
    nested = connection.in_atomic_block
    wanted = (role, tuple(sorted(settings.items())))
    current = getattr(connection, _APPLIED, None) if nested else None
    with transaction.atomic():
        if not is_enabled():
            yield
            return
        if current == wanted:
            yield  # the enclosing transaction runs in this very context: a savepoint is all
            return
        names = sorted(settings)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_user, session_user, "
                + ", ".join(f"current_setting('{name}', true)" for name in names)
            )
            previous_role, session_user, *previous = cursor.fetchone()
            _apply(cursor, role, {name: settings[name] for name in names})
        setattr(connection, _APPLIED, wanted)
        try:
            yield
            if nested:
                # A released savepoint keeps SET LOCAL values: put back what the enclosing
                # transaction had, so an inner context never widens or narrows an outer one.
                with connection.cursor() as cursor:
                    _apply(
                        cursor,
                        None if previous_role == session_user else previous_role,
                        {name: value or "" for name, value in zip(names, previous, strict=True)},
                    )
        finally:
            setattr(connection, _APPLIED, current)


def _apply(cursor, role: str | None, settings: dict[str, str]) -> None:
    cursor.execute(f'SET LOCAL ROLE "{role}"' if role else "SET LOCAL ROLE NONE")
    calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
    cursor.execute(f"SELECT {calls}", [v for item in settings.items() for v in item])


def tenant_context(tenant_ids: int | Iterable[int], *, user_id: int | None = None):
    """A transaction that may see only these tenants' rows (and the user's memberships)."""
    if isinstance(tenant_ids, int):
        tenant_ids = [tenant_ids]
    return _role_context(
        APP_ROLE,
        {
            "agentdesk.tenant_ids": _ids_text(tenant_ids),
            "agentdesk.user_id": str(user_id or ""),
            "agentdesk.api_key_prefix": "",
        },
    )


def lookup_context(*, user_id: int | None = None, api_key_prefix: str = ""):
    """A transaction that sees no tenant's rows, only a user's memberships or one API key."""
    return _role_context(
        APP_ROLE,
        {
            "agentdesk.tenant_ids": "",
            "agentdesk.user_id": str(user_id or ""),
            "agentdesk.api_key_prefix": api_key_prefix,
        },
    )


def platform_context():
    """A transaction that sees every tenant. Callers audit why (see tenants.services)."""
    return _role_context(PLATFORM_ROLE, {"agentdesk.tenant_ids": ""})


def tenant_of(table: str, row_id: int) -> int | None:
    """The tenant id of one row, found before that tenant's context can be set.

    Reads only the tenant column of a fixed list of tables; a task re-derives its tenant
    this way from the id it carries.
    """
    column = dict(TENANT_TABLES)[table]
    with platform_context(), connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [row_id])
        row = cursor.fetchone()
    return row[0] if row else None


# --- DDL, used by the migration ------------------------------------------------------------

FUNCTIONS_SQL = """
CREATE OR REPLACE FUNCTION agentdesk_tenant_ids() RETURNS bigint[]
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        string_to_array(nullif(current_setting('agentdesk.tenant_ids', true), ''), ',')::bigint[],
        '{}'::bigint[])
$$;
CREATE OR REPLACE FUNCTION agentdesk_user_id() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nullif(current_setting('agentdesk.user_id', true), '')::bigint
$$;
"""

ROLES_SQL = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT;
    END IF;
    -- NOINHERIT: the app role may SET ROLE to the platform role, but the platform role's
    -- see-everything policy must not apply to the app role through membership.
    IF (SELECT rolinherit FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        ALTER ROLE {APP_ROLE} NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PLATFORM_ROLE}') THEN
        CREATE ROLE {PLATFORM_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
    IF NOT pg_has_role('{APP_ROLE}', '{PLATFORM_ROLE}', 'MEMBER') THEN
        GRANT {PLATFORM_ROLE} TO {APP_ROLE};
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
    roles = f"{APP_ROLE}, {PLATFORM_ROLE}"
    return f"""
GRANT USAGE ON SCHEMA public TO {roles};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {roles};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {roles};
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {roles};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {roles};
{append_only_sql(roles)}
"""


def policy_sql(table: str, column: str) -> str:
    visible = f"{column} = ANY (agentdesk_tenant_ids())"
    extra = EXTRA_VISIBILITY.get(table)
    using = f"{visible} OR {extra}" if extra else visible
    return f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON {table};
DROP POLICY IF EXISTS platform_access ON {table};
CREATE POLICY tenant_isolation ON {table} TO {APP_ROLE} USING ({using}) WITH CHECK ({visible});
CREATE POLICY platform_access ON {table} TO {PLATFORM_ROLE} USING (true) WITH CHECK (true);
"""


def rate_window_policy_sql() -> str:
    # Counters belong to a key; they are visible where the key is.
    table = "tenants_apiratewindow"
    through_key = "EXISTS (SELECT 1 FROM tenants_apikey k WHERE k.id = api_key_id)"
    return f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON {table};
DROP POLICY IF EXISTS platform_access ON {table};
CREATE POLICY tenant_isolation ON {table} TO {APP_ROLE}
    USING ({through_key}) WITH CHECK ({through_key});
CREATE POLICY platform_access ON {table} TO {PLATFORM_ROLE} USING (true) WITH CHECK (true);
"""


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
