import pytest

from roles.models import Role


@pytest.fixture
def reporter_role(northwind) -> Role:
    return Role.objects.get(tenant=northwind, slug="month-end-reporter")
