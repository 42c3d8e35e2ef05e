"""Demo tenants, people, roles, policies and client records (`manage.py seed_demo`).

Idempotent: running it again changes nothing that already exists.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

from approvals.models import ApprovalPolicy
from audit.services import Actor, record
from roles.models import Role
from roles.services import create_role, create_role_version, publish_role_version
from tenants import rls
from tenants.models import Membership, Tenant
from tenants.services import create_tenant, grant_membership, upsert_client_record

DEMO_PASSWORD = "agentdesk-demo"

TENANTS = [
    ("harbor-legal", "Harbor Legal LLP"),
    ("northwind-accounting", "Northwind Accounting"),
]

USERS = {
    "ops": (
        "Olivia",
        "Ops",
        [
            ("harbor-legal", "operator"),
            ("northwind-accounting", "operator"),
            ("harbor-legal", "reviewer"),
            ("northwind-accounting", "reviewer"),
        ],
    ),
    "reviewer.harbor": ("Hana", "Reviewer", [("harbor-legal", "reviewer")]),
    "reviewer.northwind": ("Noah", "Reviewer", [("northwind-accounting", "reviewer")]),
    "partner.northwind": ("Priya", "Partner", [("northwind-accounting", "reviewer")]),
    "ops.second": (
        "Omar",
        "Second",
        [("harbor-legal", "operator"), ("northwind-accounting", "operator")],
    ),
    "auditor": (
        "Ada",
        "Auditor",
        [("harbor-legal", "auditor"), ("northwind-accounting", "auditor")],
    ),
}

RECORDS = {
    "harbor-legal": [
        (
            "C-1001",
            "contact",
            "Maya Chen",
            "maya.chen@example.com",
            {"company": "Chen Logistics", "matter": "M-2201", "relationship": "client since 2021"},
        ),
        (
            "C-1002",
            "contact",
            "Tom Alvarez",
            "tom.alvarez@example.com",
            {"company": "Alvarez Bakery", "matter": "M-2202", "relationship": "prospect"},
        ),
        (
            "M-2201",
            "matter",
            "Chen Logistics — lease review",
            "",
            {"status": "open", "partner": "J. Okafor", "next_step": "comments on draft lease"},
        ),
        (
            "M-2202",
            "matter",
            "Alvarez Bakery — incorporation",
            "",
            {"status": "intake", "partner": "R. Singh"},
        ),
    ],
    "northwind-accounting": [
        (
            "C-2001",
            "contact",
            "Priya Natarajan",
            "priya@example.org",
            {"company": "Natarajan Design", "plan": "monthly bookkeeping"},
        ),
        (
            "L-2025-10",
            "ledger",
            "October ledger — Natarajan Design",
            "",
            {"revenue": 48250.00, "expenses": 31120.50, "cash": 90210.75, "period": "2025-10"},
        ),
        (
            "L-2025-11",
            "ledger",
            "November ledger — Natarajan Design",
            "",
            {"revenue": 51600.00, "expenses": 29870.25, "cash": 111940.50, "period": "2025-11"},
        ),
    ],
}

INTAKE_INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "from_email": {"type": "string", "format": "email", "minLength": 3},
        "subject": {"type": "string", "minLength": 1},
        "body": {"type": "string", "minLength": 1},
    },
    "required": ["from_email", "subject", "body"],
    "additionalProperties": False,
}

DRAFT_SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "minLength": 1, "maxLength": 200, "title": "Subject"},
        "body": {"type": "string", "minLength": 1, "title": "Body"},
    },
    "required": ["subject", "body"],
    "additionalProperties": False,
}

INTAKE_DEFINITION = {
    "model": {"name": "offline-1", "temperature": 0, "max_tokens": 800},
    "system": "You are the intake coordinator of {{ tenant.name }}. Be accurate and courteous.",
    "steps": [
        {
            "key": "classify",
            "kind": "llm",
            "category": "internal",
            "reason": "Route the enquiry to the right kind of work",
            "prompt": (
                "Classify this enquiry as new_matter, existing_matter, billing or other, "
                "and say how urgent it is.\nSubject: {{ input.subject }}\nBody: {{ input.body }}"
            ),
            "output_schema": {
                "type": "object",
                "properties": {
                    "category": {"enum": ["new_matter", "existing_matter", "billing", "other"]},
                    "is_urgent": {"type": "boolean"},
                    "summary": {"type": "string"},
                },
                "required": ["category", "is_urgent", "summary"],
                "additionalProperties": False,
            },
        },
        {
            "key": "lookup",
            "kind": "tool",
            "category": "data_access",
            "tool": "records.search",
            "args": {"email": "{{ input.from_email }}"},
            "reason": "Find the sender's client records to answer in context",
        },
        {
            "key": "draft",
            "kind": "llm",
            "category": "client_comms",
            "reason": "Draft the reply the client will receive",
            "prompt": (
                "Draft a reply to the enquiry below.\n"
                "{% set known = steps.lookup.records %}"
                "Client name: {{ known[0].name if known else 'there' }}\n"
                "Subject: {{ input.subject }}\n"
                "Enquiry type: {{ steps.classify.category }}\n"
                "Signature: {{ tenant.name }}\n"
                "Message: {{ input.body }}"
            ),
            "output_schema": DRAFT_SCHEMA,
        },
        {
            "key": "send",
            "kind": "tool",
            "category": "client_comms",
            "covered_by": "draft",
            "tool": "email.send",
            "args": {
                "to": "{{ input.from_email }}",
                "subject": "{{ steps.draft.subject }}",
                "body": "{{ steps.draft.body }}",
            },
            "reason": "Send the approved reply",
        },
    ],
}

FOLLOW_UP_DEFINITION = {
    "model": {"name": "offline-1", "temperature": 0.2, "max_tokens": 800},
    "system": "You write client follow-ups for {{ tenant.name }}.",
    "steps": [
        {
            "key": "client",
            "kind": "tool",
            "category": "data_access",
            "tool": "records.search",
            "args": {"email": "{{ input.client_email }}"},
            "reason": "Address the follow-up to the right client and matter",
        },
        {
            "key": "draft",
            "kind": "llm",
            "category": "internal",
            "reason": "Draft the follow-up the client will receive",
            "prompt": (
                "Draft a follow-up e-mail after a meeting.\n"
                "{% set known = steps.client.records %}"
                "Client name: {{ known[0].name if known else 'there' }}\n"
                "Subject: Follow-up: {{ input.meeting_topic }}\n"
                "Signature: {{ tenant.name }}\n"
                "Meeting notes: {{ input.notes }}"
            ),
            "output_schema": DRAFT_SCHEMA,
        },
        {
            # A gated tool call: the reviewer approves (or edits) the exact e-mail.
            "key": "send",
            "kind": "tool",
            "category": "client_comms",
            "tool": "email.send",
            "args": {
                "to": "{{ input.client_email }}",
                "subject": "{{ steps.draft.subject }}",
                "body": "{{ steps.draft.body }}",
            },
            "reason": "Send the approved follow-up",
        },
    ],
}

REPORTER_DEFINITION = {
    "model": {"name": "offline-1", "temperature": 0, "max_tokens": 1200},
    "system": "You prepare month-end statements for {{ tenant.name }}. Never invent figures.",
    "steps": [
        {
            "key": "figures",
            "kind": "tool",
            "category": "data_access",
            "tool": "records.get",
            "args": {"references": "{{ [input.ledger_reference] }}"},
            "reason": "Collect the month's ledger figures",
        },
        {
            "key": "statement",
            "kind": "llm",
            "category": "financial",
            "reason": "Draft the monthly statement for the client",
            "prompt": (
                "Draft the monthly statement.\n"
                "{% set ledger = steps.figures.records[0].data if steps.figures.records else {} %}"
                "Period: {{ input.period }}\n"
                "Revenue: {{ ledger.revenue | default('unknown') }}\n"
                "Expenses: {{ ledger.expenses | default('unknown') }}\n"
                "Cash: {{ ledger.cash | default('unknown') }}\n"
                "Subject: Statement for {{ input.period }}\n"
                "Signature: {{ tenant.name }}"
            ),
            "output_schema": {
                "type": "object",
                "properties": {
                    "revenue": {"type": "number"},
                    "expenses": {"type": "number"},
                    "cash": {"type": "number"},
                    "summary": {"type": "string"},
                },
                "required": ["revenue", "expenses", "cash", "summary"],
                "additionalProperties": False,
            },
        },
    ],
}

ROLES = [
    {
        "slug": "intake-coordinator",
        "name": "Intake coordinator",
        "purpose": (
            "Answers new enquiries: classifies them, looks up the sender, drafts and sends a reply."
        ),
        "input_schema": INTAKE_INPUT_SCHEMA,
        "outputs": "A reviewed reply e-mail to the sender.",
        "target_turnaround_minutes": 60,
        "escalation_conditions": "Urgent enquiries, or a sender the firm does not know.",
        "allowed_tools": ["records.search", "email.send"],
        "allowed_data_kinds": ["contact", "matter"],
        "definition": INTAKE_DEFINITION,
        "tenants": ["harbor-legal", "northwind-accounting"],
    },
    {
        "slug": "client-follow-up",
        "name": "Client follow-up",
        "purpose": "Drafts follow-up e-mails after client meetings.",
        "input_schema": {
            "type": "object",
            "properties": {
                "client_email": {"type": "string", "minLength": 3},
                "meeting_topic": {"type": "string", "minLength": 1},
                "notes": {"type": "string", "minLength": 1},
            },
            "required": ["client_email", "meeting_topic", "notes"],
            "additionalProperties": False,
        },
        "outputs": "A reviewed follow-up e-mail.",
        "target_turnaround_minutes": 240,
        "allowed_tools": ["records.search", "email.send"],
        "allowed_data_kinds": ["contact", "matter"],
        "definition": FOLLOW_UP_DEFINITION,
        "tenants": ["harbor-legal", "northwind-accounting"],
    },
    {
        "slug": "month-end-reporter",
        "name": "Month-end reporter",
        "purpose": "Collects the month's figures and drafts the client's monthly statement.",
        "input_schema": {
            "type": "object",
            "properties": {
                "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                "ledger_reference": {"type": "string", "minLength": 1},
            },
            "required": ["period", "ledger_reference"],
            "additionalProperties": False,
        },
        "outputs": "A monthly statement approved by two reviewers.",
        "target_turnaround_minutes": 1440,
        "allowed_tools": ["records.get"],
        "allowed_data_kinds": ["ledger"],
        "definition": REPORTER_DEFINITION,
        "tenants": ["northwind-accounting"],
    },
]

POLICIES = [
    # (category, mode, required approvals, due minutes, reminders, final action). Every
    # category has a tenant-wide policy: one without would be gated (fail closed).
    ("internal", ApprovalPolicy.Mode.AUTO, 1, 240, 2, ApprovalPolicy.FinalAction.HOLD),
    ("data_access", ApprovalPolicy.Mode.AUTO, 1, 240, 2, ApprovalPolicy.FinalAction.HOLD),
    ("scheduling", ApprovalPolicy.Mode.REVIEW, 1, 240, 2, ApprovalPolicy.FinalAction.HOLD),
    ("client_comms", ApprovalPolicy.Mode.REVIEW, 1, 240, 2, ApprovalPolicy.FinalAction.HOLD),
    ("financial", ApprovalPolicy.Mode.REVIEW, 2, 1440, 0, ApprovalPolicy.FinalAction.HOLD),
    ("scope_commitment", ApprovalPolicy.Mode.REVIEW, 1, 480, 0, ApprovalPolicy.FinalAction.HOLD),
]


def seed_demo(*, stdout=None) -> dict[str, int]:
    """Create the demo data that is missing; return counts of what was created."""
    created = {"tenants": 0, "users": 0, "roles": 0, "records": 0, "policies": 0}
    system = Actor.system("seed_demo")
    User = get_user_model()
    # Seeding writes to several tenants at once: the platform role, and an audit entry saying so.
    with rls.platform_context():
        tenants = {}
        for slug, name in TENANTS:
            tenant = Tenant.objects.filter(slug=slug).first()
            if tenant is None:
                tenant = create_tenant(slug=slug, name=name, actor=system)
                created["tenants"] += 1
            tenants[slug] = tenant
        for username, (first, last, memberships) in USERS.items():
            user = User.objects.filter(username=username).first()
            if user is None:
                user = User.objects.create_user(
                    username=username,
                    password=DEMO_PASSWORD,
                    first_name=first,
                    last_name=last,
                    email=f"{username}@agentdesk.example",
                    is_staff=True,
                )
                created["users"] += 1
            for tenant_slug, kind in memberships:
                if not Membership.objects.filter(
                    user=user, tenant=tenants[tenant_slug], kind=kind
                ).exists():
                    grant_membership(
                        user=user, tenant=tenants[tenant_slug], kind=kind, actor=system
                    )
        for tenant_slug, rows in RECORDS.items():
            for reference, kind, name, email, data in rows:
                tenant = tenants[tenant_slug]
                if not tenant.records.filter(reference=reference).exists():
                    upsert_client_record(
                        actor=system,
                        tenant=tenant,
                        reference=reference,
                        kind=kind,
                        name=name,
                        email=email,
                        data=data,
                    )
                    created["records"] += 1
        for spec in ROLES:
            fields = {
                k: v
                for k, v in spec.items()
                if k not in {"definition", "tenants", "slug", "name", "input_schema"}
            }
            for tenant_slug in spec["tenants"]:
                tenant = tenants[tenant_slug]
                if Role.objects.filter(tenant=tenant, slug=spec["slug"]).exists():
                    continue
                role = create_role(
                    tenant=tenant,
                    slug=spec["slug"],
                    name=spec["name"],
                    input_schema=spec["input_schema"],
                    actor=system,
                    **fields,
                )
                version = create_role_version(
                    role=role,
                    definition=spec["definition"],
                    actor=system,
                    change_note="Initial version",
                )
                publish_role_version(version=version, actor=system)
                created["roles"] += 1
        for tenant in tenants.values():
            for category, mode, required, due, reminders, final in POLICIES:
                _, was_created = ApprovalPolicy.objects.get_or_create(
                    tenant=tenant,
                    role=None,
                    category=category,
                    defaults={
                        "mode": mode,
                        "required_approvals": required,
                        "due_minutes": due,
                        "max_reminders": reminders,
                        "final_action": final,
                        # The demo's client e-mail can be decided from the notification.
                        "email_links": category == "client_comms",
                    },
                )
                created["policies"] += was_created
        _seed_quorum_groups(tenants["northwind-accounting"], created)
        if any(created.values()):
            record(tenant=None, actor=system, action="platform.seed_demo", data=created)
    return created


def _seed_quorum_groups(tenant: Tenant, created: dict[str, int]) -> None:
    """Northwind's statements need one partner and one other reviewer (distinct groups)."""
    from approvals.models import GroupMember, ReviewerGroup

    User = get_user_model()
    for name, usernames in (
        ("Partners", ["partner.northwind"]),
        ("Reviewers", ["reviewer.northwind", "ops"]),
    ):
        group, was_created = ReviewerGroup.objects.get_or_create(tenant=tenant, name=name)
        if was_created:
            created["policies"] += 1
            for user in User.objects.filter(username__in=usernames):
                GroupMember.objects.create(tenant=tenant, group=group, user=user)
    policy = ApprovalPolicy.objects.get(tenant=tenant, role=None, category="financial")
    if not policy.approver_groups.exists():
        policy.approver_groups.set(ReviewerGroup.objects.filter(tenant=tenant))
