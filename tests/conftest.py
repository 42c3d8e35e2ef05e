"""Shared fixtures. State is set up through the services, as a user would."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from audit.services import Actor
from desk.demo import seed_demo
from desk.services import start_run
from roles.models import Role
from tenants.models import Tenant

pytest_plugins = ["tests.fakes.conftest_plugin"]

INTAKE_INPUT = {
    "from_email": "maya.chen@example.com",
    "subject": "Lease question",
    "body": "Could we meet next week about the draft lease?",
}


def pytest_collection_modifyitems(config, items):
    """Skip PostgreSQL-only tests when the suite runs on SQLite."""
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (run with DATABASE_URL=postgres://...)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


# One audit signing key for the session, outside the repository; the clusters the e2e tests
# start read it (and the checkpoint folder) from the environment.
_AUDIT_DIR = Path(tempfile.mkdtemp(prefix="agentdesk-audit-"))
os.environ["AUDIT_SIGNING_KEY_FILE"] = str(_AUDIT_DIR / "signing.key")
os.environ["AUDIT_CHECKPOINT_DIR"] = str(_AUDIT_DIR / "checkpoints")
# Likewise one secrets key file (tenants.encryption) for the session and its clusters.
os.environ["DESK_SECRETS_KEY_FILE"] = str(_AUDIT_DIR / "secrets.keys")
os.environ.pop("DESK_SECRETS_KEYS", None)


@pytest.fixture(scope="session", autouse=True)
def audit_signing_key():
    from django.conf import settings

    from audit import signing

    settings.AUDIT_SIGNING_KEY_FILE = Path(os.environ["AUDIT_SIGNING_KEY_FILE"])
    if not settings.AUDIT_SIGNING_KEY_FILE.exists():
        signing.create_key()
    return signing.signer()


@pytest.fixture(scope="session", autouse=True)
def secrets_key_file():
    from django.conf import settings

    from tenants import encryption

    settings.DESK_SECRETS_KEY_FILE = Path(os.environ["DESK_SECRETS_KEY_FILE"])
    settings.DESK_SECRETS_KEYS = ""
    encryption.create_key_file()
    return settings.DESK_SECRETS_KEY_FILE


@pytest.fixture(autouse=True)
def audit_checkpoint_dir(settings, tmp_path_factory):
    """Each test its own checkpoint store: tests tamper with it."""
    settings.AUDIT_CHECKPOINT_DIR = tmp_path_factory.mktemp("checkpoints")
    return settings.AUDIT_CHECKPOINT_DIR


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """The test database's owner may empty the append-only audit tables between tests
    (a flush); see audit/migrations/0003_append_only.py."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("postgresql"):
        options = database.setdefault("OPTIONS", {})
        options["options"] = (
            options.get("options", "") + " -c agentdesk.audit_reset=allowed"
        ).strip()


@pytest.fixture
def system_actor():
    return Actor.system("tests")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Seed the demo once per session; each test's transaction rolls back to it."""
    with django_db_blocker.unblock():
        seed_demo()


@pytest.fixture
def demo(db):
    """The demo tenants, users, roles, policies and records (again after a flushing test)."""
    if not Tenant.objects.filter(slug="harbor-legal").exists():
        seed_demo()


@pytest.fixture
def harbor(demo) -> Tenant:
    return Tenant.objects.get(slug="harbor-legal")


@pytest.fixture
def northwind(demo) -> Tenant:
    return Tenant.objects.get(slug="northwind-accounting")


@pytest.fixture
def users(demo):
    User = get_user_model()
    return {u.username: u for u in User.objects.all()}


@pytest.fixture
def intake_role(harbor) -> Role:
    return Role.objects.get(tenant=harbor, slug="intake-coordinator")


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser(
        "platform", "platform@example.com", "pw-platform-1"
    )


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
    from tests.runtime import advance

    advance(run.pk)
    run.refresh_from_db()
    return run


def on_postgres() -> bool:
    return connection.vendor == "postgresql"
