"""django-q2 entry points of roles: ids in, one service call each."""

from roles import golden


def run_golden_suite(*, suite_run_id: int) -> str:
    return golden.run_suite(suite_run_id)
