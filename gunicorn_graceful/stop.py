"""The stop: lame duck first (graceful_shutdown_delay), then the door, then the drain.

Invariants:
- TERM never waits for workers that never became ready: a booting worker exits
  at once on SIGTERM (`GracefulMixin.handle_exit`).
- The door (a socket filter dropping new connections) closes, and the listener
  is shut (new clients refused at once), only when this master is the last
  holder of its listeners: not while a USR2 child or parent shares them, not
  with systemd socket activation, not with reuse_port. What waited in the
  queue is taken and served first (`listeners`).
- In lame duck nothing is spawned or replaced; each ready worker is told once.
- A file error (status file, pidfile) never stops the stop: `files` warns.
- Only the master that is the service sends systemd STOPPING=1.
"""


from gunicorn_graceful import clock, listeners, settings
from gunicorn_graceful.events import emit
from gunicorn_graceful.phase import Phase


class Stop:
    """SIGTERM's side of one master."""

    def __init__(self, arbiter):
        self.arbiter = arbiter
        self.lame_duck_until = None
        self.was_service = False  # whether it was the service when lame duck began

    def handle_term(self):
        """SIGTERM: with graceful_shutdown_delay, lame duck first; a second SIGTERM stops now.

        Kubernetes removes a pod from its endpoints while it sends SIGTERM, and a
        balancer notices a backend leaves only when its health check fails: a
        server that stops accepting at once refuses clients still routed to it.

        A master handing over to its new master never comes here: it stops itself
        once it acknowledged the hand-over (`upgrade`), with no lame duck (its
        workers' 503s on the listener the new workers share would make a balancer
        take the backend out) and no STOPPING.
        """
        arbiter = self.arbiter
        delay = settings.current().shutdown_delay
        if arbiter.phase.is_in(Phase.LAME_DUCK):
            emit(arbiter.log, "info", "master.lame_duck_skipped", pid=arbiter.pid,
                 reason="second SIGTERM")
            raise StopIteration
        if delay <= 0:
            raise StopIteration
        self.lame_duck_until = clock.monotonic() + delay
        service = self.was_service = self.is_service()
        arbiter.phase.move(Phase.LAME_DUCK)
        emit(arbiter.log, "info", "master.lame_duck", pid=arbiter.pid, delay=delay,
             workers=len(arbiter.WORKERS))
        if service:
            arbiter.notifier.stopping(arbiter.log, "lame duck for %ss, then draining" % delay)
        self.tell_lame_duck()

    def tell_lame_duck(self):
        """Signal each ready worker once; one that was still booting is told when ready."""
        arbiter = self.arbiter
        for worker, record in arbiter.pool.workers():
            lame_duck_signal = getattr(worker, "LAME_DUCK_SIGNAL", None)
            if lame_duck_signal and record.ready_at and not record.retired \
                    and not record.told_lame_duck:
                record.told_lame_duck = True
                arbiter.kill_worker(worker.pid, lame_duck_signal)

    def watch_lame_duck(self):
        """Each tick in lame duck: at its end the normal stop begins."""
        arbiter = self.arbiter
        if clock.monotonic() >= self.lame_duck_until:
            emit(arbiter.log, "info", "master.lame_duck_over", pid=arbiter.pid)
            raise StopIteration
        arbiter.pool.notice_ready()
        self.tell_lame_duck()

    def begin(self, graceful):
        """Before Gunicorn's stop: close the door, say what stops, drop the status file."""
        arbiter = self.arbiter
        service = self.is_service()
        arbiter.phase.move(Phase.STOPPING)
        last_holder = (arbiter.reexec_pid == arbiter.master_pid == 0 and not arbiter.systemd
                       and not arbiter.cfg.reuse_port)
        if graceful and last_holder:
            closed = [lnr for lnr in arbiter.LISTENERS if listeners.close_door(lnr)]
            # Nothing waits: refuse new clients now; else the first worker takes the queue.
            shut = [lnr for lnr in closed if not listeners.queued(lnr) and listeners.shut(lnr)]
            emit(arbiter.log, "info", "master.stopping", pid=arbiter.pid,
                 door_closed=",".join(map(str, closed)) or "none",
                 shut=",".join(map(str, shut)) or "none", workers=len(arbiter.WORKERS),
                 graceful_timeout=arbiter.cfg.graceful_timeout)
        if arbiter.reexec_pid:
            emit(arbiter.log, "info", "upgrade.retiring", pid=arbiter.pid,
                 new_master=arbiter.reexec_pid, workers=len(arbiter.WORKERS))
        elif service:
            arbiter.notifier.stopping(arbiter.log, "draining %s workers" % len(arbiter.WORKERS))
        arbiter.status.remove()

    def is_service(self):
        """Whether systemd knows this master as the service: not a new master on trial.

        (A new master that took over is; in lame duck, whatever it was before.)
        """
        arbiter = self.arbiter
        if arbiter.phase.is_in(Phase.LAME_DUCK, Phase.STOPPING):
            return self.was_service
        return not arbiter.master_pid or arbiter.phase.is_in(Phase.TAKING_OVER)
