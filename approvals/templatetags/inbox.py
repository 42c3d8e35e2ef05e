"""The reviewer's count on the admin index: how many requests wait for them."""

from django import template

from approvals.models import ApprovalRequest
from approvals.selectors import waiting_for
from tenants.admin_pagination import at_least, count_at_most
from tenants.scoping import scope_to_user

register = template.Library()

# Counted no further: past it the index says "1,000+" (a count over a LIMITed subquery).
WAITING_COUNTED_UP_TO = 1000


@register.simple_tag
def waiting_count(user) -> dict:
    """Pending requests waiting for `user`: {"count", "label"}, empty when none."""
    if not user.is_authenticated:
        return {}
    mine = scope_to_user(ApprovalRequest.objects.all(), user, kinds=("reviewer",))
    count = count_at_most(waiting_for(mine, user), WAITING_COUNTED_UP_TO)
    if not count:
        return {}
    return {"count": count, "label": at_least(count, WAITING_COUNTED_UP_TO)}
