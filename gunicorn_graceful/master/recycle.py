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

import random

from gunicorn_graceful import clock, state
from gunicorn_graceful.events import emit
from gunicorn_graceful.memory import rss_mib


class Recycler:
    """In the master: which workers wait to be recycled, and when their replacements go.

    Part of the pool, which asks it only while the master serves (`core`).
    """

    def __init__(self, arbiter):
        self.arbiter = arbiter

    def notice(self, members):
        """Mark members that asked to be recycled, or that the master finds too old or big."""
        current = self.arbiter.settings
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

    def replacements(self, members, workers):
        """How many replacements to boot now for workers waiting to be recycled (`members`
        of the serving generation, among all the `workers`).

        Booting workers and recycled workers still draining both count against
        the limit, so the process count stays within workers + the limit.
        """
        arbiter = self.arbiter
        staying = sum(1 for _, r in members if r.recycle is None)
        needed = arbiter.num_workers - staying - max(arbiter.num_workers - len(members), 0)
        limit = self.arbiter.settings.max_booting or 1
        in_transit = sum(1 for _, r in members if not r.ready_at) + sum(
            1 for _, r in workers if r.retire_reason == "recycled")
        return max(min(needed, limit - in_transit), 0)

    def going(self, members):
        """The waiting workers to retire now: each ready worker beyond the wanted count lets
        one go, the one that asked first (one `worker.recycle` line each).

        Usually that worker is a fresh replacement. After a paused spell (a reload
        rolled back) every ready worker may be waiting, the replacements included: then
        the newest of the others is named as the replacement; there is one, as at least
        one more worker than wanted is ready, unless `workers` is 0 (a HUP to such a
        config): then none is named."""
        arbiter = self.arbiter
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
        return going


def age_jitter(limit):
    return random.uniform(0, limit) if limit else 0.0
