"""The admin index's line on the tenants the user works for, and as what."""

from django import template

register = template.Library()


@register.simple_tag
def memberships_of(user) -> list:
    """The user's memberships, each with its tenant, in one query."""
    if not user.is_authenticated:
        return []
    return list(user.memberships.select_related("tenant"))
