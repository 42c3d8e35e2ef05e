"""The ids in admin URLs (/admin/<app>/<model>/<id>/change/, history pages, reviewer links)
say nothing of another tenant's volume: every tenant-scoped model the admin shows has
random ids, far apart whatever order the rows were made in."""

from __future__ import annotations

import pytest

from tenants.models import BreakGlassGrant
from tenants.services import open_break_glass
from tests.admin.conftest import BREAK_GLASS_REASON, make_platform_staff
from tests.admin.test_tenant_sweep import TENANT_SCOPED, label, rows_of, url
from tests.ids import CLOSE, assert_ids_are_far_apart


@pytest.mark.parametrize("model", TENANT_SCOPED, ids=label)
def test_admin_urls_of_two_tenants_do_not_reveal_each_others_volume(world, model):
    if model is BreakGlassGrant:  # the world has harbor's only
        staff = make_platform_staff("sre.ids")
        open_break_glass(user=staff, tenant=world.northwind, reason=BREAK_GLASS_REASON)
    ids = [
        pk
        for tenant in (world.harbor, world.northwind)
        for pk in rows_of(model, tenant).values_list("pk", flat=True)
    ]

    assert len(ids) >= 2, f"the world has too few {label(model)} rows to compare"
    assert_ids_are_far_apart(ids)
    assert min(ids) > CLOSE, "an id counts the rows made before it"
    # The id in the page's URL is that random key.
    assert url(model, "change", ids[0]).endswith(f"/{ids[0]}/change/")


def test_history_rows_of_two_tenants_do_not_reveal_each_others_volume(world):
    history_ids = [
        history_id
        for model in TENANT_SCOPED
        if hasattr(model, "history")
        for tenant in (world.harbor, world.northwind)
        for history_id in model.history.filter(
            **({"id": tenant.pk} if model is type(tenant) else {"tenant": tenant})
        ).values_list("history_id", flat=True)
    ]

    assert len(history_ids) > 10
    assert_ids_are_far_apart(history_ids)
    assert min(history_ids) > CLOSE
