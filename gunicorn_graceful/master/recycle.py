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
from gunicorn_graceful.memory import rss_mib


class Recycler:
    """In the master: which workers wait to be recycled (when their replacements boot and
    when they go is the plan's: `plan.replacements`, `plan.going`).

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


def age_jitter(limit):
    return random.uniform(0, limit) if limit else 0.0
