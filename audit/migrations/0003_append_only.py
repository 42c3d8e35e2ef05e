"""Seal existing events under the hash of audit.proof, then make the trail append-only.

The events written before this migration are hashed again once, with the payload digest
and the request fields, before any checkpoint exists (checkpoints come with this release).
On PostgreSQL, triggers owned by the migration role then refuse every UPDATE, DELETE and
TRUNCATE of audit events, except the retention's removal of an old payload, and let the
chain head only move forward to an event that exists. The grants (tenants.rls) give the
application and platform roles SELECT and INSERT, and UPDATE of those columns only.
"""

from django.db import migrations

from audit import proof
from tenants import rls

def reseal(apps, schema_editor):
    Event = apps.get_model("audit", "AuditEvent")
    Chain = apps.get_model("audit", "AuditChain")
    tenants = Event.objects.values_list("tenant_id", flat=True).distinct()
    for tenant_id in list(tenants):
        prev, last_seq = "", 0
        for event in Event.objects.filter(tenant_id=tenant_id).order_by("seq").iterator():
            event.payload_digest = proof.payload_digest(data=event.data, reason=event.reason)
            event.prev_hash = prev
            fields = {
                "tenant": event.tenant_id,
                "seq": event.seq,
                "created_at": event.created_at.isoformat(),
                "actor_type": event.actor_type,
                "actor_user": event.actor_user_id,
                "actor_label": event.actor_label,
                "action": event.action,
                "object_type": event.object_type,
                "object_id": event.object_id,
                "run_id": event.run_id,
                "step_id": event.step_id,
                "role_version_id": event.role_version_id,
                "request_id": event.request_id,
                "client_ip": event.client_ip,
                "user_agent": event.user_agent,
                "payload_digest": event.payload_digest,
                "prev_hash": event.prev_hash,
            }
            event.hash = proof.event_hash(fields)
            event.save(update_fields=["payload_digest", "prev_hash", "hash"])
            prev, last_seq = event.hash, event.seq
        Chain.objects.filter(tenant_id=tenant_id).update(last_seq=last_seq, last_hash=prev)


FROZEN = ", ".join(
    f"{{row}}.{column}"
    for column in (
        "id tenant_id seq created_at actor_type actor_user_id actor_label action object_type "
        "object_id run_id step_id role_version_id request_id client_ip user_agent "
        "payload_digest prev_hash hash"
    ).split()
)

TRIGGERS = f"""
CREATE OR REPLACE FUNCTION audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Only the tables' owner, saying so for its session, may empty them (a test database
    -- between tests): the owner could drop these triggers anyway, the roles can do neither.
    IF current_setting('agentdesk.audit_reset', true) = 'allowed'
        AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER')
    THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE FUNCTION audit_event_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    keep_days integer;
BEGIN
    -- The one change allowed: the retention empties an old payload, once, nothing else.
    IF TG_OP = 'UPDATE'
        AND ({FROZEN.format(row="NEW")}) IS NOT DISTINCT FROM ({FROZEN.format(row="OLD")})
        AND OLD.payload_redacted_at IS NULL AND NEW.payload_redacted_at IS NOT NULL
        AND NEW.data = '{{}}'::jsonb AND NEW.reason = ''
    THEN
        SELECT retention_days INTO keep_days FROM tenants_tenant WHERE id = OLD.tenant_id;
        IF keep_days IS NOT NULL AND OLD.created_at < now() - make_interval(days => keep_days)
        THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % of event % of tenant % refused',
        TG_OP, OLD.seq, coalesce(OLD.tenant_id::text, 'platform')
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE FUNCTION audit_chain_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.last_seq = 0 AND NEW.last_hash = '' THEN
            RETURN NEW;
        END IF;
    ELSIF TG_OP = 'UPDATE'
        AND NEW.id = OLD.id AND NEW.tenant_id IS NOT DISTINCT FROM OLD.tenant_id
        AND NEW.last_seq = OLD.last_seq + 1
        AND EXISTS (
            SELECT 1 FROM audit_auditevent e
            WHERE (e.tenant_id = NEW.tenant_id OR (NEW.tenant_id IS NULL AND e.tenant_id IS NULL))
              AND e.seq = NEW.last_seq AND e.hash = NEW.last_hash AND e.prev_hash = OLD.last_hash
        )
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'an audit chain head only moves forward to its newest event: % refused',
        TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;

DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent;
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_event_guard();
DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();
DROP TRIGGER IF EXISTS audit_chain_forward_only ON audit_auditchain;
CREATE TRIGGER audit_chain_forward_only BEFORE INSERT OR UPDATE OR DELETE ON audit_auditchain
    FOR EACH ROW EXECUTE FUNCTION audit_chain_guard();
DROP TRIGGER IF EXISTS audit_chain_no_truncate ON audit_auditchain;
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_auditchain
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse();
"""

DROP = """
DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_chain_forward_only ON audit_auditchain;
DROP TRIGGER IF EXISTS audit_chain_no_truncate ON audit_auditchain;
DROP FUNCTION IF EXISTS audit_event_guard();
DROP FUNCTION IF EXISTS audit_chain_guard();
DROP FUNCTION IF EXISTS audit_refuse();
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(TRIGGERS)  # no parameters: its % are RAISE placeholders


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_request_payload_digest")]

    operations = [
        migrations.RunPython(reseal, migrations.RunPython.noop),
        migrations.RunPython(install, uninstall),
        rls.migration_operation(),  # the grants: SELECT, INSERT and the columns above
    ]
