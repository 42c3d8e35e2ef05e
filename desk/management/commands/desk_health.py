"""`manage.py desk_health`: exit 0 when the runtime is making progress, 1 when not. Prints a
one-line reason, then the JSON report (for systemd timers, monitoring and scripts)."""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from desk.health import system_health


class Command(BaseCommand):
    help = (
        "Check the database, the broker, the sweeps, django-q2's scheduler, ready work and "
        "the workers; exit 1 with the reason when any fails."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--max-age",
            type=float,
            default=60,
            help="Seconds a sweep, schedule or worker may go without progress (default 60).",
        )
        parser.add_argument(
            "--ready-max-age",
            type=float,
            default=120,
            help="Seconds a ready step may wait for a worker (default 120).",
        )

    def handle(self, *args, max_age, ready_max_age, **options):
        if max_age <= 0 or ready_max_age <= 0:
            raise CommandError("--max-age and --ready-max-age must be positive.")
        report = system_health(max_age=max_age, ready_max_age=ready_max_age)
        self.stdout.write(report.reason if report.ok else f"unhealthy: {report.reason}")
        self.stdout.write(json.dumps(report.as_dict(), indent=2))
        if not report.ok:
            sys.exit(1)
