"""The pack's own record of each worker, keyed by pid, instead of attributes on Gunicorn's.

Invariants:
- Every worker the master forks has exactly one record, made before the fork
  (`expect`, from the arbiter's `spawn_worker`, not from the pre_fork hook that
  a user's config can replace): on Gunicorn 23 a worker that dies at once is
  reaped inside the SIGCHLD handler before `spawn_worker` returns, and its
  exit must still find the generation it was born for.
- A worker Gunicorn runs without a record (none is known to happen) is adopted
  into the current generation, never ignored: an ignored worker is one the
  pool does not count, and it would fork another in its place on every tick.
- A record leaves the table only in the tick (`prune`), after the worker was
  reaped and `child_exit` ran, or when Gunicorn forgot the worker itself: a
  reap may run inside Gunicorn 23's SIGCHLD handler, while the main loop
  iterates the table ("dictionary changed size during iteration").
- Decisions about a worker's connections are taken from the worker's own state
  bit (`state.read`), never from a cached field here: `ready_at` only says when
  the master first noticed it.
"""

import dataclasses

from gunicorn_graceful import clock


@dataclasses.dataclass
class Record:
    generation: int
    release: str = ""
    spawned: float = dataclasses.field(default_factory=clock.monotonic)
    started_at: float = dataclasses.field(default_factory=clock.wall)
    ready_at: float = None          # when the master first saw the ready bit
    retire_reason: str = None       # why the master told it to stop, if it did
    term_sent: float = None         # when SIGTERM was sent (retire, stop, timeouts)
    kill_reason: str = None         # why the master stopped it before it was ready
    killed: bool = False            # the master sent SIGKILL itself
    timed_out: bool = False         # Gunicorn's heartbeat timeout aborted it
    told_lame_duck: bool = False
    age_jitter: float = 0.0          # added to graceful_max_worker_age for this worker
    recycle: dict = None            # why and since when it waits to be recycled
    final_state: str = None         # the state bit read just before its file closed
    exit_status: int = None

    @property
    def retired(self):
        return self.retire_reason is not None


class Records:
    """pid -> Record, plus the record of the worker being forked now (`next`)."""

    def __init__(self):
        self.by_pid = {}
        self.next = None

    def expect(self, record):
        """Before Gunicorn's spawn_worker: the record of the worker it creates and forks."""
        self.next = record

    def spawned(self, pid):
        """After spawn_worker returned in the master (pid None: it raised before the fork)."""
        if pid and self.next is not None:
            self.by_pid.setdefault(pid, self.next)
        self.next = None

    def of(self, worker):
        """The record of a Gunicorn Worker object; a worker forked but not yet returned from
        spawn_worker (reaped in Gunicorn 23's SIGCHLD handler) takes `next`."""
        record = self.by_pid.get(worker.pid)
        if record is None and worker.pid and self.next is not None:
            record = self.by_pid[worker.pid] = self.next
            self.next = None
        return record

    def adopt(self, worker, record):
        """A worker Gunicorn runs that has no record counts, as `record` (see the top)."""
        return self.by_pid.setdefault(worker.pid, record)

    def prune(self, workers):
        """Each tick, with Gunicorn's WORKERS: forget the workers reaped since the last tick
        and what Gunicorn forgot without a reap (kill_worker's ESRCH path)."""
        for pid in [pid for pid in list(self.by_pid) if pid not in workers]:
            del self.by_pid[pid]
