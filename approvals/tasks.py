"""django-q2 entry points of approvals: ids in, one service call each."""

from approvals import services


def notify_reviewers(*, request_id: int, reminder: int = 0) -> int:
    return services.notify_reviewers(request_id=request_id, reminder=reminder)
