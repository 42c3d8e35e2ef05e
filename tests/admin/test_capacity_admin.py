"""What each tenant is using now, on the tenants' list and page: runs by state, recent
throughput against the reserved rate, this month's usage against the budgets."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.admin import site
from django.urls import reverse
from django.utils import timezone

from audit.services import Actor
from desk.models import ModelPrice, Run, StepRun, TenantUsage
from desk.services import month_start
from tenants.models import Tenant
from tenants.services import update_tenant_settings
from tests.admin.conftest import start_intake
from tests.runtime import advance

CHANGELIST_URL = reverse("admin:tenants_tenant_changelist")


@pytest.fixture
def busy_harbor(harbor, users):
    """Harbor at one run at a time: one run parked at its gate, one held by the token budget,
    one running and one queued; two steps done, by the first run."""
    ModelPrice.objects.create(
        model="offline-1", prompt_per_million=Decimal(1000), completion_per_million=Decimal(2000)
    )
    system = Actor.system("tests")
    update_tenant_settings(
        tenant=harbor,
        actor=system,
        changes={"max_concurrent_runs": 1, "monthly_cost_budget": Decimal(10)},
    )
    runs = [start_intake(harbor, users["ops"]) for _ in range(4)]
    assert [Run.objects.get(pk=run.pk).status for run in runs] == ["running"] + ["queued"] * 3

    advance(runs[0].pk)  # parks at the draft's review, freeing its slot
    update_tenant_settings(tenant=harbor, actor=system, changes={"monthly_token_budget": 100})
    advance(runs[1].pk)  # over the token budget: held before its first model call

    assert [Run.objects.get(pk=run.pk).status for run in runs] == [
        Run.Status.WAITING_APPROVAL,
        Run.Status.ON_HOLD,
        Run.Status.RUNNING,
        Run.Status.QUEUED,
    ]
    harbor.refresh_from_db()
    return harbor


def row_of(response, tenant):
    return next(obj for obj in response.context["cl"].result_list if obj.pk == tenant.pk)


def test_the_tenant_list_shows_what_each_tenant_is_using(client, users, busy_harbor, northwind):
    usage = TenantUsage.objects.get(tenant=busy_harbor, month=month_start(timezone.now()))
    tokens = usage.prompt_tokens + usage.completion_tokens
    cost = (usage.prompt_tokens * 1000 + usage.completion_tokens * 2000) / Decimal(1_000_000)
    client.force_login(users["ops"])

    response = client.get(CHANGELIST_URL)

    assert response.status_code == 200
    harbor_row, northwind_row = row_of(response, busy_harbor), row_of(response, northwind)
    admin = site._registry[Tenant]
    shown = {
        column: str(getattr(admin, column)(harbor_row))
        for column in ("running", "queued", "waiting", "on_hold", "throughput")
    }
    assert shown == {
        "running": "1 of 1",
        "queued": "1",
        "waiting": "1",
        "on_hold": "1",
        "throughput": "2 · 0.4/min of 60/min reserved",
    }
    assert tokens > 100
    assert admin.tokens_this_month(harbor_row) == (
        f'<span class="desk-overdue">{tokens:,} of 100 ({tokens:.0f}%)</span>'
    )
    assert admin.cost_this_month(harbor_row) == f"{cost:,.2f} of 10.00 ({cost * 10:.0f}%)"
    assert (northwind_row.running_runs, northwind_row.queued_runs, northwind_row.month_tokens) == (
        0,
        0,
        0,
    )
    assert admin.tokens_this_month(northwind_row) == "0 (no budget)"
    content = response.content.decode()
    assert "2 · 0.4/min of 60/min reserved" in content
    assert f"{tokens:,} of 100 ({tokens:.0f}%)" in content


def test_only_steps_of_the_last_five_minutes_count(client, users, busy_harbor):
    StepRun.objects.filter(tenant=busy_harbor, key="classify").update(
        finished_at=timezone.now() - timedelta(minutes=6)
    )
    client.force_login(users["ops"])

    response = client.get(CHANGELIST_URL)

    assert row_of(response, busy_harbor).recent_steps == 1


def test_the_tenant_page_shows_the_same_figures_and_the_lifted_budget(client, users, busy_harbor):
    client.force_login(users["ops"])

    response = client.get(reverse("admin:tenants_tenant_change", args=[busy_harbor.pk]))

    content = response.content.decode()
    assert response.status_code == 200
    assert "1 of 1" in content
    assert "2 · 0.4/min of 60/min reserved" in content
    assert "Budget lifted until" in content
