"""The runs list's search finds a run by its client (e-mail, or the name of the client
record the e-mail names), its subject or its role, only among the user's tenants, and on
PostgreSQL through the trigram index."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from audit.services import Actor
from desk.models import Run
from desk.services import start_run
from roles.models import Role
from tenants import rls

CHANGELIST = reverse("admin:desk_run_changelist")


@pytest.fixture
def runs(harbor, northwind, intake_role):
    """Two harbor runs from two clients, and a northwind run from harbor's first client."""

    def start(tenant, role, email, subject, body):
        input = {"from_email": email, "subject": subject, "body": body}
        run = start_run(
            tenant=tenant, role=role, input=input, actor=Actor.system("tests"), via="command"
        )
        return run.pk

    northwind_role = Role.objects.get(tenant=northwind, slug=intake_role.slug)
    return {
        "maya": start(harbor, intake_role, "Maya.Chen@example.com", "Lease question", "Hi"),
        "tom": start(harbor, intake_role, "tom.alvarez@example.com", "Invoice", "Hello"),
        "elsewhere": start(northwind, northwind_role, "maya.chen@example.com", "Lease", "x"),
    }


def found(client, user, query: str) -> set[int]:
    client.force_login(user)
    response = client.get(CHANGELIST, {"q": query})
    assert response.status_code == 200
    return {run.pk for run in response.context["cl"].result_list}


@pytest.mark.parametrize(
    "query",
    ["maya.chen@example.com", "MAYA.CHEN@EXAMPLE.COM", "Maya Chen", "chen", "C-1001"],
    ids=["e-mail", "e-mail in capitals", "client name", "part of the name", "reference"],
)
def test_a_client_is_found_by_e_mail_name_or_reference(client, users, runs, query):
    assert found(client, users["reviewer.harbor"], query) & set(runs.values()) == {runs["maya"]}


def test_a_subject_and_words_in_any_order_find_the_run(client, users, runs):
    assert found(client, users["reviewer.harbor"], "invoice tom") & set(runs.values()) == {
        runs["tom"]
    }


def test_another_tenants_run_of_the_same_client_is_not_found(client, users, runs):
    # A reviewer of harbor only: northwind's run of the same e-mail stays out of sight.
    assert runs["elsewhere"] not in found(client, users["reviewer.harbor"], "maya.chen@example.com")


def test_a_term_that_matches_nothing_finds_nothing(client, users, runs):
    assert found(client, users["reviewer.harbor"], "no-such-client@example.com") == set()


def test_the_search_text_names_the_client_record_the_e_mail_belongs_to(runs):
    with rls.platform_context():
        text = Run.objects.get(pk=runs["maya"]).search_text
    assert "maya chen c-1001" in text and "lease question" in text
    assert "intake" in text


def test_the_migration_fills_existing_runs_as_start_run_writes_them(runs):
    from importlib import import_module

    from tenants.models import ClientRecord

    fill_runs = import_module("desk.migrations.0010_run_search_text").fill_runs
    with rls.platform_context():
        written = dict(Run.objects.filter(pk__in=runs.values()).values_list("pk", "search_text"))
        Run.objects.filter(pk__in=runs.values()).update(search_text="")
        fill_runs(Run, ClientRecord)
        filled = dict(Run.objects.filter(pk__in=runs.values()).values_list("pk", "search_text"))
    assert filled == written


@pytest.mark.postgres
def test_the_search_is_served_by_the_trigram_index(users, runs):
    from django.contrib.admin.sites import site
    from django.test import RequestFactory

    request = RequestFactory().get(CHANGELIST, {"q": "maya.chen@example.com"})
    request.user = users["reviewer.harbor"]
    model_admin = site._registry[Run]
    queryset, _ = model_admin.get_search_results(
        request, Run.objects.all(), "maya.chen@example.com"
    )
    with rls.platform_context(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        sql, params = queryset.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "run_search_trgm" in plan, plan


def test_a_long_body_is_cut_not_the_e_mail_or_subject():
    from desk.search import SEARCH_TEXT_MAX, search_text

    text = search_text(
        input={"body": "word " * 5000, "from_email": "a@example.com", "subject": "Lease"},
        role_name="Intake",
        role_slug="intake",
        started_by="api",
    )
    assert len(text) == SEARCH_TEXT_MAX
    assert "a@example.com" in text and "lease" in text
