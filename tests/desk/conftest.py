import pytest

from audit.services import Actor
from desk import engine
from desk.services import start_run
from roles.models import Role
from tests.conftest import INTAKE_INPUT


@pytest.fixture
def start_intake(harbor, intake_role):
    def start(**overrides):
        return start_run(
            tenant=harbor,
            role=intake_role,
            input={**INTAKE_INPUT, **overrides},
            actor=Actor.system("tests"),
            via="command",
        )

    return start


@pytest.fixture
def parked_intake(start_intake):
    """An intake run taken to its review gate (the drafted reply)."""
    run = start_intake()
    engine.advance_run(run_id=run.pk)
    run.refresh_from_db()
    return run


@pytest.fixture
def reporter_role(northwind) -> Role:
    return Role.objects.get(tenant=northwind, slug="month-end-reporter")
