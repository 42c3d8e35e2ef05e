"""Counting a page's queries: the statements it runs, not the transaction and
row-level-security context PostgreSQL adds around them (tenants.rls)."""

from __future__ import annotations

CONTEXT = (
    "SAVEPOINT",
    "RELEASE SAVEPOINT",
    "ROLLBACK TO SAVEPOINT",
    "SET LOCAL ROLE",
    "SELECT set_config(",
    "SELECT current_user",
)


def page_statements(captured) -> list[str]:
    """The SQL of a CaptureQueriesContext's queries, context statements left out."""
    return [q["sql"] for q in captured.captured_queries if not q["sql"].startswith(CONTEXT)]
