from __future__ import annotations

from typing import Any

from desk.tools.base import DataRead, Tool, ToolContext, ToolRefused

MAX_RESULTS = 20


def _public(record) -> dict[str, Any]:
    return {
        "reference": record.reference,
        "kind": record.kind,
        "name": record.name,
        "email": record.email,
        "data": record.data,
    }


class RecordsSearch(Tool):
    name = "records.search"
    description = "Find the tenant's client records by e-mail address and/or text."
    required_args = ()
    category = "data_access"
    reads_records = True
    args_schema = {
        "type": "object",
        "properties": {
            "email": {"type": "string", "title": "E-mail", "x-desk-target": True},
            "query": {"type": "string", "title": "Name contains", "x-desk-target": True},
            "kind": {"type": ["string", "null"], "title": "Kind"},
        },
        "additionalProperties": False,
    }

    def run(self, args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        email = str(args.get("email") or "").strip()
        text = str(args.get("query") or "").strip()
        kind = args.get("kind") or None
        if not email and not text:
            raise ToolRefused("records.search needs an 'email' or a 'query'.")
        queryset = ctx.records(kind=kind)
        if email:
            queryset = queryset.filter(email__iexact=email)
        if text:
            queryset = queryset.filter(name__icontains=text)
        found = list(queryset.order_by("reference")[:MAX_RESULTS])
        ctx.reads.append(
            DataRead(
                kind=kind or "any",
                references=[r.reference for r in found],
                query={"email": email, "query": text},
            )
        )
        return {"count": len(found), "records": [_public(r) for r in found]}


class RecordsGet(Tool):
    name = "records.get"
    description = "Read the tenant's client records by reference."
    required_args = ("references",)
    category = "data_access"
    reads_records = True
    args_schema = {
        "type": "object",
        "properties": {
            "references": {
                "type": ["array", "string"],
                "items": {"type": "string"},
                "title": "References",
                "x-desk-target": True,
            },
        },
        "required": ["references"],
        "additionalProperties": False,
    }

    def run(self, args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        references = args.get("references")
        if isinstance(references, str):
            references = [references]
        if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
            raise ToolRefused("records.get needs 'references': a list of record references.")
        found = {r.reference: r for r in ctx.records().filter(reference__in=references[:100])}
        missing = [r for r in references if r not in found]
        if missing:
            # Another tenant's reference or a kind the role may not read looks exactly like
            # one that does not exist; the attempt itself is audited.
            ctx.refusals.append({"tool": self.name, "references": missing})
        ctx.reads.append(
            DataRead(kind="any", references=sorted(found), query={"references": references})
        )
        return {
            "records": [_public(found[r]) for r in references if r in found],
            "not_found": missing,
        }
