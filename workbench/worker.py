"""The worker pool (`python -m workbench worker`): huey's consumer running analysis jobs in worker processes.

huey starts the worker processes (forked), takes queue messages in order and restarts a worker that
died. On every health check this pool also marks failed the jobs a dead worker left "running"
(`jobs.reap`). SIGINT (Ctrl-C) stops at once and puts running jobs back in the queue; SIGTERM
lets running jobs finish first.
"""
from __future__ import annotations

import logging
from pathlib import Path

from huey.consumer import Consumer

from workbench import jobs
from workbench.store import Store

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 2.0


def reap_once(db_path: str | Path) -> list[int]:
    """Open the store, mark failed the jobs of dead workers, close it (no connection kept across a fork)."""
    store = Store(db_path)
    try:
        return jobs.reap(store)
    finally:
        store.close()


class JobConsumer(Consumer):
    """huey's consumer, whose health check also reaps the jobs of workers that died."""

    def __init__(self, huey, db_path: str | Path, **options):
        self.db_path = str(db_path)
        super().__init__(huey, **options)

    def check_worker_health(self):
        healthy = super().check_worker_health()  # reaps dead worker processes (no zombies) and restarts them
        try:
            reap_once(self.db_path)
        except Exception:  # a busy database: the next health check tries again
            log.warning("could not check for jobs of dead workers", exc_info=True)
        return healthy


def serve(db_path: str | Path, workers: int = 1, health_check_s: float = HEALTH_CHECK_S) -> None:
    """Run the pool until SIGINT or SIGTERM: `workers` processes taking jobs of this case database."""
    if workers < 1:
        raise ValueError("the pool needs at least one worker")
    reap_once(db_path)  # jobs left running by an earlier pool that died with its workers
    consumer = JobConsumer(jobs.queue(db_path), db_path, workers=workers, worker_type="process", periodic=False,
                           initial_delay=0.1, max_delay=1.0, health_check_interval=health_check_s,
                           graceful_signal="TERM")
    consumer.run()
