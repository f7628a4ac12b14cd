"""GracefulArbiter: Gunicorn's master, with thin overrides that delegate to the pack.

Every override of a master internal of Gunicorn is in this class (the workers'
are in `workers/wsgi.py`, `workers/asgi_native.py` and `workers/asgi_uvicorn.py`,
the internals they reach in `compat.py`). Each one names the Gunicorn method it
replaces and why a smaller hook does not do; the work is done by one collaborator
per concern (each a module of this wing, `gunicorn_graceful.master`), each stating
its invariants:

- `core`: the decisions: what each helper's outcome means in the current phase
  (the only one that moves the phase and tells systemd);
- `phase`: the master's one phase value and what each phase refuses;
- `records`: one record per worker pid;
- `pool`: the reconcile tick (spawn, ready, retire, boot failures, deadlines),
  with `recycle` (ready-first recycling: max_requests, memory, age);
- `rollout`: HUP generations, rollback, pinned releases;
- `intents`: every HUP and what became of it (deferred, done, rolled back, ...);
- `upgrade`: USR2, as old master and as new master;
- `inplace`: USR2 with graceful_upgrade = "in-place" (the master execs the new code);
- `stop`: lame duck, door, drain;
- `status`: the status file;
- `metrics`: the Prometheus endpoint and the totals it serves (with graceful_metrics_bind);
- `mold`: per generation, the process that imports the app once and forks its
  workers (with graceful_mold).
Each helper receives the siblings it reads; none calls another through the arbiter.

The `on_starting` hook installs it on the running arbiter (`install`), because
Gunicorn offers no setting for the arbiter class.
"""

import os
import signal
import socket
import sys
import traceback

from gunicorn import sock, util
from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError

from gunicorn_graceful import clock, compat, forked, handoff, proc, settings, userhooks
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import (files, handover, inplace, intents, metrics, mold,
                                      mold_process, rollout, upgrade)
from gunicorn_graceful.master.core import Core
from gunicorn_graceful.master.generations import Generations
from gunicorn_graceful.master.phase import Phase, PhaseKeeper
from gunicorn_graceful.master.pool import Pool
from gunicorn_graceful.master.records import Records
from gunicorn_graceful.master.status import StatusFile
from gunicorn_graceful.master.system import System
from gunicorn_graceful.master.stop import Stop
from gunicorn_graceful.master.systemd import Notifier


class GracefulArbiter(Arbiter):
    """Gunicorn's Arbiter with readiness-gated reloads, rollback and a door-closing stop."""

    @classmethod
    def install(cls, arbiter, check_config, worker_class_of, system=None):
        """Turn a running stock Arbiter into a GracefulArbiter (called by on_starting).

        From `hooks`, which knows the workers' wing (this one does not import it):
        `check_config(cfg, log)` says why a config cannot run under the pack and
        chains the hooks it defined after `install(globals())`;
        `worker_class_of(cfg)` is the class the pack runs for `cfg`; `system`: the
        calls into the OS (`system.System`; the simulation passes its own).
        """
        arbiter.__class__ = cls
        arbiter.check_config = check_config
        arbiter.worker_class_of = worker_class_of
        # The pack's settings travel with the arbiter, as Gunicorn's `cfg` does: what the
        # config's install(globals()) loaded; a HUP replaces both, a rollback restores both.
        arbiter.settings = settings.current()
        arbiter.system = system or System()
        arbiter.files = files.Owed(arbiter.system, arbiter.log)
        arbiter.generations = Generations(arbiter.settings.release_link)
        files.adopt_pidfile(arbiter.pidfile, arbiter.log)
        handed = handover.take()
        arbiter.phase = PhaseKeeper(arbiter.log, arbiter.pid, Phase.IN_PLACE if handed else
                                    Phase.TRIAL if arbiter.master_pid else Phase.STARTING)
        arbiter.notifier = Notifier.take_from_environ()
        arbiter.records = Records()
        arbiter.rollouts = rollout.Rollouts(arbiter, arbiter.generations, arbiter.system)
        arbiter.pool = Pool(arbiter, arbiter.records, arbiter.generations.release_of)
        arbiter.upgrades = upgrade.Upgrades(arbiter, arbiter.system)
        arbiter.reloads = intents.Reloads(arbiter.log, arbiter.pid)
        arbiter.inplace = inplace.InPlace(arbiter, arbiter.pool, arbiter.upgrades,
                                          arbiter.generations, arbiter.reloads, handed,
                                          arbiter.notifier.address, arbiter.system)
        arbiter.stopper = Stop(arbiter, arbiter.system)
        arbiter.molds = mold.Molds(arbiter, arbiter.pool, arbiter.rollouts,
                                   arbiter.generations, arbiter.inplace) \
            if arbiter.settings.mold else None
        arbiter.inplace.molds = arbiter.molds
        arbiter.status = StatusFile(arbiter, arbiter.phase, arbiter.pool, arbiter.rollouts,
                                    arbiter.upgrades, arbiter.reloads, arbiter.molds)
        arbiter.core = Core(arbiter)
        arbiter.metrics = None
        arbiter.keep_graceful_worker()
        if handed:
            handover.wrote_pidfile(arbiter.inplace.pidfile_path())
        reason = check_config(arbiter.cfg, arbiter.log) \
            or mold.problem(arbiter.cfg, arbiter.settings)
        if reason:
            raise SystemExit(settings.ERROR + reason)
        if handed:
            arbiter.inplace.adopt()
        arbiter.metrics = metrics.start(arbiter, arbiter.pool, arbiter.settings, handed)
        # Before the first fork, so every worker holds it (a full stop); across an in-place
        # exec, the one the adopted workers hold.
        handoff.open_shared(handed["handoff"] if handed else None)
        if arbiter.molds is not None:
            arbiter.system.become_subreaper()
        return arbiter

    @classmethod
    def become_check_mold(cls, arbiter, check_config, worker_class_of):
        """An in-place upgrade's check with graceful_mold, from the pack's on_starting (the
        user's, chained after it, does not run): the new config's checks as a master's
        start runs them, then this process becomes the new generation's mold
        (`mold_process.run_check`) and never returns. The master is its parent."""
        arbiter.__class__ = cls
        arbiter.worker_class_of = worker_class_of
        arbiter.settings = settings.current()
        arbiter.keep_graceful_worker()
        reason = check_config(arbiter.cfg, arbiter.log) \
            or mold.problem(arbiter.cfg, arbiter.settings) \
            or (None if arbiter.settings.mold else "graceful_mold changes on a restart or a "
                "new-master USR2 only (the running master has it on)")
        if reason:
            raise SystemExit(settings.ERROR + reason)
        channel = socket.socket(fileno=int(os.environ.pop(mold_process.CHECK_ENV)))
        # A master SIGKILLed mid-way would leave it importing, or a mold no one adopts.
        proc.signal_at_parent_exit(signal.SIGKILL)
        arbiter.pid = os.getppid()
        arbiter.generations = Generations(arbiter.settings.release_link)  # the master's, sent
        mold_process.run_check(arbiter, channel, arbiter.generations)

    def run_as_check(self):
        """Replaces Gunicorn's `Arbiter.run` in the check `relaunch` starts with graceful_mold:
        Gunicorn's start would write the pidfile with the check's pid, bind and take the
        signals; only its `on_starting` runs (`hooks.on_starting`: `become_check_mold`)."""
        self.pid, self.is_check = os.getpid(), True
        self.cfg.on_starting(self)
        raise SystemExit(settings.ERROR + "the config's on_starting returned in the check "
                         "(it does not install gunicorn-graceful)")

    @property
    def generation(self):
        """The wanted generation (read-only: `generations` alone moves it)."""
        return self.generations.current

    def setup(self, app):
        """Gunicorn's setup, then keep the graceful worker when threads > 1 (see below)."""
        super().setup(app)
        self.keep_graceful_worker()

    def keep_graceful_worker(self):
        """Gunicorn swaps any `...SyncWorker` for its stock gthread worker when threads > 1;
        for GracefulSyncWorker that would silently drop every graceful behaviour, so the
        graceful thread worker takes its place instead, with a WARNING."""
        wanted = self.worker_class_of(self.cfg)
        if wanted is not self.worker_class:
            self.worker_class = wanted
            emit(self.log, "warning", "settings.warning",
                 problem="worker_class=GracefulSyncWorker with threads=%s: running "
                         "GracefulThreadWorker, as Gunicorn runs gthread for sync with threads; "
                         "set threads = 1 for the sync worker" % self.cfg.threads)

    # -- Gunicorn's main loop -------------------------------------------------------------

    def manage_workers(self):
        """Replaces Gunicorn's, which kills the oldest workers as soon as there are more
        than `workers`, whether or not the new ones can serve: the core's tick."""
        self.core.tick()

    def spawn_worker(self):
        """Gunicorn's, with the worker's record (generation, release) made before the fork.

        Not in the pre_fork hook: a config that defines its own `pre_fork` after
        `install(globals())` replaces it, and the pool, seeing no worker, forked
        `workers` more on every tick. The worker inherits its release from here,
        and which listeners it must close (`forked`). On Gunicorn 25 the control
        server must be listening before the next fork (`compat.settle_control_server`).
        With graceful_mold the generation's mold forks it (`spawn_from_mold`); while the
        mold imports, nothing is forked and the pool asks again on the next tick.
        """
        if self.molds is not None and not self.molds.ready():
            return None
        record = self.pool.new_record()
        self.records.expect(record)
        slot = self.metrics.forking() if self.metrics else None
        pid = None
        try:
            if self.molds is not None:
                pid = self.spawn_from_mold(slot)
            else:
                stale = [lnr.fileno() for lnr in self.rollouts.held() + self.inplace.held()
                         if lnr not in self.LISTENERS]
                forked.prepare(record.release,
                               stale + (self.metrics.sibling_fds() if self.metrics else []), slot)
                compat.settle_control_server(self)  # forks come back to back: see there
                pid = super().spawn_worker()
        except userhooks.HookFailed as failed:  # the user's pre_fork: no fork, a boot failure
            failed.hook_args[1].tmp.close()
            self.pool.hook_failed(record.generation, failed.reason,
                                  clock.monotonic() - record.spawned)
        finally:
            self.records.spawned(pid)
            if slot is not None:
                self.metrics.forked(pid, slot)
        return pid

    def spawn_from_mold(self, slot):
        """Gunicorn's spawn_worker, its master's half, with the fork done by the mold: the
        Worker object and pre_fork here, the worker's start in the worker (`run_worker`)."""
        self.worker_age += 1
        worker = self.new_worker()
        self.cfg.pre_fork(self, worker)
        buckets = self.metrics.buckets if self.metrics else ()
        pid = self.molds.fork(worker, slot, buckets)
        if pid is None:
            worker.tmp.close()
            return None
        worker.pid = pid
        self.WORKERS[pid] = worker
        compat.count_spawn(self)
        status = self.molds.take_early_exit(pid)
        if status is not None:  # Gunicorn 23 reaped it before the mold's answer came
            self.reaped(pid, status)
        return pid

    def new_worker(self):
        """The master's Worker object for the next worker, as Gunicorn's spawn_worker makes it
        (the simulation makes its own)."""
        return self.worker_class(self.worker_age, self.pid, self.LISTENERS, self.app,
                                 self.timeout / 2.0, self.cfg, self.log)

    def run_worker(self, worker):
        """In a worker a mold forked: the child's half of Gunicorn's spawn_worker, which cannot
        be called without its fork. Exits like Gunicorn's (SystemExit with its codes)."""
        worker.pid = os.getpid()
        try:
            util._setproctitle("worker [%s]" % self.proc_name)
            self.log.info("Booting worker with pid: %s", worker.pid)
            if compat.WORKER_REUSE_PORT and self.cfg.reuse_port \
                    and hasattr(socket, "SO_REUSEPORT"):
                worker.sockets = sock.create_sockets(self.cfg, self.log)
            self.cfg.post_fork(self, worker)
            worker.init_process()
            sys.exit(0)
        except SystemExit:
            raise
        except AppImportError as exc:
            self.log.debug("Exception while loading the application", exc_info=True)
            print("%s" % exc, file=sys.stderr)
            sys.stderr.flush()
            sys.exit(self.APP_LOAD_ERROR)
        except Exception as exc:
            self.log.exception("Exception in worker process")
            print("%s" % exc, file=sys.stderr)
            sys.stderr.flush()
            sys.exit(self.WORKER_BOOT_ERROR if not worker.booted else -1)
        finally:
            self.log.info("Worker exiting (pid: %s)", worker.pid)
            try:
                worker.tmp.close()
                self.cfg.worker_exit(self, worker)
            except Exception:
                self.log.warning("Exception during worker exit:\n%s", traceback.format_exc())

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
        elif self.molds is not None and self.molds.reaped(wpid, status):
            return
        elif self.inplace.reaped(wpid, status):
            return
        else:
            worker = self.WORKERS.pop(wpid, None)
            if worker is None:  # an orphan, reparented to a master that is PID 1 or a subreaper
                self.log.debug("Reaped unknown child process (pid:%s, status:%s)", wpid, status)
                if self.molds is not None:
                    self.molds.early_exit(wpid, status)
            else:
                record = self.pool.exited(worker, status)
                if self.metrics and record is not None:
                    self.metrics.exited(record)
                worker.tmp.close()
                self.cfg.child_exit(self, worker)

    # -- signals ----------------------------------------------------------------------------

    def reload(self):
        """HUP. Replaces Gunicorn's, which exits when the config fails, closes the old
        listeners and pidfile at once and stops the old workers as soon as the new ones
        are forked: nothing of it can be kept for a rollback (`core`, `rollout`)."""
        self.core.reload()

    def handle_term(self):
        """SIGTERM: lame duck first when configured (`core`); Gunicorn's stops at once."""
        self.core.term()

    def handle_int(self):
        """SIGINT: Gunicorn's quick stop, or, under graceful_int = "drain", SIGTERM's path
        (Nomad's default kill_signal, Ctrl-C in a terminal)."""
        if self.settings.int == "drain":
            self.handle_term()
        super().handle_int()

    def handle_usr2(self):
        """USR2. Replaces Gunicorn's, which starts a new master and leaves the hand-over
        to the operator (`core`, `upgrade`)."""
        self.core.upgrade()

    def maybe_promote_master(self):
        """Gunicorn's promotion, once the old master is gone and only once this one serves.

        Gunicorn promotes as soon as its parent changed: a new master whose old
        master was SIGKILLed would name itself in the pidfile while none of its
        workers can answer. Its own pidfile rename is left out: not atomic, and
        it raises on an unwritable directory; `take_over` wrote the pidfile.
        """
        if not self.core.may_promote():
            return
        old_master, trial_pidfile = self.master_pid, self.pidfile
        self.pidfile = None
        super().maybe_promote_master()
        self.pidfile = rollout.new_pidfile(self, self.cfg.pidfile)
        self.status.forget()
        self.core.promoted(old_master, trial_pidfile)

    def halt(self, reason=None, exit_status=0):
        """Gunicorn's halt; a new master on trial first tells its old master why."""
        self.core.halting(reason)
        super().halt(reason, exit_status)

    def stop(self, graceful=True):
        """Gunicorn's stop, after the door closed (`stop`); then the metrics' totals go to
        the master that serves on, if another does (`upgrade.send_totals`), and the status
        file goes (a new master promoted after this one exited writes its own)."""
        self.core.stopping(graceful)
        if self.molds is not None:
            self.molds.stop_all()
        super().stop(graceful)
        self.upgrades.send_totals(self.metrics)
        if self.metrics and self.upgrades.handed_to is not None:
            self.metrics.pause()  # the new master serves the endpoint next: no scrape is cut
        self.status.remove()
        self.rollouts.stopped()

    def _stop_control_server(self):
        """Gunicorn >= 27: an old master handing over leaves the control socket path alone,
        since the new master re-bound it (stock unlinks it and breaks gunicornc)."""
        if self.reexec_pid:
            self._control_server = None
            return
        super()._stop_control_server()

