"""Demo tenants, people, roles, policies and client records (`manage.py seed_demo`).

Idempotent: running it again changes nothing that already exists.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model

from approvals.models import ApprovalPolicy
from audit.services import Actor, record
from roles.models import Role
from roles.services import (
    activate_role_version,
    approve_publication,
    create_role,
    create_role_version,
    request_publication,
)
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
        "definition": {
            **INTAKE_DEFINITION,
            "input_schema": INTAKE_INPUT_SCHEMA,
            "outputs": "A reviewed reply e-mail to the sender.",
            "target_turnaround_minutes": 60,
            "escalation_conditions": "Urgent enquiries, or a sender the firm does not know.",
            "allowed_tools": ["records.search", "email.send"],
            "allowed_data_kinds": ["contact", "matter"],
        },
        "tenants": ["harbor-legal", "northwind-accounting"],
    },
    {
        "slug": "client-follow-up",
        "name": "Client follow-up",
        "purpose": "Drafts follow-up e-mails after client meetings.",
        "definition": {
            **FOLLOW_UP_DEFINITION,
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
        },
        "tenants": ["harbor-legal", "northwind-accounting"],
    },
    {
        "slug": "month-end-reporter",
        "name": "Month-end reporter",
        "purpose": "Collects the month's figures and drafts the client's monthly statement.",
        "definition": {
            **REPORTER_DEFINITION,
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
        },
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


def seed_demo(*, stdout=None, change_control: bool = False) -> dict[str, int]:
    """Create the demo data that is missing; return counts of what was created. With
    `change_control`, also the change-control walkthrough of the README (golden cases, a
    reviewer's edit made a case, a draft that fixes it and one that regresses)."""
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
        for tenant in tenants.values():
            for category, mode, required, due, reminders, final in POLICIES:
                _, was_created = ApprovalPolicy.objects.get_or_create(
                    tenant=tenant,
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
        for spec in ROLES:
            for tenant_slug in spec["tenants"]:
                tenant = tenants[tenant_slug]
                if not Role.objects.filter(tenant=tenant, slug=spec["slug"]).exists():
                    _seed_role(tenant, spec)
                    created["roles"] += 1
        if change_control:
            created["golden_cases"] = _seed_change_control(tenants)
        if any(created.values()):
            record(tenant=None, actor=system, action="platform.seed_demo", data=created)
    return created


def _seed_role(tenant: Tenant, spec: dict) -> Role:
    """A role with v1 published the way every version is: asked for by one operator,
    approved by another. v1 comes before any golden case, so the request says so (an
    override of the gate's "no golden cases" refusal, which the second operator accepts)."""
    system = Actor.system("seed_demo")
    User = get_user_model()
    first, second = (Actor.for_user(User.objects.get(username=u)) for u in ("ops", "ops.second"))
    role = create_role(
        tenant=tenant, slug=spec["slug"], name=spec["name"], purpose=spec["purpose"], actor=system
    )
    version = create_role_version(
        role=role, definition=spec["definition"], actor=system, change_note="Initial version"
    )
    publication = request_publication(
        version=version,
        actor=first,
        override_reason="The first version: no golden cases exist yet to run.",
    )
    approve_publication(publication=publication, actor=second, note="Initial version")
    activate_role_version(version=version, actor=second)
    return role


# Golden cases per role: (tenant, role, name, input, expectations).
MAYA = {"from_email": "maya.chen@example.com", "subject": "Lease question"}
GOLDEN_CASES = [
    (
        "harbor-legal",
        "intake-coordinator",
        "Known client asks about her lease",
        {**MAYA, "body": "Could we meet next week about the draft lease?"},
        {
            "fields": [
                {"path": "draft.subject", "op": "equals", "value": "Re: Lease question"},
                {"path": "draft.body", "op": "contains", "value": "Dear Maya Chen"},
                {"path": "send.args.to", "op": "equals", "value": "maya.chen@example.com"},
            ],
            "tools_called": ["records.search", "email.send"],
            "gates_hit": ["draft"],
        },
    ),
    (
        "harbor-legal",
        "intake-coordinator",
        "Unknown sender gets a courteous reply",
        {"from_email": "new.person@example.net", "subject": "Incorporation", "body": "Hello"},
        {
            "fields": [{"path": "draft.body", "op": "contains", "value": "Dear there"}],
            "tools_called": ["records.search"],
            "gates_hit": ["draft"],
        },
    ),
    (
        "harbor-legal",
        "client-follow-up",
        "Follow-up goes to the client who met us",
        {
            "client_email": "maya.chen@example.com",
            "meeting_topic": "Lease review",
            "notes": "Comments on the draft lease by Friday.",
        },
        {
            "fields": [
                {"path": "send.args.to", "op": "equals", "value": "maya.chen@example.com"},
                {"path": "draft.subject", "op": "contains", "value": "Lease review"},
            ],
            "tools_called": ["records.search", "email.send"],
            "gates_hit": ["send"],
        },
    ),
    (
        "harbor-legal",
        "client-follow-up",
        "Follow-up is reviewed before it is sent",
        {
            "client_email": "tom.alvarez@example.com",
            "meeting_topic": "Incorporation",
            "notes": "Send the engagement letter.",
        },
        {"gates_hit": ["send"], "tools_not_called": ["records.get"], "max_tokens": 4000},
    ),
    (
        "northwind-accounting",
        "month-end-reporter",
        "November statement needs two reviewers",
        {"period": "2025-11", "ledger_reference": "L-2025-11"},
        {"tools_called": ["records.get"], "gates_hit": ["statement"]},
    ),
]
SIGNATURE = "Harbor Legal LLP · Client intake team"


def _seed_change_control(tenants: dict[str, Tenant]) -> int:
    """The change-control walkthrough (README): golden cases per role, each role's baseline,
    a reviewer's edit turned into a case, a draft that fixes it and one that regresses.
    Runs once: nothing is added when the roles have golden cases already."""
    from approvals.models import ApprovalRequest
    from approvals.services import decide
    from desk import worker
    from desk.models import Run
    from desk.services import start_run
    from roles import golden
    from roles.models import GoldenCase

    if GoldenCase.objects.exists():
        return 0
    User = get_user_model()
    ops = Actor.for_user(User.objects.get(username="ops"))
    roles = {}
    for tenant_slug, role_slug, name, case_input, expectations in GOLDEN_CASES:
        role = Role.objects.get(tenant=tenants[tenant_slug], slug=role_slug)
        roles[(tenant_slug, role_slug)] = role
        golden.create_case(
            role=role, name=name, input=case_input, expectations=expectations, actor=ops
        )
    for role in roles.values():  # each passing run of the active version is its baseline
        _suite(role.active_version, ops)

    # A reviewer fixes the intake reply's signature: their edit becomes a golden case.
    intake = roles[("harbor-legal", "intake-coordinator")]
    run = start_run(
        tenant=intake.tenant,
        role=intake,
        input={**MAYA, "body": "Is the lease ready for signature?"},
        actor=ops,
        via=Run.Via.COMMAND,
    )
    worker.work(run_id=run.pk, only=[run.pk])
    request = ApprovalRequest.objects.get(run=run, status=ApprovalRequest.Status.PENDING)
    draft = request.proposal["draft"]
    body = draft["body"].replace(intake.tenant.name, SIGNATURE)
    decision = decide(
        request=request,
        reviewer=User.objects.get(username="reviewer.harbor"),
        verdict="edit",
        edited_payload={"draft": {**draft, "body": body}},
        comment="Replies are signed by the intake team.",
    )
    worker.work(run_id=run.pk, only=[run.pk])  # the edited reply goes out
    golden.case_from_decision(decision, ops, name="Reviewer: sign as the intake team")

    # v2 fixes what the reviewer keeps correcting: its suite passes, ready to ask for.
    fixed = _draft(
        intake,
        ops,
        "Sign replies as the intake team (from a reviewer's edit).",
        lambda steps: [
            {**s, "prompt": s["prompt"].replace("{{ tenant.name }}", SIGNATURE)}
            if s["key"] == "draft"
            else s
            for s in steps
        ],
    )
    _suite(fixed, ops)
    # The follow-up's draft sends every follow-up to a shared inbox: the gate refuses it.
    follow_up = roles[("harbor-legal", "client-follow-up")]
    regressing = _draft(
        follow_up,
        ops,
        "Send follow-ups from the shared inbox.",
        lambda steps: [
            {**s, "args": {**s["args"], "to": "team@harbor.example"}} if s["key"] == "send" else s
            for s in steps
        ],
    )
    _suite(regressing, ops)
    return GoldenCase.objects.count()


def _draft(role: Role, actor: Actor, note: str, change_steps):
    definition = role.active_version.definition
    return create_role_version(
        role=role,
        definition={**definition, "steps": change_steps(definition["steps"])},
        actor=actor,
        change_note=note,
    )


def _suite(version, actor: Actor):
    """Run a version's golden cases now (the cluster would; the demo shows the result)."""
    from roles import golden

    suite = golden.start_suite(version, actor)
    golden.run_suite(suite.pk)
    return suite


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
    policy = ApprovalPolicy.objects.get(tenant=tenant, category="financial")
    if not policy.approver_groups.exists():
        policy.approver_groups.set(ReviewerGroup.objects.filter(tenant=tenant))
