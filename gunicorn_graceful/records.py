"""The pack's own record of each worker, keyed by pid, instead of attributes on Gunicorn's.

Invariants:
- Every worker the master forks has exactly one record, labelled before the
  fork (`expect`, from pre_fork): on Gunicorn 23 a worker that dies at once is
  reaped inside the SIGCHLD handler before `spawn_worker` returns, and its
  exit must still find the generation it was born for.
- A record leaves the table only after the worker was reaped and `child_exit`
  ran (`drop`), or when Gunicorn forgot the worker itself (`prune`).
- Decisions about a worker's connections are taken from the worker's own state
  bit (`state.read`), never from a cached field here: `ready_at` only says when
  the master first noticed it.
"""

import dataclasses
import time


@dataclasses.dataclass
class Record:
    generation: int
    release: str = ""
    spawned: float = dataclasses.field(default_factory=time.monotonic)
    started_at: float = dataclasses.field(default_factory=time.time)
    ready_at: float = None          # when the master first saw the ready bit
    retire_reason: str = None       # why the master told it to stop, if it did
    term_sent: float = None         # when SIGTERM was sent (retire, stop, timeouts)
    kill_reason: str = None         # why the master stopped it before it was ready
    killed: bool = False            # the master sent SIGKILL itself
    told_lame_duck: bool = False
    age_jitter: float = 0.0          # added to graceful_max_worker_age for this worker
    recycle: dict = None            # why and since when it waits to be recycled
    final_state: str = None         # the state bit read just before its file closed
    exit_status: int = None

    @property
    def retired(self):
        return self.retire_reason is not None


class Records:
    """pid -> Record, plus the records of workers whose fork has not returned a pid yet."""

    def __init__(self):
        self.by_pid = {}
        self._pending = {}

    def expect(self, worker, record):
        """Before the fork: `record` belongs to `worker`, whose pid is not known yet."""
        self._pending[id(worker)] = (worker, record)

    def of(self, worker):
        """The record of a Gunicorn Worker object (binding an expected one on first sight)."""
        record = self.by_pid.get(worker.pid)
        if record is None and worker.pid:
            entry = self._pending.get(id(worker))
            if entry is not None and entry[0] is worker:
                del self._pending[id(worker)]
                record = self.by_pid[worker.pid] = entry[1]
        return record

    def drop(self, pid):
        self.by_pid.pop(pid, None)

    def prune(self, workers):
        """Each tick, with Gunicorn's WORKERS: bind what was forked, forget what Gunicorn
        forgot without a reap (kill_worker's ESRCH path) or never forked."""
        for worker in list(workers.values()):
            self.of(worker)
        self._pending.clear()
        for pid in [pid for pid in self.by_pid if pid not in workers]:
            del self.by_pid[pid]
