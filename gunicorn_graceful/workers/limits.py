"""In a worker: the limits it checks itself (`max_requests`, memory), asking once to be recycled.

The master replaces the worker ready-first (`master/recycle.py`); the worker only
counts and sets its state bit (`state.mark_recycle`).
"""

import sys

from gunicorn_graceful import settings, state
from gunicorn_graceful.memory import rss_mib


class WorkerLimits:
    """In a worker: counts what it served and asks to be recycled once, past a limit."""

    def __init__(self, worker):
        self.worker = worker
        # Gunicorn's own max_requests (with its jitter) becomes ours; its exit is disabled.
        self.max_requests, worker.max_requests = worker.max_requests, sys.maxsize
        self.max_rss = settings.current().max_worker_rss
        self.served = 0
        # The count from which `check` has something to do (never, once it asked): the WSGI
        # workers count `served` themselves and call it only from there (a call less on
        # every request).
        self.check_from = 1 if self.max_rss else self.max_requests

    def check_boot_size(self):
        """A memory limit below the worker's own size after boot would recycle forever."""
        size = rss_mib()
        if self.max_rss and size is not None and size >= self.max_rss:
            raise settings.SettingError(
                "graceful_max_worker_rss", self.max_rss,
                "a size above this worker's %.1f MiB after boot" % size)

    def after_request(self):
        """One request served (the asyncio workers; the WSGI ones inline these lines)."""
        self.served += 1
        if self.served >= self.check_from:
            self.check()

    def check(self):
        """Past `check_from`: ask once to be recycled when a limit is reached."""
        size = rss_mib() if self.max_rss else None
        if self.served >= self.max_requests:
            reason = "max_requests"
        elif size is not None and size > self.max_rss:
            reason = "rss"
        else:
            return
        self.check_from = sys.maxsize
        state.mark_recycle(self.worker.tmp, self.worker.ppid, "reason=%s served=%s rss_mib=%.1f"
                           % (reason, self.served, size or rss_mib() or 0))
