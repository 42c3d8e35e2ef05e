"""`manage.py desk_sweeper`: run each sweep (the reaper, overdue approvals, service levels)
whenever it is due, claiming it so that one worker runs it per period. `desk_worker`
starts one beside its cluster; `--once` runs what is due now and exits."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

from django.core.management.base import BaseCommand
from django.db import connection

from desk import cluster, services

logger = logging.getLogger("desk.sweeper")


class Command(BaseCommand):
    help = "Run the runtime's sweeps when they are due (desk_worker runs one of these)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run what is due, then exit.")

    def handle(self, *args, once, **options):
        worker = os.environ.get("DESK_WORKER_NAME") or socket.gethostname()
        owner = f"{worker}@{socket.gethostname()}:{os.getpid()}"
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        while not stopping:
            try:
                pause = services.run_due_sweeps(owner=owner)
            except Exception:  # the database is away, say: try again shortly
                logger.exception("sweeper: could not run the sweeps")
                connection.close()
                pause = 1.0
            cluster.touch("sweeper", every=0)
            if once:
                break
            time.sleep(min(max(pause, 0.2), 5.0))
