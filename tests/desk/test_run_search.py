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
def test_the_runs_list_searches_through_the_function_the_trigram_index_serves(users, runs):
    from django.contrib.admin.sites import site
    from django.test import RequestFactory

    request = RequestFactory().get(CHANGELIST, {"q": "maya.chen@example.com"})
    request.user = users["reviewer.harbor"]
    queryset, _ = site._registry[Run].get_search_results(
        request, Run.objects.all(), "maya.chen@example.com"
    )
    assert "agentdesk_run_search" in str(queryset.query)
    # What the function reads, as the platform role it runs as: the trigram index.
    with rls.platform_context(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            "EXPLAIN SELECT id FROM desk_run WHERE UPPER(search_text) LIKE UPPER(%s)",
            ["%maya.chen@example.com%"],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "run_search_trgm" in plan, plan


def search_function(pattern: str) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT agentdesk_run_search(%s)", [pattern])
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.postgres
def test_the_search_function_returns_no_run_of_another_tenant(users, runs, harbor, northwind):
    reviewer = users["reviewer.harbor"]  # a member of harbor only

    with rls.tenant_context(harbor.pk, user_id=reviewer.pk):
        mine = search_function("%maya.chen@example.com%")
    with rls.tenant_context([harbor.pk, northwind.pk], user_id=reviewer.pk):
        asked_for_both = search_function("%maya.chen@example.com%")

    assert mine == {runs["maya"]}
    assert asked_for_both == {runs["maya"]}  # northwind's run: no membership, no proof


@pytest.mark.postgres
def test_the_search_function_with_no_tenant_proved_returns_nothing(users, runs, northwind):
    with rls.lookup_context(user_id=users["reviewer.harbor"].pk):
        nothing_asked = search_function("%")
    with rls.tenant_context(northwind.pk, user_id=users["reviewer.harbor"].pk):
        not_a_member = search_function("%")

    assert nothing_asked == set() and not_a_member == set()


@pytest.mark.postgres
def test_the_worker_role_may_not_call_the_search_function(runs, harbor):
    from django.db import DatabaseError

    with pytest.raises(DatabaseError, match="permission denied"), rls.tenant_context(harbor.pk):
        search_function("%")  # outside a request: the worker role


def test_like_wildcards_in_a_search_are_taken_literally(client, users, runs):
    reviewer = users["reviewer.harbor"]

    assert found(client, reviewer, "%") == set()
    assert found(client, reviewer, "maya_chen") == set()
    assert found(client, reviewer, '"lease question"') == {runs["maya"]}


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
