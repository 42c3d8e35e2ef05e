"""A property-based fuzz of the intake API from its own OpenAPI document (schemathesis).

The real Django app (WSGI) answers, authenticated with a real key of a tenant whose roles
are published. For every operation: no 5xx, every status and header documented, every
response matching its schema and content type, schema-valid requests accepted and invalid
ones refused. Derandomized with a fixed number of examples, so a run is repeatable.
"""

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings

from audit.services import Actor
from desk.openapi import OPENAPI
from tenants.services import create_api_key

schema = schemathesis.openapi.from_dict(OPENAPI)
schema.app = get_wsgi_application()


@pytest.fixture
def fuzz_key(harbor):
    _, key = create_api_key(
        tenant=harbor, name="fuzz", rate_limit_per_minute=100_000, actor=Actor.system("t")
    )
    return key


@schema.parametrize()
@settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_its_documented_contract_for_any_request(case, fuzz_key):
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_key}"})
