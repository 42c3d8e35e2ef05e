"""A property-based fuzz of the intake API from its own OpenAPI document (schemathesis).

The real Django app (WSGI) answers, authenticated with a real key of a tenant whose roles
are published. For every operation: no 5xx, every status and header documented, every
response matching its schema and content type, schema-valid requests accepted and invalid
ones refused. Derandomized with a fixed number of examples, so a run is repeatable.
"""

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings

from audit.services import Actor
from desk.models import Run
from desk.openapi import OPENAPI
from roles.services import create_role, create_role_version
from tenants.safe_json import UNSAFE_CHARACTERS
from tenants.services import create_api_key
from tests.publishing import publish

schema = schemathesis.openapi.from_dict(OPENAPI)
schema.app = get_wsgi_application()
start_run_operation = schema.include(path="/api/v1/runs", method="POST")

FUZZ_SETTINGS = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(autouse=True)
def keep_the_tests_connection():
    """The WSGI handler closes the database connection after each request (a connection
    in a transaction is closed as unusable on PostgreSQL), and the test's transaction with
    it; Django's test client keeps it open the same way, for the same reason."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_key(harbor):
    _, key = create_api_key(
        tenant=harbor, name="fuzz", rate_limit_per_minute=100_000, actor=Actor.system("t")
    )
    return key


@pytest.fixture
def free_form(harbor):
    """A published role whose input schema is any object: what the document says of input."""
    actor = Actor.system("t")
    role = create_role(tenant=harbor, slug="free-form", name="Free form", actor=actor)
    definition = {
        "input_schema": {"type": "object"},
        "steps": [{"key": "check", "kind": "review", "category": "internal"}],
    }
    publish(create_role_version(role=role, definition=definition, actor=actor))
    return role


@schema.parametrize()
@FUZZ_SETTINGS
def test_the_api_keeps_its_documented_contract_for_any_request(case, fuzz_key):
    case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_key}"})


@start_run_operation.parametrize()
@FUZZ_SETTINGS
def test_starting_runs_of_a_real_role_keeps_the_documented_contract(case, fuzz_key, free_form):
    # Random role names are all 404s: name a real one instead of any valid name, so valid
    # bodies start runs (an invalid role stays, for the server to refuse).
    body = case.body
    role = body.get("role") if isinstance(body, dict) else None
    if isinstance(role, str) and role and not UNSAFE_CHARACTERS.search(role):
        body["role"] = free_form.slug

    response = case.call_and_validate(headers={"Authorization": f"Bearer {fuzz_key}"})

    if response.status_code == 201:
        assert Run.objects.filter(pk=response.json()["id"], role=free_form).exists()
