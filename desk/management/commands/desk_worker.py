"""`manage.py desk_worker`: this machine's worker: a django-q2 cluster and the sweeper,
supervised on real progress (desk.supervisor). Run one per machine, under systemd with
Restart=always (README "Production"); SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import socket

from django.core.management.base import BaseCommand, CommandError

from desk.supervisor import Supervisor


class Command(BaseCommand):
    help = "Run a supervised django-q2 cluster and the sweeper; replace the cluster when stuck."

    def add_arguments(self, parser):
        parser.add_argument(
            "--name",
            default=os.environ.get("DESK_WORKER_NAME") or socket.gethostname(),
            help="This worker's name in heartbeats and health (default: the host name).",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="Worker processes in the cluster (default: DESK_Q_WORKERS, else 2).",
        )

    def handle(self, *args, name, workers, **options):
        name = name.strip()
        if not name or len(name) > 100:
            raise CommandError("--name must be 1 to 100 characters.")
        if workers is not None and workers < 1:
            raise CommandError("--workers must be at least 1.")
        Supervisor(name=name, workers=workers).run()
        self.stdout.write(f"Worker {name} stopped.")
