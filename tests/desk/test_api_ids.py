"""Ids through the intake API say nothing of another tenant's volume.

With sequential ids, a tenant starting runs through the API reads the others' traffic off
the gaps (1041, 1057, … : fifteen runs by someone else in between). Two tenants here start
runs alternately; the ids each sees are far apart, in no order, and their gaps are not the
number of rows anyone made.
"""

from __future__ import annotations

import itertools

import pytest

from approvals.models import ApprovalRequest
from audit.services import Actor
from desk.models import Run
from tenants.services import create_api_key
from tests.conftest import INTAKE_INPUT
from tests.desk.test_api import get, post
from tests.ids import assert_ids_are_far_apart, assert_ids_reveal_no_volume
from tests.runtime import advance

RUNS_EACH = 6


@pytest.fixture
def keys(harbor, northwind):
    return [
        create_api_key(tenant=tenant, name="intake", actor=Actor.system("t"))[1]
        for tenant in (harbor, northwind)
    ]


def start_alternately(client, keys) -> list[int]:
    ids = []
    for number, key in itertools.product(range(RUNS_EACH), keys):
        response = post(
            client,
            key,
            {"role": "intake-coordinator", "input": INTAKE_INPUT},
            **{"Idempotency-Key": f"message-{number}"},
        )
        assert response.status_code == 201
        ids.append(response.json()["id"])
    return ids


def test_run_ids_of_two_tenants_do_not_reveal_each_others_volume(client, keys, harbor):
    ids = start_alternately(client, keys)

    harbors_ids = ids[0::2]
    assert set(Run.objects.filter(tenant=harbor).values_list("pk", flat=True)) == set(harbors_ids)
    assert_ids_reveal_no_volume(ids)
    # What harbor sees alone: the gaps between its own runs' ids do not count northwind's.
    assert_ids_are_far_apart(harbors_ids)


def test_approval_request_ids_of_two_tenants_do_not_reveal_each_others_volume(client, keys):
    run_ids = start_alternately(client, keys)

    request_ids = []
    for run_id, key in zip(run_ids, itertools.cycle(keys)):
        advance(run_id)
        pending = get(client, key, f"/api/v1/runs/{run_id}").json()["pending_approval"]
        request_ids.append(pending["id"])

    assert len(request_ids) == ApprovalRequest.objects.count() == 2 * RUNS_EACH
    assert_ids_reveal_no_volume(request_ids)
    assert_ids_are_far_apart(request_ids[0::2])
