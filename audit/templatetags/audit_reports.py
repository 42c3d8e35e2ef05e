"""Filters of the printable reports: times to the second with their time zone, JSON, money."""

from __future__ import annotations

from decimal import Decimal

from django import template

from audit import reports
from tenants.admin_scoping import dump_json

register = template.Library()


stamp = register.filter("stamp", reports.stamp)


@register.filter
def readable(value) -> list[tuple[str, str]] | None:
    """A dict of texts and numbers (nested dicts too) as (name, text) pairs to show as
    fields, texts with their line breaks; None for anything else (shown as JSON)."""
    if not isinstance(value, dict) or not value:
        return None
    pairs: list[tuple[str, str]] = []

    def walk(prefix: str, item) -> bool:
        if isinstance(item, dict):
            return all(walk(f"{prefix}{key}.", inner) for key, inner in item.items())
        if isinstance(item, (list, tuple)):
            return False
        text = "" if item is None else str(item).lower() if isinstance(item, bool) else str(item)
        pairs.append((prefix[:-1], text))
        return True

    return pairs if walk("", value) else None


@register.filter
def as_json(value) -> str:
    return dump_json(value)


@register.filter
def money(value) -> str:
    if value is None:
        return "—"
    return f"{Decimal(value):.4f}"


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if mapping else None


@register.filter
def inline(value) -> str:
    """A query's terms on one line: "email: maya@example.com"; empty ones left out."""
    if isinstance(value, dict):
        terms = [f"{key}: {_term(v)}" for key, v in value.items() if v not in ("", None, [])]
        return "; ".join(terms) or "—"
    return _term(value) if value not in ("", None) else "—"


def _term(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)
