"""GracefulArbiter: Gunicorn's master, with thin overrides that delegate to the pack.

Every override of a master internal of Gunicorn is in this class (the workers'
are in `workers.py`, the internals they reach in `compat.py`). Each one names
the Gunicorn method it replaces and why a smaller hook does not do; the work
is done by one collaborator per concern, each stating its invariants:

- `phase`: the master's one phase value and what each phase refuses;
- `records`: one record per worker pid;
- `pool`: the reconcile tick (spawn, ready, retire, boot failures, deadlines);
- `recycle`: ready-first recycling (max_requests, memory, age);
- `rollout`: HUP generations, rollback, pinned releases;
- `upgrade`: USR2, as old master and as new master;
- `stop`: lame duck, door, drain;
- `status`: the status file;
- `metrics`: the Prometheus endpoint and the totals it serves (with graceful_metrics_bind).

The `on_starting` hook installs it on the running arbiter (`install`), because
Gunicorn offers no setting for the arbiter class.
"""

import os

from gunicorn.arbiter import Arbiter

from gunicorn_graceful import compat, forked, metrics, recycle, rollout, settings, upgrade
from gunicorn_graceful.events import emit
from gunicorn_graceful.phase import Phase, PhaseKeeper
from gunicorn_graceful.pool import Pool
from gunicorn_graceful.records import Records
from gunicorn_graceful.status import StatusFile
from gunicorn_graceful.stop import Stop
from gunicorn_graceful.systemd import Notifier
from gunicorn_graceful.workers import GracefulMixin, GracefulThreadWorker


WORKER_CLASSES = ("GracefulThreadWorker", "GracefulSyncWorker", "GracefulUvicornWorker",
                  "GracefulASGIWorker")


class GracefulArbiter(Arbiter):
    """Gunicorn's Arbiter with readiness-gated reloads, rollback and a door-closing stop."""

    @classmethod
    def install(cls, arbiter, check_config):
        """Turn a running stock Arbiter into a GracefulArbiter (called by on_starting).

        `check_config(cfg, log)` (from `hooks`) says why a config cannot run under
        the pack and chains the hooks it defined after `install(globals())`.
        """
        arbiter.__class__ = cls
        arbiter.check_config = check_config
        arbiter.generation = 1
        arbiter.phase = PhaseKeeper(arbiter.log, arbiter.pid,
                                    Phase.TRIAL if arbiter.master_pid else Phase.STARTING)
        arbiter.notifier = Notifier.take_from_environ()
        arbiter.records = Records()
        arbiter.pool = Pool(arbiter)
        arbiter.recycler = recycle.Recycler(arbiter)
        arbiter.rollouts = rollout.Rollouts(arbiter)
        arbiter.upgrades = upgrade.Upgrades(arbiter)
        arbiter.stopper = Stop(arbiter)
        arbiter.status = StatusFile(arbiter)
        arbiter.metrics = None
        arbiter.keep_graceful_worker()
        reason = arbiter.foreign_worker_reason(arbiter.cfg) \
            or check_config(arbiter.cfg, arbiter.log)
        if reason:
            raise SystemExit("Error: gunicorn-graceful: " + reason)
        arbiter.metrics = metrics.start(arbiter, settings.current())
        return arbiter

    def setup(self, app):
        """Gunicorn's setup, then keep the graceful worker when threads > 1 (see below)."""
        super().setup(app)
        self.keep_graceful_worker()

    def keep_graceful_worker(self):
        """Gunicorn swaps any `...SyncWorker` for its stock gthread worker when threads > 1;
        for GracefulSyncWorker that would silently drop every graceful behaviour, so the
        graceful thread worker takes its place instead, with a WARNING."""
        if effective_worker_class(self.cfg) is not self.worker_class:
            self.worker_class = GracefulThreadWorker
            emit(self.log, "warning", "settings.warning",
                 problem="worker_class=GracefulSyncWorker with threads=%s: running "
                         "GracefulThreadWorker, as Gunicorn runs gthread for sync with threads; "
                         "set threads = 1 for the sync worker" % self.cfg.threads)

    def foreign_worker_reason(self, cfg):
        """Why the worker class `cfg` configures cannot run under this master, or None.

        No worker of another class ever says it is ready, so the master would
        halt later with a misleading readiness reason (or a HUP roll back).
        """
        if issubclass(effective_worker_class(cfg), GracefulMixin):
            return None
        return ("worker_class=%s is not a gunicorn-graceful worker; use one of "
                "gunicorn_graceful.workers.%s (-k on the command line overrides the config)"
                % (cfg.worker_class_str, ", ".join(WORKER_CLASSES)))

    # -- Gunicorn's main loop -------------------------------------------------------------

    def manage_workers(self):
        """Replaces Gunicorn's, which kills the oldest workers as soon as there are more
        than `workers`, whether or not the new ones can serve: the pool's reconcile tick."""
        if self.phase.is_in(Phase.STOPPING):
            return
        if self.phase.is_in(Phase.LAME_DUCK):
            self.stopper.watch_lame_duck()
            return
        self.upgrades.watch()
        if self.metrics:
            self.metrics.tick()  # before the pool forgets the records of reaped workers
        self.pool.tick()
        compat.report_metrics(self)
        self.status.write()

    def spawn_worker(self):
        """Gunicorn's, with the worker's record (generation, release) made before the fork.

        Not in the pre_fork hook: a config that defines its own `pre_fork` after
        `install(globals())` replaces it, and the pool, seeing no worker, forked
        `workers` more on every tick. The worker inherits its release from here,
        and which listeners it must close (`forked`).
        """
        record = self.pool.new_record()
        self.records.expect(record)
        slot = self.metrics.forking() if self.metrics else None
        forked.prepare(record.release, [lnr.fileno() for lnr in self.rollouts.held()
                                        if lnr not in self.LISTENERS], slot)
        pid = None
        try:
            pid = super().spawn_worker()
        finally:
            self.records.spawned(pid)
            if slot is not None:
                self.metrics.forked(pid, slot)
        return pid

    def murder_workers(self):
        """Gunicorn's heartbeat timeout, plus the deadlines it does not have (`pool`)."""
        super().murder_workers()
        self.pool.enforce_deadlines()

    def reap_workers(self):
        """Replaces Gunicorn's; no smaller hook does, line by line:

        - Gunicorn raises HaltServer when any worker exits with a boot error,
          even while an older generation serves: here the pool decides.
        - It drops the exit status of the new master (`reexec_pid`) and of each
          worker, which the rollback reasons need ("killed by SIGSEGV").
        - The worker's state and boot-failure reason live in its heartbeat file,
          which Gunicorn closes before `child_exit`: they are read first.
        Kept from Gunicorn: its log lines for signals ("Perhaps out of memory?"),
        the dirty arbiter's reap, `tmp.close()` then `child_exit`. On Gunicorn 23
        this runs inside the SIGCHLD handler, so it only records.
        """
        while True:
            try:
                wpid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not wpid:
                return
            self.reaped(wpid, status)

    def reaped(self, wpid, status):
        """One child reaped: only record (the tick acts); the simulation calls this directly.

        The record stays until the next tick's `records.prune`: on Gunicorn 23
        this runs inside the SIGCHLD handler, which must not change the table
        while the main loop iterates it.
        """
        if wpid == self.reexec_pid:
            self.reexec_pid = 0
            self.upgrades.new_master_exited(status)
        elif compat.is_dirty_arbiter(self, wpid):
            self.handle_dirty_arbiter_exit(wpid, status)
        else:
            worker = self.WORKERS.pop(wpid, None)
            if worker is not None:
                record = self.pool.exited(worker, status)
                if self.metrics and record is not None:
                    self.metrics.exited(record)
                worker.tmp.close()
                self.cfg.child_exit(self, worker)

    # -- signals ----------------------------------------------------------------------------

    def reload(self):
        """HUP. Replaces Gunicorn's, which exits when the config fails, closes the old
        listeners and pidfile at once and stops the old workers as soon as the new ones
        are forked: nothing of it can be kept for a rollback (`rollout`)."""
        self.rollouts.reload()

    def handle_term(self):
        """SIGTERM: lame duck first when configured (`stop`); Gunicorn's stops at once."""
        self.stopper.handle_term()

    def handle_usr2(self):
        """USR2. Replaces Gunicorn's, which starts a new master and leaves the hand-over
        to the operator (`upgrade`)."""
        self.upgrades.start()

    def maybe_promote_master(self):
        """Gunicorn's promotion, once the old master is gone and only once this one serves.

        Gunicorn promotes as soon as its parent changed: a new master whose old
        master was SIGKILLed would name itself in the pidfile while none of its
        workers can answer. Its own pidfile rename is left out: not atomic, and
        it raises on an unwritable directory; `take_over` wrote the pidfile.
        """
        if not self.upgrades.may_promote():
            return
        old_master, trial_pidfile = self.master_pid, self.pidfile
        self.pidfile = None
        super().maybe_promote_master()
        self.pidfile = rollout.new_pidfile(self, self.cfg.pidfile)
        self.status.forget()
        self.upgrades.promoted(old_master, trial_pidfile)

    def halt(self, reason=None, exit_status=0):
        """Gunicorn's halt; a new master on trial first tells its old master why."""
        self.upgrades.report_halt(reason)
        super().halt(reason, exit_status)

    def stop(self, graceful=True):
        """Gunicorn's stop, after the door closed (`stop`); then the metrics' totals go to
        the master that serves on, if another does (`upgrade.send_totals`)."""
        self.stopper.begin(graceful)
        super().stop(graceful)
        self.upgrades.send_totals()

    def _stop_control_server(self):
        """Gunicorn >= 27: an old master handing over leaves the control socket path alone,
        since the new master re-bound it (stock unlinks it and breaks gunicornc)."""
        if self.reexec_pid:
            self._control_server = None
            return
        super()._stop_control_server()


def effective_worker_class(cfg):
    """The class the pack runs for `cfg`: Gunicorn's choice, except that GracefulSyncWorker
    with threads > 1 becomes GracefulThreadWorker (see `keep_graceful_worker`)."""
    configured = cfg.settings["worker_class"].get()
    name = configured if isinstance(configured, str) else configured.__name__
    if name.endswith("GracefulSyncWorker") and cfg.threads > 1:
        return GracefulThreadWorker
    return cfg.worker_class
