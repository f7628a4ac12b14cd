"""The master's decisions: what each helper reports, in the current phase, decides what follows.

The helpers act on their own part and return what happened: the pool that a
generation is complete, that a worker failed to boot, that it recovered; the
rollout that a HUP started; the upgrade what became of the new master; the stop
that lame duck is over. This module alone maps (phase, outcome) to the next step,
moves the phase and tells systemd, so that the phase, the records, the status
file and what systemd was told change together, in one place:

| outcome                 | phase           | what follows                                    |
|-------------------------|-----------------|-------------------------------------------------|
| generation complete     | starting        | serving; READY                                  |
|                         | reloading       | the rollout finishes; serving; READY            |
|                         | trial           | ask the old master; taking_over once it answers |
| a worker failed to boot | reloading       | roll back; serving; READY with the reason       |
|                         | starting, trial | halt (no worker ever served)                    |
|                         | otherwise       | back off; degraded; STATUS                      |
| recovered               | any             | READY                                           |
| HUP                     | refused in lame duck or stopping (`phase.REFUSALS`); deferred while |
|                         | starting, reloading or upgrading (`phase.DEFERRALS`), forwarded to  |
|                         | a new master that takes over; else reloading; RELOADING=1           |
| USR2                    | refused as HUP; deferred while starting, reloading or while the     |
|                         | last upgrade's new master still stops; else upgrading; STATUS       |
| USR2, in place          | as USR2, else upgrading_in_place; RELOADING=1                       |
| the phase is serving    | the deferred intent asked first runs, of the code on disk now       |
| its check failed        | upgrading_in_place | serving; READY with the reason (refused)     |
| its exec (`inplace`)    | the next code adopts the workers in upgrading_in_place            |
| generation complete     | upgrading_in_place | serving; READY (done)                        |
| a worker failed to boot | upgrading_in_place | retire it; exec the old code back once gone  |
| exec'd back             | upgrading_in_place | serving; READY with the reason (rolled back) |
| the new master asks     | upgrading       | pidfile, MAINPID, acknowledge; this master stops |
| the new master failed   | upgrading       | serving; READY with its reason                  |
| the old master is gone  | trial           | the pidfile names this master (once); it serves |
|                         |                 | as soon as its workers are ready                |
| promoted                | taking_over     | serving                                         |
| TERM                    | lame duck first with a shutdown delay; STOPPING only from the service |

Invariants (checked in simulation, `tests/test_simulation.py`): only this module
calls `PhaseKeeper.move` and the notifier; the helpers never call each other
through the arbiter.
"""

import signal

from gunicorn_graceful import compat
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import metrics, mold, upgrade
from gunicorn_graceful.master.phase import Phase

STOPPING = "the master is stopping"


class Core:
    """Reads the helpers' outcomes and decides; the arbiter's overrides call it."""

    def __init__(self, arbiter):
        self.arbiter = arbiter
        self.was_service = False  # whether this master was the service when lame duck began

    @property
    def phase(self):
        return self.arbiter.phase

    @property
    def notifier(self):
        return self.arbiter.notifier

    # -- the tick ---------------------------------------------------------------------------

    def tick(self):
        """Gunicorn's `manage_workers`: the upgrade, the metrics, the pool, the status file."""
        arbiter = self.arbiter
        if arbiter.inplace.first_tick_due():
            self.in_place_ended(arbiter.inplace.first_tick())
        if self.phase.is_in(Phase.STOPPING):
            return
        if self.phase.is_in(Phase.LAME_DUCK):
            self.watch_lame_duck()
            return
        self.watch_upgrade()
        if self.phase.is_in(Phase.TRIAL) and arbiter.upgrades.old_master_gone():
            arbiter.upgrades.claim_pidfile()
        if self.phase.is_in(Phase.IN_PLACE):
            self.in_place_ended(arbiter.inplace.watch(arbiter.metrics))
        if arbiter.metrics:
            arbiter.metrics.tick()  # before the pool forgets the records of reaped workers
        self.reconcile()
        self.run_deferred()
        compat.report_metrics(arbiter)
        arbiter.status.write()

    def reconcile(self):
        """The pool's step (see `pool`), with the failures and completions it reports."""
        arbiter, pool = self.arbiter, self.arbiter.pool
        pool.observe()
        for failure in pool.take_boot_failures():
            if failure.generation == arbiter.generation:  # a rollback changes it
                self.boot_failed(failure)
        if arbiter.molds:  # after the failures: a rollback changes which molds are needed
            arbiter.molds.tick()
        pool.reconcile(recycling=self.phase.is_in(Phase.SERVING))
        ready = pool.complete()
        if ready is not None:
            pool.retire_old()
            self.generation_complete(ready)
            if arbiter.molds:
                arbiter.molds.stop_unneeded()
        if pool.recovered():
            self.tell_serving()

    def generation_complete(self, ready):
        arbiter = self.arbiter
        if self.phase.is_in(Phase.STARTING, Phase.TRIAL):
            emit(arbiter.log, "info", "master.serving", pid=arbiter.pid,
                 generation=arbiter.generation, workers=ready)
            if self.phase.is_in(Phase.TRIAL):
                self.ask_to_take_over()
                return
        elif self.phase.is_in(Phase.RELOADING):
            arbiter.rollouts.finish(ready)
            arbiter.reloads.finish("done")
        elif not (self.phase.is_in(Phase.IN_PLACE) and arbiter.inplace.completes()):
            return
        self.phase.move(Phase.SERVING)
        self.tell_serving()

    def tell_serving(self):
        self.notifier.ready(self.arbiter.log, "generation %s serving" % self.arbiter.generation)

    def boot_failed(self, failure):
        arbiter = self.arbiter
        if self.phase.is_in(Phase.RELOADING):
            arbiter.pool.retire_generation(arbiter.rollouts.roll_back(failure), "rollback")
            arbiter.reloads.finish("rolled_back", failure.reason)
            self.phase.move(Phase.SERVING)
            self.notifier.ready(arbiter.log, "reload failed, generation %s still serving: %s"
                                % (arbiter.generation, failure.reason))
        elif self.phase.is_in(Phase.STARTING, Phase.TRIAL):
            arbiter.pool.halt_on_boot_failure(failure)
        elif self.phase.is_in(Phase.IN_PLACE) and arbiter.inplace.boot_failed(failure.reason):
            self.notifier.status(arbiter.log, "upgrade failed, going back to the old code: %s"
                                 % failure.reason)
        else:
            arbiter.pool.back_off(failure)
            self.notifier.status(arbiter.log, "degraded: generation %s cannot replace workers: "
                                 "%s" % (arbiter.generation, failure.reason))

    # -- HUP --------------------------------------------------------------------------------

    def reload(self):
        """HUP: refused by the phase (lame duck, stopping), deferred while the phase cannot
        start it (`run_deferred` runs it), or a new generation that must prove itself."""
        arbiter = self.arbiter
        arbiter.reloads.arrived()
        refusal = self.phase.refusal("reload", **self.context())
        deferral = self.phase.deferral("reload", **self.context())
        if refusal:
            arbiter.reloads.refuse(refusal)
        elif deferral:
            arbiter.reloads.defer(deferral)
        else:
            self.start_reload()
            arbiter.manage_workers()
        arbiter.status.write()

    def start_reload(self):
        """Load the config and boot its generation (`rollout`); the HUP's record says which."""
        arbiter = self.arbiter
        started, failure = arbiter.rollouts.reload(self.config_problem)
        if started is None:
            arbiter.reloads.config_failed(failure)
            return
        arbiter.reloads.start(arbiter.generation,
                             arbiter.generations.release_of(arbiter.generation))
        if started.superseded is not None:
            arbiter.pool.retire_generation(started.superseded, "superseded")
        arbiter.pool.reset_back_off()
        if started.hook_failure:  # decided at the tick, as a worker's boot failure is
            arbiter.pool.hook_failed(started.generation, started.hook_failure)
        self.phase.move(Phase.RELOADING)
        self.notifier.reloading(arbiter.log, "booting generation %s" % arbiter.generation)

    def context(self):
        """What a refusal or deferral names: the masters, the upgrade's number, the generation."""
        arbiter = self.arbiter
        return {"old": arbiter.master_pid or arbiter.pid, "new": arbiter.reexec_pid or arbiter.pid,
                "seq": arbiter.upgrades.seq, "generation": arbiter.generation}

    def run_deferred(self):
        """Each tick: once the master serves, the HUP or USR2 that waited runs (the one asked
        first), of the code on disk now; the other waits for it, unless it changed nothing
        (a config that fails to load, a refused USR2)."""
        arbiter = self.arbiter
        for _ in range(2):  # a reload and an upgrade: at most one of each waits
            if not self.phase.is_in(Phase.SERVING):
                return
            upgrade_runs = arbiter.upgrades.pending is not None \
                and not arbiter.upgrades.deferral()
            waiting = sorted((r["asked"], kind) for kind, r in (
                ("reload", arbiter.reloads.pending),
                ("upgrade", arbiter.upgrades.pending if upgrade_runs else None)) if r)
            if not waiting:
                return
            if waiting[0][1] == "reload":
                self.start_reload()
            else:
                self.try_upgrade()
            arbiter.status.write()

    def config_problem(self, cfg, pack_settings, log):
        """Why a config loaded on HUP (Gunicorn's `cfg`, the pack's settings) cannot run, or
        None: the pack's checks, the metrics endpoint's, the mold's."""
        return self.arbiter.check_config(cfg, log) \
            or metrics.reload_problem(self.arbiter.metrics, pack_settings) \
            or mold.reload_problem(self.arbiter.molds, cfg, pack_settings)

    # -- USR2 -------------------------------------------------------------------------------

    def upgrade(self):
        """USR2: refused with its reason, deferred while the phase (or the last upgrade's new
        master, still stopping) cannot start it, or a new master that takes over only once
        ready, or (graceful_upgrade = "in-place") this master's own exec of the new code."""
        self.arbiter.upgrades.arrived()
        self.try_upgrade()

    def try_upgrade(self):
        arbiter, upgrades = self.arbiter, self.arbiter.upgrades
        in_place = arbiter.settings.upgrade == "in-place"
        reason = self.phase.refusal("upgrade", **self.context()) \
            or (arbiter.inplace.refusal(arbiter.molds) if in_place else upgrades.refusal())
        if reason:
            upgrades.refused(reason)
            arbiter.status.write()
            return
        reason = self.phase.deferral("upgrade", **self.context()) or upgrades.deferral()
        if reason:
            upgrades.defer(reason)
            arbiter.status.write()
            return
        if in_place:
            self.upgrade_in_place()
            return
        upgrades.start(self.notifier.address, arbiter.metrics)
        self.phase.move(Phase.UPGRADING)
        upgrades.record(upgrades.current, "booting")
        arbiter.status.write()
        upgrades.announce()
        self.notifier.status(arbiter.log, "upgrading: new master %s booting"
                             % arbiter.reexec_pid)

    def upgrade_in_place(self):
        """USR2 in place: systemd hears RELOADING now and READY when a generation serves; the
        PID never changes, so there is no MAINPID to tell (`inplace`)."""
        arbiter = self.arbiter
        arbiter.inplace.start()
        self.phase.move(Phase.IN_PLACE)
        arbiter.status.write()
        self.notifier.reloading(arbiter.log, "upgrading in place: checking the new code")

    def in_place_ended(self, outcome):
        """An in-place upgrade ended without the new generation serving: refused before the
        exec, or rolled back (exec'd back, or the exec back failed): the kept code serves."""
        if outcome is None:
            return
        kind, reason = outcome
        arbiter = self.arbiter
        self.phase.move(Phase.SERVING)
        self.notifier.ready(arbiter.log, "upgrade %s, generation %s still serving: %s"
                            % (kind.replace("_", " "), arbiter.generation, reason))
        arbiter.status.write()

    def watch_upgrade(self):
        """Old master, each tick: act on what became of the new master (`Upgrades.watch`)."""
        arbiter = self.arbiter
        outcome = arbiter.upgrades.watch()
        if outcome is None:
            return
        if arbiter.metrics and outcome.totals is not None:
            arbiter.metrics.carry(outcome.totals)
        if outcome.kind == "asks":
            self.hand_over(outcome.upgrade)
        elif outcome.kind in ("rolled_back", "refused"):
            arbiter.upgrades.ended(outcome)
            self.phase.move(Phase.SERVING)
            what = "rolled back" if outcome.kind == "rolled_back" else "refused"
            self.notifier.ready(arbiter.log, "upgrade %s, master %s still serving: %s"
                                % (what, arbiter.pid, outcome.reason))
        arbiter.status.write()

    def hand_over(self, upgrade):
        """The new master's workers are all ready and it asks: name it (pidfile, then systemd's
        MAINPID, which systemd must know before this process exits), then answer and stop
        (Gunicorn's loop halts on StopIteration; `stopping` sees the new master and neither
        closes the door nor tells systemd the service stops)."""
        arbiter = self.arbiter
        arbiter.upgrades.name_successor(upgrade)
        self.notifier.send(arbiter.log, MAINPID=upgrade.new_master,
                           STATUS="handing over to new master %s" % upgrade.new_master)
        arbiter.upgrades.hand_over(upgrade)
        self.forward_deferred(upgrade.new_master)
        arbiter.status.write()
        raise StopIteration

    def forward_deferred(self, new_master):
        """What waited for this upgrade to end is the new master's to run: the same signals,
        sent to it (it defers them until it serves)."""
        arbiter = self.arbiter
        if arbiter.reloads.pending is not None:
            arbiter.reloads.forward(new_master)
            upgrade.signal_process(new_master, signal.SIGHUP)
        if arbiter.upgrades.pending is not None:
            arbiter.upgrades.forward(new_master)
            upgrade.signal_process(new_master, signal.SIGUSR2)

    def ask_to_take_over(self):
        """New master on trial, all its workers ready: take the service once the old master
        acknowledged (or is gone)."""
        arbiter = self.arbiter
        if not arbiter.upgrades.ask_to_take_over():
            return
        self.phase.move(Phase.TAKING_OVER)
        arbiter.upgrades.take_over()
        self.notifier.send(arbiter.log, MAINPID=arbiter.pid)
        self.notifier.ready(arbiter.log, "new master %s serving, old master %s draining"
                            % (arbiter.pid, arbiter.master_pid))
        arbiter.upgrades.stop_old_master_without_ack()

    def may_promote(self):
        return self.phase.is_in(Phase.TAKING_OVER) and self.arbiter.upgrades.may_promote()

    def promoted(self, old_master, trial_pidfile):
        arbiter = self.arbiter
        compat.rebind_control_socket(arbiter)
        self.phase.move(Phase.SERVING)
        totals = arbiter.upgrades.promoted(old_master, trial_pidfile)
        if arbiter.metrics:
            arbiter.metrics.promoted(totals)

    def halting(self, reason):
        """A new master on trial that halts tells its old master why."""
        if reason and self.phase.is_in(Phase.TRIAL):
            self.arbiter.upgrades.report_halt(self.arbiter.pool.halt_detail() or reason)

    # -- TERM -------------------------------------------------------------------------------

    def term(self):
        """SIGTERM: with graceful_shutdown_delay, lame duck first; a second SIGTERM stops now.

        Kubernetes removes a pod from its endpoints while it sends SIGTERM, and a
        balancer notices a backend leaves only when its health check fails: a
        server that stops accepting at once refuses clients still routed to it.

        A master handing over to its new master never comes here: it stops itself
        once it acknowledged the hand-over, with no lame duck (its workers' 503s on
        the listener the new workers share would make a balancer take the backend
        out) and no STOPPING.
        """
        arbiter = self.arbiter
        if self.phase.is_in(Phase.LAME_DUCK):
            emit(arbiter.log, "info", "master.lame_duck_skipped", pid=arbiter.pid,
                 reason="second SIGTERM")
            raise StopIteration
        delay = self.arbiter.settings.shutdown_delay
        if delay <= 0:
            raise StopIteration
        service = self.was_service = self.is_service()
        arbiter.stopper.lame_duck(delay)
        self.phase.move(Phase.LAME_DUCK)
        if service:
            self.notifier.stopping(arbiter.log, "lame duck for %ss, then draining" % delay)
        arbiter.stopper.tell_lame_duck(arbiter.pool.workers())

    def watch_lame_duck(self):
        """Each tick in lame duck: at its end the normal stop begins."""
        arbiter = self.arbiter
        if arbiter.stopper.lame_duck_over():
            raise StopIteration
        arbiter.pool.notice_ready()
        arbiter.stopper.tell_lame_duck(arbiter.pool.workers())

    def stopping(self, graceful):
        """Before Gunicorn's stop: close the door, say what stops; the status file says it too
        until the workers are gone (what a HUP or USR2 waited for ends in it)."""
        arbiter = self.arbiter
        service = self.is_service()
        self.phase.move(Phase.STOPPING)
        arbiter.inplace.abandon()
        self.stop_intents()
        arbiter.stopper.close_door(graceful)
        if arbiter.reexec_pid:
            emit(arbiter.log, "info", "upgrade.retiring", pid=arbiter.pid,
                 new_master=arbiter.reexec_pid, workers=len(arbiter.WORKERS))
        elif service:
            self.notifier.stopping(arbiter.log, "draining %s workers" % len(arbiter.WORKERS))
        arbiter.status.write()  # removed when the stop ends (`GracefulArbiter.stop`)

    def stop_intents(self):
        """The master stops: a HUP or USR2 that waited will not run, nor will a generation
        that boots serve; their records say so."""
        arbiter = self.arbiter
        arbiter.reloads.refuse_pending(STOPPING)
        if arbiter.rollouts.current is not None:
            arbiter.reloads.finish("interrupted", "the master stopped before generation %s was "
                                   "ready" % arbiter.rollouts.current.generation)
        if arbiter.upgrades.pending is not None:
            arbiter.upgrades.refused(STOPPING)

    def is_service(self):
        """Whether systemd knows this master as the service: not a new master on trial.

        (A new master that took over is; in lame duck, whatever it was before.)
        """
        if self.phase.is_in(Phase.LAME_DUCK, Phase.STOPPING):
            return self.was_service
        return not self.arbiter.master_pid or self.phase.is_in(Phase.TAKING_OVER)
