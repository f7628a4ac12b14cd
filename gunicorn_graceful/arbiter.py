"""GracefulArbiter: Gunicorn's master, with reloads that never take the service down.

Every override of a master internal of Gunicorn is in this class; the workers'
are in `workers.py`. The `on_starting` hook installs it on the running
arbiter (`install`), because Gunicorn offers no setting for the arbiter class.

The master runs one reconcile step per loop tick (`manage_workers`), as Puma's
`check_workers` does: it compares the wanted generation with the workers that
are ready and shrinks the difference by one step. Invariants:

- Old workers are told to stop only when the whole new generation is ready,
  so the number of workers able to serve never drops below `workers`.
- At most `graceful_max_booting` new workers boot at once (0: no limit).
- A new generation that fails (a worker exits before it is ready, or is not
  ready within `graceful_readiness_timeout`) is stopped; the old one keeps
  serving and one ERROR line says why. The master never exits for it.
- A config file that fails on HUP changes nothing: the running configuration stays.
- A reload decision never SIGKILLs a worker that may hold connections: a worker is
  stopped with SIGTERM (one still booting exits at once on it), and SIGKILL follows
  only when its own state bit still says booting a second later.
- A rollback lasts as long as the master: with graceful_release_link each
  generation is pinned to its release; without one, a replacement that cannot
  boot makes the master `degraded` (status, systemd STATUS=) until workers are ready.
- Generation numbers are never reused, and a file-system error is a WARNING, never a crash.

USR2 (tableflip's rules): at most two masters, at most one of them not ready,
no new upgrade until the previous one ended. The new master takes over (pidfile
rewritten atomically, MAINPID to systemd, SIGTERM to the old master) only when
all its workers are ready; the old master stops a new master that is not
done within `graceful_upgrade_timeout`, and keeps serving when one dies, with
the reason the new master reported (`upgrade_report`), its control socket
re-bound and no `.2` file left behind. A new master whose old master died
promotes itself only once its own workers are ready. Every refusal is one
ERROR line with the reason.
"""

import dataclasses
import json
import os
import signal
import time

from gunicorn import sock, util
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.pidfile import Pidfile

from gunicorn_graceful import files, listeners, release, settings, state, upgrade_report
from gunicorn_graceful.events import emit
from gunicorn_graceful.systemd import Notifier
from gunicorn_graceful.workers import GracefulMixin, GracefulThreadWorker

_BACKOFF_LIMIT = 30.0
_KILL_GRACE = 1.0
# Exit codes of the forked child of a USR2 that never became a new master.
EXEC_FAILED = 70
PRE_EXEC_FAILED = 71


@dataclasses.dataclass
class Rollout:
    """A reload in progress: the generation being booted and what to go back to."""

    generation: int
    previous_generation: int
    previous_cfg: object
    previous_settings: object
    previous_listeners: list
    previous_pidfile: object
    started: float = dataclasses.field(default_factory=time.monotonic)
    started_at: float = dataclasses.field(default_factory=time.time)


@dataclasses.dataclass
class Upgrade:
    """A USR2 upgrade, as its old master sees it."""

    seq: int
    new_master: int
    report: object
    started: float = dataclasses.field(default_factory=time.monotonic)
    exit_status: object = None
    stop_sent: float = 0.0


@dataclasses.dataclass
class BootFailure:
    pid: int
    generation: int
    reason: str
    elapsed: float
    exit_code: int


class GracefulArbiter(Arbiter):
    """Gunicorn's Arbiter with readiness-gated reloads, rollback and a door-closing stop."""

    @classmethod
    def install(cls, arbiter):
        """Turn a running stock Arbiter into a GracefulArbiter (called by on_starting)."""
        arbiter.__class__ = cls
        arbiter.generation = arbiter.last_generation = 1
        arbiter.releases = {1: release.resolve(current_settings().release_link)}
        arbiter.degraded = None
        arbiter.rollout = None
        arbiter.serving = False
        arbiter.stopping = False
        arbiter.boot_failures = []
        arbiter.failure_streak = 0
        arbiter.respawn_after = 0.0
        arbiter.notifier = Notifier.take_from_environ()
        arbiter.report_fd = upgrade_report.take(os.environ, arbiter.cfg.env_orig)
        arbiter.last_status = None
        arbiter.upgrade = None
        arbiter.upgrade_seq = 0
        arbiter.last_upgrade = None
        arbiter.last_refusal = None
        arbiter.handed_over = False
        arbiter.lame_duck_until = None
        arbiter.keep_graceful_worker()
        reason = foreign_worker(arbiter.worker_class, arbiter.cfg)
        if reason:
            raise SystemExit("Error: gunicorn-graceful: " + reason)
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

    # -- spawning and retiring ------------------------------------------------

    def label_worker(self, worker):
        """Before the fork (pre_fork): what the worker is born for.

        Labelled before the fork, not after: on Gunicorn 23 a worker that dies at
        once is reaped inside the SIGCHLD handler before `spawn_worker` returns.
        """
        worker.generation = self.generation
        worker.release = self.releases.get(self.generation, "")
        worker.spawned = time.monotonic()
        worker.started_at = time.time()
        worker.retired = None
        worker.term_sent = None
        worker.kill_reason = None
        worker.seen_ready = False

    def retire(self, worker, reason):
        """Ask a worker to stop with SIGTERM; it is no longer counted as serving.

        SIGTERM whatever the worker's state: a ready one drains, one still
        booting exits at once (`GracefulMixin.handle_exit`). The master's cached
        view may be a tick old; a worker that became ready meanwhile may hold
        connections, and SIGKILL would reset them.
        """
        worker.retired = time.monotonic()
        emit(self.log, "info", "worker.retire", pid=worker.pid,
             generation=getattr(worker, "generation", 0), reason=reason)
        self.stop_worker(worker)

    def stop_worker(self, worker):
        worker.term_sent = time.monotonic()
        self.kill_worker(worker.pid, signal.SIGTERM)

    def workers_of(self, generation):
        return [w for w in list(self.WORKERS.values())
                if getattr(w, "generation", 0) == generation and getattr(w, "retired", None) is None]

    def old_workers(self):
        return [w for w in list(self.WORKERS.values())
                if getattr(w, "generation", 0) != self.generation
                and getattr(w, "retired", None) is None]

    # -- the reconcile tick ----------------------------------------------------

    def manage_workers(self):
        """One reconcile step: notice ready workers, handle failures, spawn, hand over.

        Overrides Gunicorn's, which kills the oldest workers as soon as there
        are more than `workers`, whether or not the new ones can serve.
        """
        if self.stopping:
            return
        if self.lame_duck_until is not None:
            self.watch_lame_duck()
            return
        self.notice_ready()
        self.watch_upgrade()
        self.handle_boot_failures()
        members = self.workers_of(self.generation)
        self.spawn_missing(members)
        self.retire_extras(members)
        self.hand_over(members)
        self.write_status()

    def notice_ready(self):
        for worker in list(self.WORKERS.values()):
            if not getattr(worker, "seen_ready", True) and state.was_ready(worker.tmp):
                worker.seen_ready = True
                self.failure_streak = 0
                emit(self.log, "info", "worker.ready", pid=worker.pid,
                     generation=worker.generation,
                     boot_time=time.monotonic() - worker.spawned)

    def spawn_missing(self, members):
        missing = self.num_workers - len(members)
        if missing <= 0 or time.monotonic() < self.respawn_after:
            return
        limit = current_settings().max_booting
        if limit:  # 0: no limit
            missing = min(missing, limit - sum(1 for w in members if not w.seen_ready))
        for _ in range(max(missing, 0)):
            self.spawn_worker()

    def retire_extras(self, members):
        """TTOU or a smaller `workers` after HUP: retire the oldest surplus workers."""
        surplus = len(members) - self.num_workers
        for worker in sorted(members, key=lambda w: w.age)[:max(surplus, 0)]:
            self.retire(worker, "surplus")

    def hand_over(self, members):
        ready = sum(1 for w in members if w.seen_ready)
        if ready < self.num_workers:
            return
        for worker in self.old_workers():
            self.retire(worker, "replaced")
        if self.rollout is not None:
            emit(self.log, "info", "reload.done", generation=self.generation,
                 duration=time.monotonic() - self.rollout.started, workers=ready)
            self.finish_rollout(self.rollout)
            self.notifier.ready(self.log, "generation %s serving" % self.generation)
        elif not self.serving:
            emit(self.log, "info", "master.serving", pid=self.pid, generation=self.generation,
                 workers=ready)
            if not self.master_pid:
                self.notifier.ready(self.log, "generation %s serving" % self.generation)
        elif self.degraded is not None:
            emit(self.log, "info", "master.recovered", pid=self.pid, generation=self.generation,
                 workers=ready, reason=self.degraded["reason"])
            self.notifier.ready(self.log, "generation %s serving" % self.generation)
        self.degraded = None
        self.serving = True
        if self.master_pid and not self.handed_over:
            self.take_over()

    # -- failures ------------------------------------------------------------------

    def reap_workers(self):
        """Reap children without ever raising HaltServer.

        Overrides Gunicorn's, which halts the whole master when any worker
        exits with a boot error, even while an older generation still serves.
        Gunicorn 23 calls this from its SIGCHLD handler, so it only records
        failures; the reconcile tick acts on them.
        """
        while True:
            try:
                wpid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not wpid:
                return
            if wpid == self.reexec_pid:
                self.reexec_pid = 0
                if self.upgrade is not None:
                    self.upgrade.exit_status = status
            elif wpid == getattr(self, "dirty_arbiter_pid", 0):
                self.handle_dirty_arbiter_exit(wpid, status)
            else:
                worker = self.WORKERS.pop(wpid, None)
                if worker is not None:
                    self.worker_exited(worker, status)

    def worker_exited(self, worker, status):
        worker.exit_status = status
        was_ready = state.was_ready(worker.tmp)
        if not was_ready and getattr(worker, "retired", None) is None:
            reason = getattr(worker, "kill_reason", None) or state.read_reason(worker.tmp) \
                or describe_status(status)
            self.boot_failures.append(BootFailure(
                worker.pid, getattr(worker, "generation", 0), reason,
                time.monotonic() - getattr(worker, "spawned", time.monotonic()),
                os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1))
        try:
            self.cfg.child_exit(self, worker)
        finally:
            worker.tmp.close()

    def handle_boot_failures(self):
        failures, self.boot_failures = self.boot_failures, []
        for failure in failures:
            if failure.generation != self.generation:
                continue
            if self.rollout is not None:
                self.roll_back(failure)
            elif not self.serving:
                self.halt_on_boot_failure(failure)
            else:
                self.back_off(failure)

    def roll_back(self, failure):
        rollout = self.rollout
        emit(self.log, "error", "reload.rollback", generation=rollout.generation,
             kept_generation=rollout.previous_generation, worker=failure.pid,
             after=failure.elapsed, reason=failure.reason)
        for worker in self.workers_of(rollout.generation):
            self.retire(worker, "rollback")
        self.rollout = None
        self.generation = rollout.previous_generation
        self.restore(rollout)
        self.notifier.ready(self.log, "reload failed, generation %s still serving: %s"
                            % (self.generation, failure.reason))

    def halt_on_boot_failure(self, failure):
        """No worker ever served: like Gunicorn, stop, but cleanly and saying why."""
        code = failure.exit_code if failure.exit_code in (self.WORKER_BOOT_ERROR,
                                                          self.APP_LOAD_ERROR) \
            else self.WORKER_BOOT_ERROR
        raise HaltServer("worker %s failed to boot: %s" % (failure.pid, failure.reason), code)

    def back_off(self, failure):
        """A replacement worker failed to boot while others serve: retry later, never halt.

        The master is `degraded` until its generation has all its workers ready
        again: the status file, `gunicorn-graceful status` and systemd say so.
        """
        self.failure_streak += 1
        delay = min(2.0 ** (self.failure_streak - 1), _BACKOFF_LIMIT)
        self.respawn_after = time.monotonic() + delay
        emit(self.log, "error", "worker.boot_failed", pid=failure.pid,
             generation=failure.generation, after=failure.elapsed, retry_in=delay,
             reason=failure.reason)
        if self.degraded is None:
            self.degraded = {"since": round(time.time(), 1)}
        self.degraded.update(failures=self.failure_streak, reason=failure.reason)
        self.notifier.status(self.log, "degraded: generation %s cannot replace workers: %s"
                             % (self.generation, failure.reason))

    def murder_workers(self):
        """Gunicorn's heartbeat timeout, plus the deadlines it does not have.

        A worker not ready within the readiness timeout is stopped (Gunicorn never
        times out a worker before its first heartbeat). A worker told to stop is
        SIGKILLed when its own state bit still says booting after _KILL_GRACE (it
        hangs where its SIGTERM handler cannot run, and has accepted nothing), or
        when it is still draining after graceful_timeout, as Gunicorn's stop does.
        """
        super().murder_workers()
        now = time.monotonic()
        readiness_timeout = current_settings().readiness_timeout
        for worker in list(self.WORKERS.values()):
            term_sent = getattr(worker, "term_sent", None)
            booting = not state.was_ready(worker.tmp)
            if term_sent is None:
                if booting and now - worker.spawned > readiness_timeout:
                    worker.kill_reason = "not ready after %.1fs (graceful_readiness_timeout)" \
                        % (now - worker.spawned)
                    self.stop_worker(worker)
            elif now - term_sent > (_KILL_GRACE if booting
                                    else self.cfg.graceful_timeout + _KILL_GRACE):
                self.kill_worker(worker.pid, signal.SIGKILL)

    # -- reload ----------------------------------------------------------------------

    def reload(self):
        """HUP: load the config again, then boot a new generation that must prove itself.

        Overrides Gunicorn's, which exits when the config fails and stops the
        old workers as soon as the new ones are forked.
        """
        if self.lame_duck_until is not None:
            emit(self.log, "error", "reload.refused", pid=self.pid,
                 reason="the master is in lame duck, about to stop")
            return
        if self.reexec_pid or self.master_pid:
            emit(self.log, "error", "reload.refused", pid=self.pid,
                 reason="a USR2 upgrade is in progress (masters %s and %s): HUP again after it"
                        % (self.master_pid or self.pid, self.reexec_pid or self.pid))
            return
        previous_cfg, previous_settings = self.cfg, current_settings()
        reset_environment(previous_cfg)
        try:
            self.app.reload()
        except (Exception, SystemExit) as exc:
            self.app.cfg = previous_cfg
            settings.set_current(previous_settings)
            apply_environment(previous_cfg)
            emit(self.log, "error", "reload.config_failed", config=previous_cfg.config,
                 reason=config_failure(exc), kept_generation=self.generation)
            return
        foreign = foreign_worker(effective_worker_class(self.cfg), self.cfg)
        if foreign:
            self.app.cfg = previous_cfg
            settings.set_current(previous_settings)
            apply_environment(previous_cfg)
            emit(self.log, "error", "reload.config_failed", config=previous_cfg.config,
                 reason=foreign, kept_generation=self.generation)
            return
        generation = self.last_generation + 1
        if self.rollout is None:
            rollout = Rollout(generation, self.generation, previous_cfg, previous_settings,
                              self.LISTENERS, self.pidfile)
        else:  # a HUP during a HUP: a rollback goes back to what the first one replaced
            self.supersede(self.rollout)
            rollout = dataclasses.replace(self.rollout, generation=generation,
                                          started=time.monotonic(), started_at=time.time())
        self.apply_reloaded_config(rollout.previous_cfg)
        self.begin_rollout(rollout)

    def apply_reloaded_config(self, current_cfg):
        """What Gunicorn's reload does with a new config, minus spawning and killing workers.

        The listeners and pidfile it replaces stay as they are until the rollout
        is done (`finish_rollout`), so that a rollback can restore them (`restore`).
        """
        self.setup(self.app)
        self.log.reopen_files()
        if current_cfg.address != self.cfg.address:
            self.LISTENERS = sock.create_sockets(self.cfg, self.log)
            emit(self.log, "info", "master.listening",
                 listeners=",".join(str(lnr) for lnr in self.LISTENERS))
        self.cfg.on_reload(self)
        if self.cfg.pidfile != current_cfg.pidfile:
            self.pidfile = self.new_pidfile(self.cfg.pidfile)
        util._setproctitle("master [%s]" % self.proc_name)
        if self.cfg.preload_app:
            emit(self.log, "warning", "reload.preload", generation=self.generation + 1,
                 reason="preload_app is on: the master imported the app once and HUP cannot "
                        "reload its code; workers are replaced with the same code. Use USR2 "
                        "to deploy new code")

    def new_pidfile(self, path):
        """A Pidfile for `path` naming this master, written atomically (None without a path)."""
        if path is None:
            return None
        pidfile = Pidfile(path)
        pidfile.pid = self.pid
        files.write(self.log, path, "%s\n" % self.pid)
        return pidfile

    def begin_rollout(self, rollout):
        """HUP: a new generation boots from the release the deploy link points to now."""
        self.rollout = rollout
        self.generation = self.last_generation = rollout.generation
        self.releases[rollout.generation] = release.resolve(current_settings().release_link)
        self.failure_streak, self.respawn_after = 0, 0.0
        self.notifier.reloading(self.log, "booting generation %s" % self.generation)
        emit(self.log, "info", "reload.start", generation=self.generation,
             previous_generation=rollout.previous_generation, workers=self.num_workers,
             max_booting=current_settings().max_booting)
        self.manage_workers()

    def supersede(self, rollout):
        """A newer HUP replaces a rollout still booting: stop its workers, drop what it opened."""
        for worker in self.workers_of(rollout.generation):
            self.retire(worker, "superseded")
        self.releases.pop(rollout.generation, None)
        self.drop_rollout_files(rollout)
        self.LISTENERS, self.pidfile = rollout.previous_listeners, rollout.previous_pidfile

    def finish_rollout(self, rollout):
        """The new generation serves: close the listeners and pidfile it replaced."""
        self.rollout = None
        for generation in [g for g in self.releases if g < rollout.generation]:
            del self.releases[generation]
        if self.LISTENERS is not rollout.previous_listeners:
            for lnr in rollout.previous_listeners:
                lnr.close()
        if self.pidfile is not rollout.previous_pidfile and rollout.previous_pidfile is not None:
            files.remove(self.log, rollout.previous_pidfile.fname)

    def restore(self, rollout):
        """Rollback: the configuration, settings, environment, listeners and pidfile it replaced."""
        self.drop_rollout_files(rollout)
        self.releases.pop(rollout.generation, None)
        reset_environment(self.cfg)
        self.app.cfg = rollout.previous_cfg
        settings.set_current(rollout.previous_settings)
        self.setup(self.app)
        self.LISTENERS, self.pidfile = rollout.previous_listeners, rollout.previous_pidfile

    def drop_rollout_files(self, rollout):
        """Close the listeners and remove the pidfile a rollout opened in place of the kept ones."""
        if self.LISTENERS is not rollout.previous_listeners:
            for lnr in self.LISTENERS:
                lnr.close()
        if self.pidfile is not rollout.previous_pidfile and self.pidfile is not None:
            files.remove(self.log, self.pidfile.fname)

    # -- lame duck ----------------------------------------------------------------------

    def handle_term(self):
        """SIGTERM: with graceful_shutdown_delay, lame duck first; a second SIGTERM stops now.

        Kubernetes removes a pod from its endpoints while it sends SIGTERM, and a
        balancer notices a backend leaves only when its health check fails: a
        server that stops accepting at once refuses clients still routed to it.
        """
        if self.lame_duck_until is not None:
            emit(self.log, "info", "master.lame_duck_skipped", pid=self.pid,
                 reason="second SIGTERM")
            raise StopIteration
        delay = current_settings().shutdown_delay
        if delay <= 0:
            raise StopIteration
        self.lame_duck_until = time.monotonic() + delay
        emit(self.log, "info", "master.lame_duck", pid=self.pid, delay=delay,
             workers=len(self.WORKERS))
        if self.is_service():
            self.notifier.stopping(self.log, "lame duck for %ss, then draining" % delay)
        self.tell_lame_duck()

    def tell_lame_duck(self):
        """Signal each ready worker once; one that was still booting is told when ready."""
        for worker in list(self.WORKERS.values()):
            lame_duck_signal = getattr(worker, "LAME_DUCK_SIGNAL", None)
            if lame_duck_signal and getattr(worker, "seen_ready", False) \
                    and getattr(worker, "retired", None) is None \
                    and not getattr(worker, "told_lame_duck", False):
                worker.told_lame_duck = True
                self.kill_worker(worker.pid, lame_duck_signal)

    def watch_lame_duck(self):
        """In lame duck nothing is spawned or replaced; at its end the normal stop begins."""
        if time.monotonic() >= self.lame_duck_until:
            emit(self.log, "info", "master.lame_duck_over", pid=self.pid)
            raise StopIteration
        self.notice_ready()
        self.tell_lame_duck()

    # -- USR2 upgrade -------------------------------------------------------------------

    def handle_usr2(self):
        """USR2: start a new master that takes over only once all its workers are ready.

        Overrides Gunicorn's, which starts it and leaves the hand-over to the operator.
        """
        self.upgrade_seq += 1
        reason = self.upgrade_refusal()
        if reason:
            self.last_refusal = {"seq": self.upgrade_seq, "reason": reason}
            self.write_status()
            emit(self.log, "error", "upgrade.refused", pid=self.pid, reason=reason)
            return
        self.drop_upgrade_files()
        report = upgrade_report.Channel()
        self.prepare_reexec(report)
        parent = os.getpid()
        try:
            self.reexec()
        except BaseException:
            if os.getpid() != parent:
                os._exit(EXEC_FAILED)  # a forked child that cannot exec must never run this loop
            raise
        finally:
            self.cfg.env_orig.pop(upgrade_report.ENV, None)
            report.after_fork()
        self.upgrade = Upgrade(self.upgrade_seq, self.reexec_pid, report)
        self.record_upgrade(self.upgrade, "booting")
        emit(self.log, "info", "upgrade.start", pid=self.pid, new_master=self.reexec_pid,
             timeout=current_settings().upgrade_timeout)
        self.notifier.status(self.log, "upgrading: new master %s booting" % self.reexec_pid)

    def prepare_reexec(self, report):
        """Fix what the new master will be started with (Gunicorn's START_CTX and environment).

        Started as `python -m gunicorn`, Gunicorn re-executes `.../gunicorn/__main__.py`
        as a script, which puts the gunicorn package first on sys.path so that
        `import http` finds gunicorn.http and the new master's app fails to
        import; it is re-executed as `-m gunicorn` instead. With
        graceful_release_link, the new master starts in the release the deploy
        symlink points to now. Its environment gets back systemd's NOTIFY_SOCKET,
        which the pack took out of this process's (and a HUP's config copies
        this process's), and carries the report channel's write end.
        """
        if self.notifier.address:
            self.cfg.env_orig["NOTIFY_SOCKET"] = self.notifier.address
        self.cfg.env_orig[upgrade_report.ENV] = str(report.write_fd)
        args = self.START_CTX["args"]
        if len(args) > 1 and args[1].endswith(os.path.join("gunicorn", "__main__.py")):
            self.START_CTX["args"] = [args[0], "-m", "gunicorn"] + args[2:]
        if current_settings().release_link:
            self.START_CTX["cwd"] = current_settings().release_link

    def upgrade_refusal(self):
        """Why a USR2 cannot start now, or None. Each reason avoids a half state."""
        if self.lame_duck_until is not None:
            return "the master is in lame duck, about to stop"
        if self.reexec_pid:
            return "an upgrade is in progress (new master %s)" % self.reexec_pid
        if self.master_pid:
            return "this master is a new master not yet promoted (old master %s)" % self.master_pid
        if self.rollout is not None:
            return "a HUP reload is in progress (generation %s)" % self.rollout.generation
        if os.getpid() == 1:
            return ("this master is PID 1: its exit would end the container; run it under an "
                    "init (tini, dumb-init) or use HUP")
        if self.cfg.reuse_port:
            return "reuse_port is on: Gunicorn cannot hand its listeners to a new master"
        return None

    def record_upgrade(self, upgrade, state_name, reason=""):
        self.last_upgrade = {"seq": upgrade.seq, "state": state_name,
                             "new_master": upgrade.new_master, "reason": reason}
        self.write_status()

    def watch_upgrade(self):
        """Old master: roll back when the new master died or ran out of time."""
        upgrade = self.upgrade
        if upgrade is None:
            return
        waited = time.monotonic() - upgrade.started
        if not self.reexec_pid:
            self.upgrade = None
            reported = upgrade.report.reason()
            if not upgrade.stop_sent:
                self.roll_back_upgrade(upgrade, waited,
                                       describe_master_exit(upgrade.exit_status, reported))
            self.clean_up_after_upgrade(upgrade)
        elif not upgrade.stop_sent and waited > current_settings().upgrade_timeout:
            upgrade.stop_sent = time.monotonic()
            self.roll_back_upgrade(upgrade, waited, "new master not ready after %.1fs "
                                   "(graceful_upgrade_timeout)" % waited)
            signal_process(upgrade.new_master, signal.SIGTERM)
        elif upgrade.stop_sent and time.monotonic() - upgrade.stop_sent \
                > self.cfg.graceful_timeout + _KILL_GRACE:
            signal_process(upgrade.new_master, signal.SIGKILL)

    def clean_up_after_upgrade(self, upgrade):
        """The new master is gone without taking over: nothing of it may linger.

        Its `.2` pidfile and status file go (a SIGKILLed one removed neither),
        and the control socket path it re-bound (then unlinked, or left dead)
        is bound to this master again, so that gunicornc keeps working.
        """
        self.drop_upgrade_files()
        if getattr(self, "_control_server", None) is not None:
            super()._stop_control_server()
            self._start_control_server()

    def drop_upgrade_files(self):
        """Remove `<pidfile>.2` and its status file: with no new master running, they are stale
        (a SIGKILLed new master removes neither, and its pid may since belong to another
        process, which would make the next new master refuse to start)."""
        if self.cfg.pidfile is not None:
            files.remove(self.log, self.cfg.pidfile + ".2.status")
            files.remove(self.log, self.cfg.pidfile + ".2")

    def roll_back_upgrade(self, upgrade, waited, reason):
        emit(self.log, "error", "upgrade.rollback", pid=self.pid, new_master=upgrade.new_master,
             after=waited, reason=reason)
        self.record_upgrade(upgrade, "rolled_back", reason)
        self.notifier.ready(self.log, "upgrade rolled back, master %s still serving: %s"
                            % (self.pid, reason))

    def take_over(self):
        """New master, all workers ready: become the service, then retire the old master.

        The old master may be gone already (SIGKILL, OOM): then nobody is left
        to retire, and `maybe_promote_master` completes the promotion.
        """
        self.handed_over = True
        if self.cfg.pidfile is not None:
            files.write(self.log, self.cfg.pidfile, "%s\n" % self.pid)
        self.notifier.send(self.log, MAINPID=self.pid)
        self.notifier.ready(self.log, "new master %s serving, old master %s draining"
                            % (self.pid, self.master_pid))
        emit(self.log, "info", "upgrade.handover", pid=self.pid, old_master=self.master_pid,
             generation=self.generation)
        upgrade_report.close(self.report_fd)
        self.report_fd = None
        signal_process(self.master_pid, signal.SIGTERM)

    def maybe_promote_master(self):
        """Gunicorn's promotion once the old master is gone, but only once this one serves.

        Gunicorn promotes (moves the pidfile) as soon as its parent changed: a
        new master whose old master was SIGKILLed would name itself in the
        pidfile while none of its workers can answer. Gunicorn's own pidfile
        rename is left out: it is not atomic and raises on an unwritable
        directory; `take_over` wrote the pidfile already.
        """
        if not self.master_pid or self.master_pid == os.getppid() or not self.serving:
            return
        waiting, trial_pidfile = self.master_pid, self.pidfile
        self.pidfile = None
        super().maybe_promote_master()
        self.pidfile = self.new_pidfile(self.cfg.pidfile)
        emit(self.log, "info", "upgrade.promoted", pid=self.pid, old_master=waiting)
        if trial_pidfile is not None:
            files.remove(self.log, trial_pidfile.fname + ".status")
            files.remove(self.log, trial_pidfile.fname)
        self.last_status = None

    def halt(self, reason=None, exit_status=0):
        """Gunicorn's halt; a new master that never took over first tells its old master why."""
        if self.master_pid and not self.handed_over and reason:
            upgrade_report.tell(self.report_fd, reason)
        super().halt(reason, exit_status)

    def _stop_control_server(self):
        """Gunicorn >= 27: an old master handing over leaves the control socket path alone,
        since the new master re-bound it (stock unlinks it and breaks gunicornc)."""
        if self.reexec_pid:
            self._control_server = None
            return
        super()._stop_control_server()

    # -- stop ---------------------------------------------------------------------------

    def stop(self, graceful=True):
        """Close the door before the workers drain, so that the last close resets nobody.

        Only when this master is the last holder of its listeners: not while a
        USR2 child or parent shares them, not with systemd socket activation
        (systemd keeps the socket for the next start) and not with reuse_port.
        """
        self.stopping = True
        last_holder = (self.reexec_pid == self.master_pid == 0 and not self.systemd
                       and not self.cfg.reuse_port)
        if graceful and last_holder:
            closed = [str(lnr) for lnr in self.LISTENERS if listeners.close_door(lnr)]
            emit(self.log, "info", "master.stopping", pid=self.pid, door_closed=",".join(closed)
                 or "none", workers=len(self.WORKERS), graceful_timeout=self.cfg.graceful_timeout)
        if self.reexec_pid:
            emit(self.log, "info", "upgrade.retiring", pid=self.pid, new_master=self.reexec_pid,
                 workers=len(self.WORKERS))
        elif self.is_service():
            self.notifier.stopping(self.log, "draining %s workers" % len(self.WORKERS))
        self.remove_status()
        super().stop(graceful)

    def is_service(self):
        """Whether systemd knows this master as the service: not a new master still on trial."""
        return not self.master_pid or self.handed_over

    # -- status for operators ----------------------------------------------------------

    def status_path(self):
        return self.pidfile.fname + ".status" if self.pidfile is not None else None

    def snapshot(self):
        workers = [{"pid": w.pid, "generation": getattr(w, "generation", 0),
                    "state": worker_state(w), "started_at": round(getattr(w, "started_at", 0), 1)}
                   for w in sorted(list(self.WORKERS.values()), key=lambda w: w.age)]
        ready = sum(1 for w in workers if w["state"] == state.READY)
        rollout = None
        if self.rollout is not None:
            rollout = {"generation": self.rollout.generation,
                       "previous_generation": self.rollout.previous_generation,
                       "started_at": round(self.rollout.started_at, 1)}
        return {"pid": self.pid, "generation": self.generation, "state": self.state_name(ready),
                "workers_wanted": self.num_workers, "workers_ready": ready,
                "serving": ready > 0, "degraded": self.degraded, "reload": rollout,
                "upgrade": self.last_upgrade, "upgrade_refused": self.last_refusal,
                "old_master": self.master_pid or None, "workers": workers}

    def state_name(self, ready):
        """What an operator asks first: does it serve as it should?"""
        if self.stopping or self.lame_duck_until is not None:
            return "stopping"
        if not self.serving:
            return "starting"
        if self.degraded is not None or ready == 0:
            return "degraded"
        return "reloading" if self.rollout is not None else "serving"

    def write_status(self):
        """Write the status file an operator reads with `gunicorn-graceful status` (atomic)."""
        path = self.status_path()
        snapshot = self.snapshot()
        if path is None or snapshot == self.last_status:
            return
        self.last_status = snapshot
        files.write(self.log, path, json.dumps(snapshot))

    def remove_status(self):
        path = self.status_path()
        if path is not None:
            files.remove(self.log, path)


def worker_state(worker):
    """booting, ready or draining as the worker says; retiring while a SIGTERM is on its way."""
    said = state.read(worker.tmp)
    if getattr(worker, "retired", None) is not None and said != state.DRAINING:
        return "retiring"
    return said


def effective_worker_class(cfg):
    """The class the pack runs for `cfg`: Gunicorn's choice, except that GracefulSyncWorker
    with threads > 1 becomes GracefulThreadWorker (see `keep_graceful_worker`)."""
    configured = cfg.settings["worker_class"].get()
    name = configured if isinstance(configured, str) else configured.__name__
    if name.endswith("GracefulSyncWorker") and cfg.threads > 1:
        return GracefulThreadWorker
    return cfg.worker_class


def foreign_worker(worker_class, cfg):
    """Why `worker_class` cannot run under the pack's master, or None.

    No worker of another class ever says it is ready, so the master would halt
    later with a misleading readiness reason (or a HUP would roll back).
    """
    if issubclass(worker_class, GracefulMixin):
        return None
    return ("worker_class=%s is not a gunicorn-graceful worker; use "
            "gunicorn_graceful.workers.GracefulThreadWorker or GracefulSyncWorker "
            "(-k on the command line overrides the config)" % cfg.worker_class_str)


def signal_process(pid, sig):
    """os.kill, where a process that is already gone is no error: it is what was wanted."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def describe_master_exit(status, reported=""):
    """Why a new master ended before it took over: its signal, its own report, its exit code."""
    if status is not None and os.WIFSIGNALED(status):
        return "new master killed by %s before it took over" \
            % signal.Signals(os.WTERMSIG(status)).name
    if reported:
        return reported
    if status is None:
        return "new master gone before it took over"
    if os.WEXITSTATUS(status) == EXEC_FAILED:
        return "the new master could not be executed"
    return "new master exited with code %s before it took over" % os.WEXITSTATUS(status)


def current_settings():
    return settings.current()


def reset_environment(cfg):
    """Undo the config's `raw_env` so the reloaded config sees the original environment."""
    for key in cfg.env:
        if key in cfg.env_orig:
            os.environ[key] = cfg.env_orig[key]
        else:
            os.environ.pop(key, None)


def apply_environment(cfg):
    for key, value in cfg.env.items():
        os.environ[key] = value


def config_failure(exc):
    """One line for a config that failed on HUP; Gunicorn printed its traceback to stderr."""
    if isinstance(exc, SystemExit):
        if isinstance(exc.code, str):
            return exc.code
        return "the config failed to load (exit %s); its traceback is on stderr" % exc.code
    return "%s: %s" % (type(exc).__name__, exc)


def describe_status(status):
    if os.WIFSIGNALED(status):
        return "killed by %s before it was ready" % signal.Signals(os.WTERMSIG(status)).name
    return "exited with code %s before it was ready" % os.WEXITSTATUS(status)
