"""The reviewer's count on the admin index: how many requests wait for them."""

from django import template

from approvals.models import ApprovalRequest
from approvals.selectors import waiting_for
from tenants.scoping import scope_to_user

register = template.Library()


@register.simple_tag
def waiting_count(user) -> int:
    """Pending requests waiting for `user` (a small set: pending rows of their tenants)."""
    if not user.is_authenticated:
        return 0
    mine = scope_to_user(ApprovalRequest.objects.all(), user, kinds=("reviewer",))
    return waiting_for(mine, user).count()
