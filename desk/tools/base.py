from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from tenants.models import ClientRecord, Tenant
from tenants.scoping import scope_to_tenant


class ToolRefused(Exception):
    """The call is not allowed (tool, data kind or record outside the role or tenant)."""

    def __init__(self, message: str, *, data: dict | None = None):
        super().__init__(message)
        self.data = data or {}


@dataclass
class DataRead:
    """Records a tool read, audited with the step's reason when the step is checkpointed."""

    kind: str
    references: list[str]
    query: dict[str, Any]


@dataclass
class OutboxIntent:
    """A side effect the checkpoint writes to the outbox, once per (run, step)."""

    channel: str
    payload: dict[str, Any]


@dataclass
class ToolContext:
    """What a tool may touch: one tenant's data, within the role's allowed data kinds."""

    tenant: Tenant
    run_id: int
    step_id: int
    idempotency_key: str
    allowed_data_kinds: list[str]
    reads: list[DataRead] = field(default_factory=list)
    outbox: list[OutboxIntent] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)

    def records(self, *, kind: str | None = None):
        """The tenant's client records this role may read, optionally of one kind.

        Raises ToolRefused for a kind the role may not read.
        """
        allowed = self.allowed_data_kinds
        if not allowed:
            # An empty allow-list allows nothing.
            raise ToolRefused(
                "This role may not read any records: its allowed data kinds are empty.",
                data={"kind": kind, "allowed": []},
            )
        if kind is not None and kind not in allowed:
            raise ToolRefused(
                f"This role may not read '{kind}' records.",
                data={"kind": kind, "allowed": allowed},
            )
        queryset = scope_to_tenant(ClientRecord.objects.all(), self.tenant)
        if kind is not None:
            return queryset.filter(kind=kind)
        return queryset.filter(kind__in=allowed)


class Tool(ABC):
    """A callable capability. Subclasses set `name`, `required_args`, `category` and
    `args_schema` and implement `run`."""

    name = ""
    description = ""
    required_args: tuple[str, ...] = ()
    # The least strict category a step calling this tool may be labelled with: a step that
    # sends client e-mail is client communication, whatever its author calls it.
    category = "internal"
    # JSON Schema of the arguments: a reviewer's edit of a gated call is checked against it.
    # Each argument that says whom or what the tool acts on (a recipient, a URL, a record
    # reference or the e-mail a search matches) carries `"x-desk-target": true`: it may take
    # its value only from the run's input, records, fixed text or an approval at its step
    # (roles.workflow). A new tool marks its targets, or they go unchecked.
    args_schema: dict[str, Any] = {"type": "object"}
    has_side_effects = False
    # The output is the tenant's own records: later steps may take targets from it.
    reads_records = False
    # Quick database work: executed inside the step's leasing transaction. A tool that
    # waits on the network sets this False and runs outside any transaction, under a lease.
    runs_inline = True

    @abstractmethod
    def run(self, args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        """Do the work (or record the intent) within `ctx`.

        Raises ToolRefused when the call is not allowed.
        """


@cache
def get_tool(name: str) -> Tool:
    """The registered tool called `name`.

    Raises ToolRefused for a name that is not registered.
    """
    try:
        path = settings.DESK_TOOLS[name]
    except KeyError:
        raise ToolRefused(f"Unknown tool '{name}'.") from None
    return import_string(path)()
