"""The runs list's search on PostgreSQL, through a function that can use the trigram index.

Under row-level security PostgreSQL evaluates a query's own conditions after the policy's,
unless their operators are LEAKPROOF; LIKE is not, so the trigram index (0010) went unused
and a search read every run of the tenant (365 ms for 300,000 runs). agentdesk_run_search
runs as the platform role, whose policy lets every row through, and applies the tenant rule
itself: the ids of the runs whose search text matches, of the tenants the transaction proves
a right to (agentdesk_tenant_ids, as the policies do). The app role may call it; the query
around it still reads runs under its own policy.
"""

from django.db import migrations

from tenants.rls import APP_ROLE, PLATFORM_ROLE

CREATE = f"""
CREATE OR REPLACE FUNCTION agentdesk_run_search(pattern text) RETURNS SETOF bigint
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT r.id FROM desk_run r
    WHERE UPPER(r.search_text) LIKE UPPER(pattern)
        AND r.tenant_id = ANY (agentdesk_tenant_ids())
$$;
ALTER FUNCTION agentdesk_run_search(text) OWNER TO {PLATFORM_ROLE};
REVOKE ALL ON FUNCTION agentdesk_run_search(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION agentdesk_run_search(text) TO {APP_ROLE};
"""

DROP = "DROP FUNCTION IF EXISTS agentdesk_run_search(text);"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("desk", "0011_page_indexes")]

    operations = [migrations.RunPython(create, drop)]
