"""The stop: lame duck first (graceful_shutdown_delay), then the door, then the drain.

Invariants:
- TERM never waits for workers that never became ready: a booting worker exits
  at once on SIGTERM (`GracefulMixin.handle_exit`).
- The door (a socket filter dropping new connections) closes, and the listener
  is shut (new clients refused at once), only when this master is the last
  holder of its listeners: not while a USR2 child or parent shares them, not
  with systemd socket activation, not with reuse_port. What waited in the
  queue is handed to the workers (`handoff`) and served first, by all of them.
- In lame duck nothing is spawned or replaced; each ready worker is told once.
- A file error (status file, pidfile) never stops the stop: `files` warns.
- Only the master that is the service sends systemd STOPPING=1 (`core.is_service`).
"""

import time

from gunicorn_graceful import clock, handoff, listeners
from gunicorn_graceful.events import emit
from gunicorn_graceful.master.facts import LameDuckOver


class Stop:
    """SIGTERM's side of one master: the lame duck's clock and the door (`core` decides)."""

    def __init__(self, arbiter, system):
        self.arbiter, self.system = arbiter, system
        self.lame_duck_until = None

    def lame_duck(self, delay):
        """Lame duck begins: workers keep serving, health answers 503, for `delay` seconds."""
        arbiter = self.arbiter
        self.lame_duck_until = clock.monotonic() + delay
        emit(arbiter.log, "info", "master.lame_duck", pid=arbiter.pid, delay=delay,
             workers=len(arbiter.WORKERS))

    def tell_lame_duck(self, workers):
        """Signal each ready worker once; one that was still booting is told when ready."""
        for worker, record in workers:
            lame_duck_signal = getattr(worker, "LAME_DUCK_SIGNAL", None)
            if lame_duck_signal and record.ready_at and not record.retired \
                    and not record.told_lame_duck:
                record.told_lame_duck = True
                self.arbiter.kill_worker(worker.pid, lame_duck_signal)

    def watch(self):
        """Each tick in lame duck: `facts.LameDuckOver` once graceful_shutdown_delay passed."""
        return [] if clock.monotonic() < self.lame_duck_until else [LameDuckOver()]

    def lame_duck_over(self):
        emit(self.arbiter.log, "info", "master.lame_duck_over", pid=self.arbiter.pid)

    def close_door(self, graceful):
        """Before Gunicorn's stop, when this master is the last holder of its listeners:
        drop new connections, refuse them at once where nothing waits (one line)."""
        arbiter = self.arbiter
        last_holder = (arbiter.reexec_pid == arbiter.master_pid == 0 and not arbiter.systemd
                       and not arbiter.cfg.reuse_port)
        if not (graceful and last_holder):
            return
        closed = [lnr for lnr in arbiter.LISTENERS if self.system.close_door(lnr)]
        if closed:
            time.sleep(listeners.HANDSHAKE_GRACE)  # handshakes under way enter the queue
        handed = handoff.shared.hand(
            [(i, lnr) for i, lnr in enumerate(arbiter.LISTENERS) if lnr in closed]) \
            if closed and getattr(arbiter.worker_class, "TAKES_HANDOFF", False) else 0
        # What the hand-off could not hold stays queued: the worker that empties it shuts it.
        shut = [lnr for lnr in closed if not listeners.queued(lnr) and listeners.shut(lnr)]
        emit(arbiter.log, "info", "master.stopping", pid=arbiter.pid,
             door_closed=",".join(map(str, closed)) or "none",
             shut=",".join(map(str, shut)) or "none", handed=handed,
             queued=sum(listeners.queued(lnr) for lnr in closed), workers=len(arbiter.WORKERS),
             graceful_timeout=arbiter.cfg.graceful_timeout)
