"""Per-tenant webhooks: endpoints subscribe to the runtime's events (desk.events), which are
signed per the Standard Webhooks scheme and delivered through desk's outbox."""
