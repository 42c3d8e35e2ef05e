from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from desk.tools.base import OutboxIntent, Tool, ToolContext, ToolRefused


class EmailSend(Tool):
    name = "email.send"
    description = "Send an e-mail through the outbox (delivered once, after the step commits)."
    required_args = ("to", "subject", "body")
    category = "client_comms"
    args_schema = {
        "type": "object",
        "properties": {
            "to": {"type": "string", "format": "email", "title": "To", "x-desk-target": True},
            "subject": {"type": "string", "minLength": 1, "maxLength": 200, "title": "Subject"},
            "body": {"type": "string", "minLength": 1, "title": "Body"},
        },
        "required": ["to", "subject", "body"],
        "additionalProperties": False,
    }
    has_side_effects = True

    def run(self, args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        to = str(args.get("to") or "").strip()
        try:
            validate_email(to)
        except ValidationError:
            raise ToolRefused(f"'{to}' is not a valid e-mail address.") from None
        subject = str(args.get("subject") or "").strip()
        body = str(args.get("body") or "")
        if not subject or not body.strip():
            raise ToolRefused("email.send needs a non-empty subject and body.")
        ctx.outbox.append(
            OutboxIntent(channel="email", payload={"to": to, "subject": subject, "body": body})
        )
        return {"to": to, "subject": subject, "outbox_key": ctx.idempotency_key, "queued": True}
