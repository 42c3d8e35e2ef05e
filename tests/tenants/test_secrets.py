"""Tenants' secrets at rest (tenants.encryption): webhook signing secrets and provider API
keys are stored encrypted, bound to their tenant, never shown again, never in history, audit
data or logs; without a key nothing is saved or used; keys rotate and retire by a command."""

from __future__ import annotations

import json
import logging

import pytest
from asgiref.sync import async_to_sync
from cryptography.fernet import Fernet
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.urls import reverse

from audit.exports import events_for_export, iter_export
from audit.models import AuditEvent
from audit.services import Actor
from desk import providers
from desk.models import OutboxMessage
from desk.providers import ModelRequest, ProviderError, get_provider
from desk.services import start_run
from roles.models import Role
from tenants import encryption
from tenants.models import PROVIDER_KEY_PURPOSE, Tenant
from tenants.services import (
    clear_provider_api_key,
    reencrypt_secrets,
    set_provider_api_key,
)
from tests.fakes.webhook_receiver import FakeWebhookReceiver
from tests.runtime import advance
from webhooks.models import SECRET_PURPOSE, WebhookEndpoint
from webhooks.services import create_webhook_endpoint, rotate_webhook_secret, send_test_event

HARBOR_KEY = "sk-harbor-0123456789abcdef"
NORTHWIND_KEY = "sk-northwind-fedcba9876543210"
PLATFORM_KEY = "sk-platform-key"
SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


@pytest.fixture
def key_file(settings, tmp_path):
    """A key file of this test's own (rotation and retirement change it)."""
    settings.DESK_SECRETS_KEY_FILE = tmp_path / "secrets.keys"
    encryption.create_key_file()
    return settings.DESK_SECRETS_KEY_FILE


@pytest.fixture
def webhook_settings(settings):
    settings.DESK_WEBHOOK_ALLOW_HTTP = True
    settings.DESK_WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    settings.DESK_WEBHOOK_TIMEOUT_SECONDS = 2
    return settings


@pytest.fixture
def receiver(webhook_settings):
    with FakeWebhookReceiver() as running:
        yield running


@pytest.fixture
def ops(users):
    return Actor.for_user(users["ops"])


@pytest.fixture
def openai_settings(settings, fake_openai):
    settings.DESK_LLM_PROVIDER = "openai"
    settings.OPENAI_BASE_URL = fake_openai.base_url
    settings.OPENAI_API_KEY = PLATFORM_KEY
    yield settings
    async_to_sync(providers.aclose_providers)()


def make_endpoint(tenant, receiver, ops):
    endpoint, secret = create_webhook_endpoint(
        tenant=tenant, url=receiver.url, event_types=["run.completed"], actor=ops
    )
    receiver.secret = secret
    return endpoint, secret


def raw_column(table: str, column: str, pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def deliver(message: OutboxMessage) -> OutboxMessage:
    from desk import tasks

    tasks.deliver_outbox(message_id=message.pk)
    message.refresh_from_db()
    return message


def call_model(tenant) -> None:
    provider = get_provider(tenant=tenant)
    async_to_sync(provider.acomplete)(ModelRequest(prompt="hello", output_schema=SCHEMA))


def everything_recorded() -> str:
    """Audit events (data and reason, as exported too), every history row, admin log."""
    from django.apps import apps

    parts = [
        json.dumps(list(AuditEvent.objects.values("data", "reason", "action"))),
        json.dumps(list(LogEntry.objects.values_list("change_message", flat=True))),
    ]
    for tenant_id in Tenant.objects.values_list("pk", flat=True):
        parts.append("".join(iter_export(events_for_export(tenant_id=tenant_id), format="jsonl")))
    for model in apps.get_models():
        if model.__name__.startswith("Historical"):
            parts.append(json.dumps(list(model.objects.values()), default=str))
    return "\n".join(parts)


# --- at rest ----------------------------------------------------------------------------


def test_the_database_never_holds_a_plaintext_secret(harbor, receiver, ops):
    endpoint, secret = make_endpoint(harbor, receiver, ops)
    set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)

    stored_secret = raw_column("webhooks_webhookendpoint", "encrypted_secret", endpoint.pk)
    stored_key = raw_column("tenants_tenant", "provider_api_key_encrypted", harbor.pk)

    assert stored_secret.startswith(encryption.PREFIX) and secret not in stored_secret
    assert stored_key.startswith(encryption.PREFIX) and HARBOR_KEY not in stored_key
    # A plain value written past the services is refused by the database itself.
    for write in (
        lambda: WebhookEndpoint.objects.filter(pk=endpoint.pk).update(encrypted_secret=secret),
        lambda: Tenant.objects.filter(pk=harbor.pk).update(provider_api_key_encrypted=HARBOR_KEY),
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            write()
    assert raw_column("webhooks_webhookendpoint", "encrypted_secret", endpoint.pk) == stored_secret
    assert raw_column("tenants_tenant", "provider_api_key_encrypted", harbor.pk) == stored_key


def test_a_secret_never_appears_in_history_audit_data_or_logs(
    client, users, harbor, receiver, ops, openai_settings, fake_openai, caplog
):
    caplog.set_level(logging.DEBUG)
    endpoint, first = make_endpoint(harbor, receiver, ops)
    _, second = rotate_webhook_secret(endpoint=endpoint, actor=ops)
    receiver.secret = second
    message = send_test_event(endpoint=endpoint, actor=ops)
    delivered = deliver(message)
    client.force_login(users["ops"])
    client.post(
        reverse("admin:tenants_tenant_change", args=[harbor.pk]),
        {**tenant_form(harbor), "provider_api_key": HARBOR_KEY},
    )
    harbor.refresh_from_db()
    call_model(harbor)
    clear_provider_api_key(tenant=harbor, actor=ops)

    recorded = everything_recorded()
    ciphertexts = [endpoint.encrypted_secret]

    assert delivered.status == OutboxMessage.Status.SENT
    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {HARBOR_KEY}"
    for secret in (first, second, HARBOR_KEY, *ciphertexts):
        assert secret not in recorded
        assert secret not in caplog.text
    actions = set(AuditEvent.objects.filter(tenant=harbor).values_list("action", flat=True))
    assert {"tenant.provider_key_set", "tenant.provider_key_cleared"} <= actions


def tenant_form(tenant, **overrides) -> dict:
    return {
        "max_concurrent_runs": tenant.max_concurrent_runs,
        "reserved_steps_per_minute": tenant.reserved_steps_per_minute,
        "priority_weight": tenant.priority_weight,
        "monthly_token_budget": "",
        "monthly_cost_budget": "",
        "retention_days": tenant.retention_days,
        **overrides,
    }


def test_the_webhook_pages_never_show_the_secret_or_its_ciphertext(
    client, users, harbor, receiver, ops
):
    endpoint, secret = make_endpoint(harbor, receiver, ops)
    client.force_login(users["ops"])

    pages = [
        client.get(reverse("admin:webhooks_webhookendpoint_changelist")),
        client.get(reverse("admin:webhooks_webhookendpoint_change", args=[endpoint.pk])),
        client.get(reverse("admin:webhooks_webhookendpoint_history", args=[endpoint.pk])),
        client.get(reverse("admin:webhooks_webhookendpoint_changelist"), {"q": secret[:12]}),
    ]

    for page in pages:
        html = page.content.decode()
        assert page.status_code == 200
        assert secret not in html and endpoint.encrypted_secret not in html
    assert endpoint.encrypted_secret[:20] not in pages[1].content.decode()
    assert pages[3].context["cl"].result_count == 0  # the secret is not searchable either


# --- binding ----------------------------------------------------------------------------


def test_a_ciphertext_copied_to_another_tenant_does_not_decrypt(
    harbor, northwind, receiver, ops, openai_settings, fake_openai
):
    set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)
    harbor.refresh_from_db()
    harbor_endpoint, _ = make_endpoint(harbor, receiver, ops)
    northwind_endpoint, _ = make_endpoint(northwind, receiver, ops)
    message = send_test_event(endpoint=northwind_endpoint, actor=ops)

    # The attack: harbor's ciphertexts copied into northwind's rows (and into another purpose).
    Tenant.objects.filter(pk=northwind.pk).update(
        provider_api_key_encrypted=harbor.provider_api_key_encrypted
    )
    WebhookEndpoint.objects.filter(pk=northwind_endpoint.pk).update(
        encrypted_secret=harbor_endpoint.encrypted_secret
    )
    northwind.refresh_from_db()
    northwind_endpoint.refresh_from_db()

    with pytest.raises(encryption.SecretUnreadable):
        northwind.provider_api_key()
    with pytest.raises(ProviderError, match="cannot be used"):
        get_provider(tenant=northwind)
    with pytest.raises(encryption.SecretUnreadable):
        northwind_endpoint.signing_secret()
    with pytest.raises(encryption.SecretUnreadable):
        encryption.open_sealed(
            harbor_endpoint.encrypted_secret, tenant_id=harbor.pk, purpose=PROVIDER_KEY_PURPOSE
        )
    attempted = deliver(message)

    assert attempted.status != OutboxMessage.Status.SENT
    assert "cannot be read" in attempted.last_error
    assert receiver.deliveries == [] and fake_openai.requests == []
    assert harbor.provider_api_key() == HARBOR_KEY  # the original still opens where it belongs


# --- fail closed ------------------------------------------------------------------------


def test_no_key_means_no_secret_is_saved_or_used(
    settings, tmp_path, harbor, receiver, ops, openai_settings, fake_openai
):
    endpoint, _ = make_endpoint(harbor, receiver, ops)
    set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)
    message = send_test_event(endpoint=endpoint, actor=ops)
    harbor.refresh_from_db()
    stored = (endpoint.encrypted_secret, harbor.provider_api_key_encrypted)
    events = AuditEvent.objects.exclude(action__startswith="outbox.").count()

    settings.DESK_SECRETS_KEY_FILE = tmp_path / "missing.keys"  # the key is gone

    with pytest.raises(ValidationError, match="secrets_key --create"):
        create_webhook_endpoint(
            tenant=harbor, url=receiver.url, event_types=["run.completed"], actor=ops
        )
    with pytest.raises(ValidationError, match="secrets_key --create"):
        rotate_webhook_secret(endpoint=endpoint, actor=ops)
    with pytest.raises(ValidationError, match="secrets_key --create"):
        set_provider_api_key(tenant=harbor, actor=ops, api_key=NORTHWIND_KEY)
    with pytest.raises(ProviderError, match="secrets_key --create"):
        get_provider(tenant=harbor)
    attempted = deliver(message)

    endpoint.refresh_from_db()
    harbor.refresh_from_db()
    assert attempted.status != OutboxMessage.Status.SENT
    assert "secrets_key --create" in attempted.last_error
    assert receiver.deliveries == [] and fake_openai.requests == []  # nothing went out unsigned
    assert WebhookEndpoint.objects.filter(tenant=harbor).count() == 1
    assert (endpoint.encrypted_secret, harbor.provider_api_key_encrypted) == stored
    assert AuditEvent.objects.exclude(action__startswith="outbox.").count() == events


def test_a_malformed_key_file_is_refused_without_echoing_it(settings, tmp_path, harbor, ops):
    path = tmp_path / "secrets.keys"
    path.write_text("not-a-fernet-key-but-maybe-a-typo\n")
    settings.DESK_SECRETS_KEY_FILE = path

    with pytest.raises(ValidationError) as refused:
        set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)

    harbor.refresh_from_db()
    assert "not a Fernet key" in str(refused.value)
    assert "typo" not in str(refused.value)
    assert not harbor.has_provider_api_key


def test_keys_from_the_environment_are_used_and_the_commands_leave_them_alone(
    settings, tmp_path, harbor, ops
):
    key = Fernet.generate_key().decode()
    settings.DESK_SECRETS_KEYS = key
    settings.DESK_SECRETS_KEY_FILE = tmp_path / "unused.keys"

    set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)
    harbor.refresh_from_db()
    with pytest.raises(CommandError, match="DESK_SECRETS_KEYS"):
        call_command("secrets_key", "--rotate")
    with pytest.raises(CommandError, match="DESK_SECRETS_KEYS"):
        call_command("secrets_key", "--retire-old")

    assert Fernet(key).decrypt(harbor.provider_api_key_encrypted.removeprefix("fernet:"))
    assert harbor.provider_api_key() == HARBOR_KEY
    assert not settings.DESK_SECRETS_KEY_FILE.exists()


# --- rotation ---------------------------------------------------------------------------


def test_rotation_re_encrypts_every_secret_and_the_old_key_can_be_retired(
    key_file, harbor, northwind, receiver, ops, capsys
):
    endpoints = [make_endpoint(tenant, receiver, ops) for tenant in (harbor, northwind)]
    set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)
    set_provider_api_key(tenant=northwind, actor=ops, api_key=NORTHWIND_KEY)
    [old_key] = encryption.keys()
    before = {e.pk: e.encrypted_secret for e, _ in endpoints}

    call_command("secrets_key", "--rotate", "--batch-size", "1")
    new_key = encryption.keys()[0]
    call_command("secrets_key", "--retire-old")

    assert encryption.keys() == (new_key,) and new_key != old_key
    for endpoint, secret in endpoints:
        endpoint.refresh_from_db()
        assert endpoint.encrypted_secret != before[endpoint.pk]
        assert endpoint.signing_secret() == secret
        Fernet(new_key).decrypt(endpoint.encrypted_secret.removeprefix("fernet:"))
    for tenant, key in ((harbor, HARBOR_KEY), (northwind, NORTHWIND_KEY)):
        tenant.refresh_from_db()
        assert tenant.provider_api_key() == key
    platform = AuditEvent.objects.filter(tenant=None, action__startswith="secrets.")
    assert list(platform.order_by("seq").values_list("action", "data")) == [
        ("secrets.key_added", {"keys": 2}),
        ("secrets.reencrypted", {"reencrypted": 4, "unreadable": 0}),
        ("secrets.keys_retired", {"removed": 1}),
    ]
    out = capsys.readouterr()
    assert "Re-encrypted 4 secret(s)" in out.out
    assert old_key not in out.out + out.err and new_key not in out.out + out.err


def test_retire_refuses_while_a_secret_needs_the_old_key(key_file, harbor, receiver, ops):
    endpoint, secret = make_endpoint(harbor, receiver, ops)
    call_command("secrets_key", "--rotate")
    # A secret sealed with the old key after the rotation (say, by a process that had not yet
    # seen the new file): the old key is still needed for it.
    old_key = encryption.keys()[1]
    stale = (
        encryption.PREFIX
        + Fernet(old_key).encrypt(b"%d:webhook_secret\n" % harbor.pk + secret.encode()).decode()
    )
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(encrypted_secret=stale)
    file_before = key_file.read_bytes()

    with pytest.raises(CommandError, match="still need an old key") as refused:
        call_command("secrets_key", "--retire-old")

    endpoint.refresh_from_db()
    assert f"webhooks.WebhookEndpoint {endpoint.pk}" in str(refused.value)
    assert key_file.read_bytes() == file_before
    assert endpoint.signing_secret() == secret
    assert not AuditEvent.objects.filter(action="secrets.keys_retired").exists()
    # Re-encrypting first lets it through.
    call_command("secrets_key", "--reencrypt")
    call_command("secrets_key", "--retire-old")
    endpoint.refresh_from_db()
    assert len(encryption.keys()) == 1 and endpoint.signing_secret() == secret


def test_a_secret_no_key_opens_is_reported_and_left_as_it_is(key_file, harbor, receiver, ops):
    endpoint, _ = make_endpoint(harbor, receiver, ops)
    foreign = encryption.PREFIX + Fernet(Fernet.generate_key()).encrypt(b"x").decode()
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(encrypted_secret=foreign)

    with pytest.raises(CommandError, match="open with no key"):
        call_command("secrets_key", "--reencrypt")
    with pytest.raises(CommandError, match="open with no key"):
        call_command("secrets_key")

    endpoint.refresh_from_db()
    assert endpoint.encrypted_secret == foreign


def test_the_command_refuses_bad_input_and_changes_nothing(key_file, capsys):
    before = key_file.read_bytes()

    with pytest.raises(CommandError, match="at least 1"):
        call_command("secrets_key", "--reencrypt", "--batch-size", "0")
    with pytest.raises(CommandError):
        call_command("secrets_key", "--rotate", "--retire-old")
    call_command("secrets_key", "--create")  # there already is one: left as it is

    assert key_file.read_bytes() == before
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_the_command_without_a_key_says_how_to_make_one(settings, tmp_path, db):
    settings.DESK_SECRETS_KEY_FILE = tmp_path / "none.keys"

    for arguments in ((), ("--rotate",), ("--reencrypt",), ("--retire-old",)):
        with pytest.raises(CommandError, match="secrets_key --create"):
            call_command("secrets_key", *arguments)

    assert not settings.DESK_SECRETS_KEY_FILE.exists()
    call_command("secrets_key", "--create")
    assert len(encryption.keys()) == 1


def test_reencryption_leaves_history_alone(key_file, harbor, ops):
    set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)
    versions = harbor.history.count()
    encryption.add_key()

    counts = reencrypt_secrets(actor=Actor.system("tests"))

    harbor.refresh_from_db()
    assert counts == {"reencrypted": 1, "unreadable": 0}
    assert harbor.history.count() == versions
    assert harbor.provider_api_key() == HARBOR_KEY


# --- the provider key ---------------------------------------------------------------------


def test_the_change_form_never_shows_the_provider_key(client, users, harbor):
    client.force_login(users["ops"])
    url = reverse("admin:tenants_tenant_change", args=[harbor.pk])

    saved = client.post(url, {**tenant_form(harbor), "provider_api_key": HARBOR_KEY})
    harbor.refresh_from_db()
    pages = [
        client.get(url),
        client.get(reverse("admin:tenants_tenant_history", args=[harbor.pk])),
        client.get(
            reverse(
                "admin:tenants_tenant_simple_history",
                args=[harbor.pk, harbor.history.first().history_id],
            )
        ),
    ]
    # A page that comes back with an error does not fill the key in either, nor save it.
    refused = client.post(
        url, {**tenant_form(harbor, priority_weight=0), "provider_api_key": NORTHWIND_KEY}
    )
    harbor.refresh_from_db()

    assert saved.status_code == 302
    assert harbor.provider_api_key() == HARBOR_KEY
    for page in [*pages, refused]:
        html = page.content.decode()
        assert page.status_code == 200
        assert HARBOR_KEY not in html and NORTHWIND_KEY not in html
        assert harbor.provider_api_key_encrypted not in html
    assert "Set (last changed" in pages[0].content.decode()
    assert "provider API key" not in pages[2].content.decode()  # a past version says nothing
    assert 'type="password"' in pages[0].content.decode()
    assert "priority_weight" in refused.context["adminform"].form.errors
    assert AuditEvent.objects.filter(action="tenant.provider_key_set").count() == 1


def test_an_operator_clears_the_key_and_it_is_on_the_record(client, users, harbor, ops):
    set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)
    client.force_login(users["ops.second"])
    url = reverse("admin:tenants_tenant_change", args=[harbor.pk])

    both = client.post(
        url,
        {**tenant_form(harbor), "provider_api_key": NORTHWIND_KEY, "clear_provider_api_key": "on"},
    )
    harbor.refresh_from_db()
    assert both.status_code == 200 and harbor.provider_api_key() == HARBOR_KEY
    cleared = client.post(url, {**tenant_form(harbor), "clear_provider_api_key": "on"})

    harbor.refresh_from_db()
    page = client.get(url).content.decode()
    assert cleared.status_code == 302
    assert not harbor.has_provider_api_key and harbor.provider_api_key() == ""
    assert "Not set (removed" in page
    event = AuditEvent.objects.get(action="tenant.provider_key_cleared")
    assert event.actor_user == users["ops.second"] and event.data == {}


def test_a_key_that_cannot_go_in_a_header_is_refused(harbor, ops):
    for bad in ("", "   ", "sk with spaces", "sk-\u00e9", "sk-\x00", "k" * 501):
        with pytest.raises(ValidationError):
            set_provider_api_key(tenant=harbor, actor=ops, api_key=bad)

    harbor.refresh_from_db()
    assert not harbor.has_provider_api_key
    assert not AuditEvent.objects.filter(action="tenant.provider_key_set").exists()


def test_reviewers_and_auditors_see_only_whether_a_key_is_set(client, users, harbor, ops):
    set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)
    harbor.refresh_from_db()
    stored = harbor.provider_api_key_encrypted
    url = reverse("admin:tenants_tenant_change", args=[harbor.pk])

    for username in ("reviewer.harbor", "auditor"):
        client.force_login(users[username])
        page = client.get(url)
        client.post(url, {**tenant_form(harbor), "clear_provider_api_key": "on"})

        html = page.content.decode()
        assert page.status_code == 200
        assert "Set (last changed" in html and 'name="provider_api_key"' not in html
    harbor.refresh_from_db()
    assert harbor.provider_api_key_encrypted == stored


def test_each_tenant_s_call_carries_its_own_key(
    harbor, northwind, ops, openai_settings, fake_openai
):
    set_provider_api_key(tenant=harbor, actor=ops, api_key=HARBOR_KEY)
    set_provider_api_key(tenant=northwind, actor=ops, api_key=NORTHWIND_KEY)
    runs = {}
    for tenant in (harbor, northwind):
        role = Role.objects.get(tenant=tenant, slug="intake-coordinator")
        runs[tenant.slug] = start_run(
            tenant=tenant,
            role=role,
            input={
                "from_email": "maya.chen@example.com",
                "subject": f"Question for {tenant.slug}",
                "body": "Could we meet next week?",
            },
            actor=Actor.system("tests"),
            via="command",
        )

    advance(*runs.values())

    sent = {}
    for request in fake_openai.requests:
        prompt = request.body["messages"][-1]["content"]
        tenant = "harbor-legal" if "harbor-legal" in prompt else "northwind-accounting"
        sent.setdefault(tenant, set()).add(request.headers["authorization"])
    assert sent == {
        "harbor-legal": {f"Bearer {HARBOR_KEY}"},
        "northwind-accounting": {f"Bearer {NORTHWIND_KEY}"},
    }


def test_a_tenant_without_a_key_uses_the_platform_s_and_a_new_key_takes_over(
    harbor, northwind, ops, openai_settings, fake_openai
):
    call_model(northwind)
    set_provider_api_key(tenant=northwind, actor=ops, api_key=NORTHWIND_KEY)
    northwind.refresh_from_db()
    call_model(northwind)
    call_model(harbor)

    assert [r.headers["authorization"] for r in fake_openai.requests] == [
        f"Bearer {PLATFORM_KEY}",
        f"Bearer {NORTHWIND_KEY}",
        f"Bearer {PLATFORM_KEY}",
    ]
    assert get_provider(tenant=harbor) is not get_provider(tenant=northwind)


# --- the migration ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_plain_secrets_in_place_and_refuses_without_a_key(
    settings, tmp_path, demo
):
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("webhooks", "0002_random_ids")], [("webhooks", "0003_encrypted_secret")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old_apps = executor.loader.project_state(before[0]).apps
    Endpoint = old_apps.get_model("webhooks", "WebhookEndpoint")
    harbor_id = Tenant.objects.get(slug="harbor-legal").pk
    plain = "whsec_" + "A" * 43 + "="
    row = Endpoint.objects.create(
        tenant_id=harbor_id, url="https://crm.example.com/hooks", secret=plain, event_types=[]
    )
    try:
        settings.DESK_SECRETS_KEY_FILE = tmp_path / "missing.keys"
        with pytest.raises(Exception, match="secrets_key --create"):
            MigrationExecutor(connection).migrate(after)
        assert Endpoint.objects.get(pk=row.pk).secret == plain  # left as it was

        settings.DESK_SECRETS_KEY_FILE = tmp_path / "secrets.keys"
        encryption.create_key_file()
        MigrationExecutor(connection).migrate(after)
    finally:
        MigrationExecutor(connection).migrate(
            MigrationExecutor(connection).loader.graph.leaf_nodes()
        )

    endpoint = WebhookEndpoint.objects.get(pk=row.pk)
    assert endpoint.encrypted_secret.startswith(encryption.PREFIX)
    assert endpoint.signing_secret() == plain
    assert (
        encryption.open_sealed(
            endpoint.encrypted_secret, tenant_id=harbor_id, purpose=SECRET_PURPOSE
        )
        == plain
    )
