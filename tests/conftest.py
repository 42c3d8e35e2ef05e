"""Shared fixtures. State is set up through the services, as a user would."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.services import Actor
from desk.demo import seed_demo
from desk.services import start_run
from roles.models import Role
from tenants import rls
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


# Sign-in with the password only, as Django's test client does it. Tests use
# `client.force_login`, which the fixture below makes pass the second factor as well
# (tests/signin prove that without it nothing is reachable).
force_login_password_only = Client.force_login


def pass_second_factor(client: Client, user) -> None:
    """Mark the client's session verified by a confirmed TOTP device of `user`, exactly as
    `django_otp.login` does after a right code (the device's id in the session)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=True).order_by("pk").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="Test device", confirmed=True)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()


def second_factor_code(user) -> str:
    """A code that proves `user`'s second factor once: a fresh recovery code of theirs (and
    they get an app device too, as everyone who has enrolled has)."""
    if not TOTPDevice.objects.filter(user=user, confirmed=True).exists():
        TOTPDevice.objects.create(user=user, name="Test device", confirmed=True)
    device, _ = StaticDevice.objects.get_or_create(
        user=user, name="Test recovery codes", defaults={"confirmed": True}
    )
    token = StaticToken.random_token()
    device.token_set.create(token=token)
    return token


def _force_login_with_second_factor(self, user, backend=None):
    force_login_password_only(self, user, backend)
    pass_second_factor(self, user)


@pytest.fixture(autouse=True)
def force_login_passes_the_second_factor():
    """DESK_REQUIRE_2FA stays on in tests; a test's `client.force_login(user)` signs in with
    both factors, as a person who typed their code would be. (Not through `monkeypatch`:
    tests undo their own patches with `monkeypatch.undo()`.)"""
    Client.force_login = _force_login_with_second_factor
    yield
    Client.force_login = force_login_password_only


@pytest.fixture
def system_actor():
    return Actor.system("tests")


@pytest.fixture(autouse=True)
def platform_work_sees_the_test_transaction(request):
    """A test runs in one transaction that other connections cannot see, so platform work
    stays on its connection (as the platform role, which the test login may become).
    Tests that ask for the `platform` database get its own connection, as production does
    (tests/tenants/test_least_privilege.py, the end-to-end tests' processes)."""
    marker = request.node.get_closest_marker("django_db")
    databases = (marker.kwargs.get("databases") if marker else None) or ()
    if "platform" in databases or databases == "__all__":
        yield
        return
    # Its own patch: a test's `monkeypatch.undo()` must not take it away.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rls, "_has_platform_connection", lambda: False)
        yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Seed the demo once per session; each test's transaction rolls back to it."""
    with django_db_blocker.unblock():
        seed_demo()
        connections.close_all()  # the platform's connection, too, before tests block it


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
