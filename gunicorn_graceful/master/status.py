"""`<pidfile>.status`: what the master and each worker are doing, for `gunicorn-graceful status`.

Invariants:
- Written atomically (one rename, through the system port) and only when it
  changed, in lame duck too; a write that fails is one WARNING (`files`), never
  an exception, and is tried again every tick until it lands (else `status`
  would list the previous generation's workers).
- It lists the workers Gunicorn still runs, in the state each worker says it is
  in (its own state bit), `retiring` while a SIGTERM is on its way.
- `serving` is true only while at least one worker is ready; `state` is
  `degraded` while workers cannot be replaced or none is ready.
- `process_started` is the master's start (`proc`): a pid in it that now runs another
  process is not this master.
"""

import json
import os

from gunicorn_graceful import proc, state
from gunicorn_graceful.master import files
from gunicorn_graceful.master.phase import Phase


class StatusFile:
    """The status file of one master, written from what the helpers it reads hold."""

    def __init__(self, arbiter, phase, pool, rollouts, upgrades, reloads, molds=None):
        self.arbiter, self.phase = arbiter, phase
        self.pool, self.rollouts, self.upgrades, self.molds = pool, rollouts, upgrades, molds
        self.reloads = reloads
        self.last = None
        self.started = proc.start_time(os.getpid())  # the CLI's check of who it signals

    def path(self):
        pidfile = self.arbiter.pidfile
        return files.status_path(pidfile.fname) if pidfile is not None else None

    def snapshot(self):
        arbiter = self.arbiter
        workers = [{"pid": w.pid, "generation": r.generation,
                    "state": worker_state(w, r), "started_at": round(r.started_at, 1)}
                   for w, r in sorted(self.pool.workers(), key=lambda p: p[0].age)]
        ready = sum(1 for w in workers if w["state"] in (state.READY, "recycling"))
        rollout = self.rollouts.current
        if rollout is not None:
            rollout = {"generation": rollout.generation,
                       "previous_generation": rollout.previous_generation,
                       "started_at": round(rollout.started_at, 1)}
        return {"pid": arbiter.pid, "process_started": self.started,
                "generation": arbiter.generation,
                "state": self.state_name(ready), "phase": self.phase.value.value,
                "workers_wanted": arbiter.num_workers, "workers_ready": ready,
                "serving": ready > 0, "degraded": self.pool.degraded, "reload": rollout,
                "upgrade": self.upgrades.last, "upgrade_refused": self.upgrades.last_refusal,
                "upgrades": self.upgrades.history, "upgrade_seq": self.upgrades.seq, "upgrade_pending": self.upgrades.pending,
                "hup_seq": self.reloads.seq, "reloads": self.reloads.records,
                "old_master": arbiter.master_pid or None, "workers": workers,
                "molds": self.mold_states()}

    def mold_states(self):
        """Each mold: importing, ready, or stopping (with graceful_mold; else empty)."""
        if self.molds is None:
            return []
        return [{"pid": m.pid, "generation": m.generation,
                 "state": "stopping" if m.stopping else "ready" if m.ready_at else "importing"}
                for m in sorted(self.molds.by_pid.values(), key=lambda m: m.generation)]

    def state_name(self, ready):
        """What an operator asks first: does it serve as it should?"""
        phase = self.phase
        if phase.is_in(Phase.STOPPING, Phase.LAME_DUCK):
            return "stopping"
        if phase.is_in(Phase.STARTING, Phase.TRIAL):
            return "starting"
        if self.pool.degraded is not None or ready == 0:
            return "degraded"
        return {Phase.RELOADING: "reloading", Phase.UPGRADING: "upgrading",
                Phase.IN_PLACE: "upgrading"}.get(
            phase.value, "serving")

    def write(self):
        path = self.path()
        if path is None:
            return
        snapshot = self.snapshot()
        if snapshot == self.last:
            return
        if self.arbiter.system.write_file(self.arbiter.log, path, json.dumps(snapshot)):
            self.last = snapshot  # a failed write is tried again on the next tick

    def remove(self):
        path = self.path()
        if path is not None:
            self.arbiter.system.remove_file(self.arbiter.log, path)

    def forget(self):
        """The path changed (promotion): write the next snapshot even if it is the same."""
        self.last = None


def worker_state(worker, record):
    """booting, ready or draining as the worker says; retiring while a SIGTERM is on its way."""
    said = state.read(worker.tmp)
    if record.retired and said != state.DRAINING:
        return "retiring"
    if said == state.READY and record.recycle is not None:
        return "recycling"
    return said
