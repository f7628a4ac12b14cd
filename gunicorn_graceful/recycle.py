"""Ready-first recycling: a worker past a limit is replaced before it goes, never after.

Gunicorn's worker exits at `max_requests` and its replacement is forked only
then, so capacity drops while the replacement imports the app. Under the pack
a worker that reaches a limit keeps serving and asks to be replaced (a state
bit, `state.mark_recycle`); the master also checks age and memory itself.

Invariants:
- A worker waiting to be recycled drains (SIGTERM) only once a replacement of
  its generation is ready; a replacement that cannot boot never costs it (the
  pool backs off and reports `degraded`).
- At most `graceful_max_booting` replacements (1 when it is 0) are booting or
  draining at once, so the process count stays within workers + that number.
- Recycling runs only while the master is `serving`: a HUP rollout, a USR2
  upgrade, lame duck and stop pause it, and it resumes after.
- One line per recycle: `event=worker.recycle`.
"""

import os
import random
import sys

from gunicorn_graceful import clock, settings, state
from gunicorn_graceful.events import emit
from gunicorn_graceful.phase import Phase

_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 1048576.0


def rss_mib(pid="self"):
    """Resident memory of a process in MiB, from /proc (None when it is gone)."""
    try:
        with open("/proc/%s/statm" % pid) as handle:
            return int(handle.read().split()[1]) * _PAGE_MIB
    except (OSError, IndexError, ValueError):
        return None


class WorkerLimits:
    """In a worker: counts what it served and asks to be recycled once, past a limit."""

    def __init__(self, worker):
        self.worker = worker
        # Gunicorn's own max_requests (with its jitter) becomes ours; its exit is disabled.
        self.max_requests, worker.max_requests = worker.max_requests, sys.maxsize
        self.max_rss = settings.current().max_worker_rss
        self.served = 0
        self.asked = False

    def check_boot_size(self):
        """A memory limit below the worker's own size after boot would recycle forever."""
        size = rss_mib()
        if self.max_rss and size is not None and size >= self.max_rss:
            raise settings.SettingError(
                "graceful_max_worker_rss", self.max_rss,
                "a size above this worker's %.1f MiB after boot" % size)

    def after_request(self):
        self.served += 1
        if self.asked:
            return
        size = rss_mib() if self.max_rss else None
        if self.served >= self.max_requests:
            reason = "max_requests"
        elif size is not None and size > self.max_rss:
            reason = "rss"
        else:
            return
        self.asked = True
        state.mark_recycle(self.worker.tmp, self.worker.ppid, "reason=%s served=%s rss_mib=%.1f"
                           % (reason, self.served, size or rss_mib() or 0))


class Recycler:
    """In the master: which workers wait to be recycled, and when their replacements go."""

    def __init__(self, arbiter):
        self.arbiter = arbiter

    def active(self):
        return self.arbiter.phase.is_in(Phase.SERVING)

    def notice(self, members):
        """Mark members that asked to be recycled, or that the master finds too old or big."""
        current = settings.current()
        now = clock.monotonic()
        for worker, record in members:
            if record.recycle is not None or not record.ready_at:
                continue
            details = None
            if state.wants_recycle(worker.tmp):
                details = dict(item.partition("=")[::2]
                               for item in state.read_reason(worker.tmp).split())
            elif current.max_worker_age and now - record.spawned > current.max_worker_age \
                    + record.age_jitter:
                details = {"reason": "age"}
            elif current.max_worker_rss and (rss_mib(worker.pid) or 0) > current.max_worker_rss:
                details = {"reason": "rss"}
            if details:
                details.setdefault("rss_mib", "%.1f" % (rss_mib(worker.pid) or 0))
                details["noticed"] = now
                record.recycle = details

    def replacements(self, members):
        """How many replacements to boot now for workers waiting to be recycled.

        Booting workers and recycled workers still draining both count against
        the limit, so the process count stays within workers + the limit.
        """
        if not self.active():
            return 0
        arbiter = self.arbiter
        staying = sum(1 for _, r in members if r.recycle is None)
        needed = arbiter.num_workers - staying - max(arbiter.num_workers - len(members), 0)
        limit = settings.current().max_booting or 1
        in_transit = sum(1 for _, r in members if not r.ready_at) + sum(
            1 for _, r in arbiter.pool.workers() if r.retire_reason == "recycled")
        return max(min(needed, limit - in_transit), 0)

    def retire_replaced(self, members):
        """Each ready worker beyond the wanted count lets one waiting worker go, the one
        that asked first.

        Usually that worker is a fresh replacement. After a paused spell (a reload
        rolled back) every ready worker may be waiting, the replacements included: then
        the newest of the others is named as the replacement; there is one, as at least
        one more worker than wanted is ready, unless `workers` is 0 (a HUP to such a
        config): then none is named."""
        arbiter = self.arbiter
        if not self.active():
            return
        waiting = sorted((m for m in members if m[1].recycle is not None),
                         key=lambda m: m[1].recycle["noticed"])
        ready = sum(1 for _, r in members if r.ready_at and r.recycle is None)
        spare = ready + len(waiting) - arbiter.num_workers
        going = waiting[:max(spare, 0)]
        for worker, record in going:
            replacement = max((m for m in members if m[1].ready_at and m not in going),
                              key=lambda m: (m[1].recycle is None, m[1].spawned), default=None)
            emit(arbiter.log, "info", "worker.recycle", pid=worker.pid,
                 reason=record.recycle.get("reason"), served=record.recycle.get("served", "-"),
                 rss_mib=record.recycle.get("rss_mib"),
                 replacement=replacement[0].pid if replacement else "-",
                 after=clock.monotonic() - record.recycle["noticed"])
            arbiter.pool.retire(worker, record, "recycled")


def age_jitter(limit):
    return random.uniform(0, limit) if limit else 0.0
