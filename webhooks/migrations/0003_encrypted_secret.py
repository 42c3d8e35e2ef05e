# Webhook signing secrets are stored encrypted (tenants.encryption): existing plain secrets
# are encrypted in place. That needs a key: with endpoints to encrypt and no key, the
# migration stops and says how to make one (`manage.py secrets_key --create`, which `make
# run` does before migrating); nothing is changed then.

from contextlib import contextmanager

from django.core.exceptions import ImproperlyConfigured
from django.db import migrations, models

from tenants import encryption

PURPOSE = "webhook_secret"  # webhooks.models.SECRET_PURPOSE when this was written


TABLE = "webhooks_webhookendpoint"


@contextmanager
def every_row(schema_editor):
    """Every tenant's rows, for the tables' owner that runs migrations: FORCE ROW LEVEL
    SECURITY (tenants/rls.py) would show it none. Put back in the same transaction."""
    if schema_editor.connection.vendor != "postgresql":
        yield
        return
    schema_editor.execute(f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY")
    yield
    schema_editor.execute(f"ALTER TABLE {TABLE} FORCE ROW LEVEL SECURITY")


def encrypt_secrets(apps, schema_editor):
    with every_row(schema_editor):
        _encrypt(apps.get_model("webhooks", "WebhookEndpoint"))


def _encrypt(Endpoint):
    plain = Endpoint.objects.exclude(encrypted_secret__startswith=encryption.PREFIX)
    if not plain.exists():
        return
    try:
        encryption.keys()
    except encryption.SecretsError as exc:
        raise ImproperlyConfigured(f"Webhook secrets are to be encrypted, but: {exc}") from None
    for endpoint in plain.only("pk", "tenant_id", "encrypted_secret").iterator():
        Endpoint.objects.filter(pk=endpoint.pk).update(
            encrypted_secret=encryption.seal(
                endpoint.encrypted_secret, tenant_id=endpoint.tenant_id, purpose=PURPOSE
            )
        )


def decrypt_secrets(apps, schema_editor):
    Endpoint = apps.get_model("webhooks", "WebhookEndpoint")
    with every_row(schema_editor):
        sealed = Endpoint.objects.filter(encrypted_secret__startswith=encryption.PREFIX)
        for endpoint in sealed.only("pk", "tenant_id", "encrypted_secret").iterator():
            Endpoint.objects.filter(pk=endpoint.pk).update(
                encrypted_secret=encryption.open_sealed(
                    endpoint.encrypted_secret, tenant_id=endpoint.tenant_id, purpose=PURPOSE
                )
            )


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0002_random_ids"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="webhookendpoint",
            name="webhookendpoint_secret_format",
        ),
        migrations.RenameField(
            model_name="webhookendpoint",
            old_name="secret",
            new_name="encrypted_secret",
        ),
        migrations.AlterField(
            model_name="webhookendpoint",
            name="encrypted_secret",
            field=models.TextField(),
        ),
        migrations.RunPython(encrypt_secrets, decrypt_secrets),
        migrations.AddConstraint(
            model_name="webhookendpoint",
            constraint=models.CheckConstraint(
                condition=models.Q(("encrypted_secret__startswith", "fernet:")),
                name="webhookendpoint_secret_encrypted",
            ),
        ),
    ]
