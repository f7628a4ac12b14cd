"""The master's decisions: what each fact a helper observed means in the current phase.

The helpers act on their own part and observe the rest as typed facts
(`facts`): the pool that a generation is complete or a worker failed to boot,
the upgrade what became of the new master, the in-place trial what became of
its check and its exec, the stop that lame duck is over. Each tick `dispatch`
looks up (phase, type of fact) in `TABLE` and runs its one handler: every
timeout, rollback, halt and retirement is decided here, and only here is the
phase moved and systemd told, so the phase, the records, the status file and
what systemd was told change together. A phase of `any` stands for the phases
the fact has no row of its own in; a fact with no row at all is a bug, logged
at ERROR (`master.unexpected`). The table, as `tests/test_layout.py` checks it:

| phase              | fact               | handler              | what follows                   |
|--------------------|--------------------|----------------------|--------------------------------|
| starting           | GenerationComplete | first_serving        | serving; READY                 |
| trial              | GenerationComplete | ask_to_take_over     | taking_over once acknowledged  |
| reloading          | GenerationComplete | reload_done          | the rollout ends; serving      |
| upgrading_in_place | GenerationComplete | in_place_complete    | done; serving (not the kept)   |
| any                | GenerationComplete | nothing              | (the old ones retire: `tick`)  |
| reloading          | BootFailed         | roll_back_reload     | retire it; serving; READY      |
| starting           | BootFailed         | halt                 | no worker ever served: halt    |
| trial              | BootFailed         | halt_on_trial        | halt: its old master rolls back|
|                    |                    |                      | (its old master gone: take over|
|                    |                    |                      | and back off, degraded)        |
| upgrading_in_place | BootFailed         | roll_back_in_place   | retire it; exec back once gone |
| any                | BootFailed         | back_off             | degraded; STATUS               |
| any                | Recovered          | recovered            | READY                          |
| any                | MoldLate           | kill_mold            | SIGKILL; its boot failure      |
| upgrading          | NewMasterAsks      | hand_over            | pidfile, MAINPID, ack; stop    |
| upgrading          | UpgradeLate        | stop_late_new_master | SIGTERM; serving; READY        |
| any                | NewMasterKillDue   | kill_new_master      | SIGKILL                        |
| any                | NewMasterExited    | new_master_exited    | totals carried; serving; READY |
| trial              | OldMasterGone      | claim_pidfile        | the pidfile names this master  |
| lame_duck          | OldMasterGone      | claim_pidfile        | (a TERM must find this one)    |
| trial              | Acknowledged       | take_over            | taking_over: MAINPID, READY    |
| upgrading_in_place | CheckLate          | check_late           | kill it; refused; serving      |
| upgrading_in_place | CheckEnded         | check_ended          | exec the new code, or refused  |
| upgrading_in_place | CheckImported      | check_imported       | boot the next generation, or   |
|                    |                    |                      | refused: exec the old code back|
| upgrading_in_place | ExecFailed         | exec_failed          | refused, or rolled back        |
| upgrading_in_place | Adopted            | adopted              | boot the next generation, or   |
|                    |                    |                      | rolled back; serving; READY    |
| upgrading_in_place | InPlaceLate        | in_place_late        | retire it; exec back once gone |
| upgrading_in_place | RollbackDrained    | exec_back            | the old code adopts its workers|
| lame_duck          | LameDuckOver       | stop                 | the stop begins                |

Signals come in through the arbiter: HUP (`reload`) and USR2 (`upgrade`) are
refused in lame duck or stopping (`phase.REFUSALS`), deferred while starting,
reloading or upgrading (`phase.DEFERRALS`) and run once the phase is serving
(`run_deferred`), forwarded to a new master that takes over; TERM (`term`) is
lame duck first with a shutdown delay; STOPPING only from the service.

Invariants (checked in simulation, `tests/test_simulation.py`): only this module
calls `PhaseKeeper.move` and the notifier; the helpers never call each other
through the arbiter.
"""

import signal

from gunicorn.errors import HaltServer

from gunicorn_graceful import compat
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import metrics, mold
from gunicorn_graceful.master.facts import (
    Acknowledged, Adopted, BootFailed, CheckEnded, CheckImported, CheckLate, ExecFailed,
    GenerationComplete, InPlaceLate, LameDuckOver, MoldLate, NewMasterAsks, NewMasterExited,
    NewMasterKillDue, OldMasterGone, Recovered, RollbackDrained, UpgradeLate)
from gunicorn_graceful.master.phase import Phase

STOPPING = "the master is stopping"
ANY = "any"
P = Phase
TABLE = {
    (P.STARTING, GenerationComplete): "first_serving",
    (P.TRIAL, GenerationComplete): "ask_to_take_over",
    (P.RELOADING, GenerationComplete): "reload_done",
    (P.IN_PLACE, GenerationComplete): "in_place_complete",
    (ANY, GenerationComplete): "nothing",
    (P.RELOADING, BootFailed): "roll_back_reload",
    (P.STARTING, BootFailed): "halt",
    (P.TRIAL, BootFailed): "halt_on_trial",
    (P.IN_PLACE, BootFailed): "roll_back_in_place",
    (ANY, BootFailed): "back_off",
    (ANY, Recovered): "recovered",
    (ANY, MoldLate): "kill_mold",
    (P.UPGRADING, NewMasterAsks): "hand_over",
    (P.UPGRADING, UpgradeLate): "stop_late_new_master",
    (ANY, NewMasterKillDue): "kill_new_master",
    (ANY, NewMasterExited): "new_master_exited",
    (P.TRIAL, OldMasterGone): "claim_pidfile",
    (P.LAME_DUCK, OldMasterGone): "claim_pidfile",
    (P.TRIAL, Acknowledged): "take_over",
    (P.IN_PLACE, CheckLate): "check_late",
    (P.IN_PLACE, CheckEnded): "check_ended",
    (P.IN_PLACE, CheckImported): "check_imported",
    (P.IN_PLACE, ExecFailed): "exec_failed",
    (P.IN_PLACE, Adopted): "adopted",
    (P.IN_PLACE, InPlaceLate): "in_place_late",
    (P.IN_PLACE, RollbackDrained): "exec_back",
    (P.LAME_DUCK, LameDuckOver): "stop",
}


class Core:
    """Reads the helpers' facts and decides; the arbiter's overrides call it."""

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
            self.dispatch(arbiter.inplace.first_tick())
        if self.phase.is_in(Phase.STOPPING):
            return
        if self.phase.is_in(Phase.LAME_DUCK):  # the workers serve on: what they do is news
            self.dispatch_all(arbiter.upgrades.exited())
            self.dispatch_all(arbiter.upgrades.watch_old_master())
            self.dispatch_all(arbiter.stopper.watch())
            if arbiter.metrics:
                arbiter.metrics.tick()
            arbiter.pool.notice_ready()
            arbiter.stopper.tell_lame_duck(arbiter.pool.workers())
            self.write_files()
            return
        self.dispatch_all(arbiter.upgrades.watch())
        self.dispatch_all(arbiter.upgrades.watch_old_master())
        self.dispatch_all(arbiter.upgrades.watch_answer())
        self.dispatch_all(arbiter.inplace.watch())
        if arbiter.metrics:
            arbiter.metrics.tick()  # before the pool forgets the records of reaped workers
        self.reconcile()
        self.run_deferred()
        compat.report_metrics(arbiter)
        self.write_files()

    def write_files(self):
        """Each tick the workers serve: a pidfile write the file system refused is tried
        again (`files.Owed`), and the status file says what changed."""
        self.arbiter.files.retry()
        self.arbiter.status.write()

    def reconcile(self):
        """The pool's step (see `pool`), with the facts it reports; a complete generation
        retires every other one."""
        arbiter, pool = self.arbiter, self.arbiter.pool
        pool.observe()
        for failure in pool.take_boot_failures():
            if failure.generation == arbiter.generation:  # a rollback changes it
                self.dispatch(BootFailed(failure))
        if arbiter.molds:  # after the failures: a rollback changes which molds are needed
            self.dispatch_all(arbiter.molds.late())
            arbiter.molds.tick()
        pool.reconcile(recycling=self.phase.is_in(Phase.SERVING))
        ready = pool.complete()
        if ready is not None:
            pool.retire_old()
            self.dispatch(GenerationComplete(ready))
            if arbiter.molds:
                arbiter.molds.stop_unneeded()
        if pool.recovered():
            self.dispatch(Recovered())

    def dispatch(self, fact):
        """The one handler of `fact` in this phase (`TABLE`)."""
        kind = type(fact)
        handler = TABLE.get((self.phase.value, kind)) or TABLE.get((ANY, kind))
        if handler is None:
            emit(self.arbiter.log, "error", "master.unexpected", pid=self.arbiter.pid,
                 fact=kind.__name__, phase=self.phase.value.value)
            return
        getattr(self, handler)(fact)

    def dispatch_all(self, facts):
        for fact in facts:
            self.dispatch(fact)

    def nothing(self, fact):
        """The fact changes nothing in this phase."""

    def serve(self):
        self.phase.move(Phase.SERVING)
        self.tell_serving()

    def tell_serving(self):
        self.notifier.ready(self.arbiter.log, "generation %s serving" % self.arbiter.generation)

    def recovered(self, fact):
        self.tell_serving()

    # -- the pool's facts -------------------------------------------------------------------

    def first_serving(self, fact):
        arbiter = self.arbiter
        emit(arbiter.log, "info", "master.serving", pid=arbiter.pid,
             generation=arbiter.generation, workers=fact.ready)
        self.serve()

    def reload_done(self, fact):
        self.arbiter.rollouts.finish(fact.ready)
        self.arbiter.reloads.finish("done")
        self.serve()

    def in_place_complete(self, fact):
        """Complete: the new generation ends the upgrade; the kept one (while a rollback waits
        for the exec back) or the serving one (during the check) does not."""
        if self.arbiter.inplace.new_generation_boots():
            self.arbiter.inplace.finish("done")
            self.serve()

    def roll_back_reload(self, fact):
        arbiter, failure = self.arbiter, fact.failure
        arbiter.pool.retire_generation(arbiter.rollouts.roll_back(failure), "rollback")
        arbiter.reloads.finish("rolled_back", failure.reason)
        self.phase.move(Phase.SERVING)
        self.notifier.ready(arbiter.log, "reload failed, generation %s still serving: %s"
                            % (arbiter.generation, failure.reason))

    def halt(self, fact):
        """No worker ever served (the first generation, or a new master's on trial)."""
        raise HaltServer(*self.arbiter.pool.halt(fact.failure))

    def halt_on_trial(self, fact):
        """A new master on trial halts (its old master serves on and rolls back), unless
        that old master is gone: then this one is all there is. It takes the service and
        backs off, degraded: serving, so that a HUP or USR2 with fixed code can run."""
        if not self.arbiter.upgrades.old_master_gone():
            self.halt(fact)
        self.take_over(fact)
        self.back_off(fact)

    def roll_back_in_place(self, fact):
        if not self.arbiter.inplace.new_generation_boots():
            self.back_off(fact)
            return
        self.retire_in_place(fact.failure.reason)

    def in_place_late(self, fact):
        self.retire_in_place("generation %s not ready after %.1fs (graceful_upgrade_timeout)"
                             % (fact.generation, fact.waited))

    def retire_in_place(self, reason):
        """The in-place upgrade's new generation fails: retire it; the old code is exec'd
        back once its workers are gone (`RollbackDrained`)."""
        arbiter = self.arbiter
        arbiter.pool.retire_generation(arbiter.inplace.roll_back(reason), "rollback")
        self.notifier.status(arbiter.log, "upgrade failed, going back to the old code: %s"
                             % reason)

    def back_off(self, fact):
        arbiter = self.arbiter
        arbiter.pool.back_off(fact.failure)
        self.notifier.status(arbiter.log, "degraded: generation %s cannot replace workers: "
                             "%s" % (arbiter.generation, fact.failure.reason))

    def kill_mold(self, fact):
        self.arbiter.molds.kill(fact.mold, "the mold was not ready within "
                                "graceful_readiness_timeout=%ss (its import hangs?)" % fact.limit)

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
            or (arbiter.inplace.refusal() if in_place else upgrades.refusal())
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

    # -- the in-place trial's facts ----------------------------------------------------------

    def check_late(self, fact):
        self.arbiter.inplace.kill_check()
        self.in_place_refused("the new code's check took longer than %ss "
                              "(graceful_upgrade_timeout)" % fact.limit)

    def check_ended(self, fact):
        """A check that passed execs the new code (which returns only if the exec failed)."""
        if fact.reason:
            self.in_place_refused(fact.reason)
            return
        problem = self.arbiter.inplace.exec_forward(self.arbiter.metrics)
        self.dispatch(ExecFailed("new", problem))

    def check_imported(self, fact):
        """With graceful_mold, after the exec: the check imported, and forks the next
        generation; or it failed, which refuses the upgrade."""
        if fact.reason:
            self.in_place_refused(fact.reason)
        else:
            self.arbiter.inplace.begin_generation()

    def exec_back(self, fact):
        problem = self.arbiter.inplace.exec_back(self.arbiter.metrics, fact.reason)
        self.dispatch(ExecFailed("back", problem))

    def exec_failed(self, fact):
        if fact.direction == "new":
            self.in_place_refused(fact.problem)
        else:
            self.in_place_ended(*self.arbiter.inplace.exec_back_failed(fact.problem))

    def adopted(self, fact):
        """The first tick of the code an exec started: going forward, the next generation
        boots (with graceful_mold, once the check imported); going back, the upgrade is
        over: rolled back, or refused by a check that failed after the exec."""
        inplace = self.arbiter.inplace
        if fact.direction == "new" and inplace.check_imports():
            inplace.await_check()
        elif fact.direction == "new":
            inplace.begin_generation()
        else:
            inplace.end_check()  # the check of a new code that failed at start, if any
            inplace.finish(fact.outcome, fact.reason)
            self.in_place_ended(fact.outcome, fact.reason)

    def in_place_refused(self, reason):
        """The upgrade is refused: before the exec, or (with graceful_mold) after it, when
        the check failed while the new code ran: then the old code is exec'd back."""
        inplace = self.arbiter.inplace
        if inplace.checks_after_exec():
            inplace.refuse_after_exec(reason)
            self.dispatch(RollbackDrained(reason))  # nothing of the new code ever ran
            return
        inplace.refuse(reason)
        self.in_place_ended("refused", reason)

    def in_place_ended(self, kind, reason):
        """An in-place upgrade ended without the new generation serving: refused before the
        exec, or rolled back (exec'd back, or the exec back failed): the kept code serves."""
        arbiter = self.arbiter
        self.phase.move(Phase.SERVING)
        self.notifier.ready(arbiter.log, "upgrade %s, generation %s still serving: %s"
                            % (kind.replace("_", " "), arbiter.generation, reason))
        arbiter.status.write()

    # -- the old master's facts -------------------------------------------------------------

    def stop_late_new_master(self, fact):
        """Not ready in time: SIGTERM (SIGKILL once its workers had their graceful_timeout,
        `kill_new_master`); this master serves on."""
        self.arbiter.upgrades.told_to_stop(fact.upgrade)
        self.arbiter.system.signal(fact.upgrade.new_master, signal.SIGTERM)
        self.upgrade_failed(fact.upgrade, "rolled_back", "new master not ready after %.1fs "
                            "(graceful_upgrade_timeout)" % fact.waited)

    def kill_new_master(self, fact):
        self.arbiter.system.signal(fact.upgrade.new_master, signal.SIGKILL)

    def new_master_exited(self, fact):
        """Reaped: its totals count here; unless it was rolled back already, the upgrade ends
        now (refused by its checks before the exec, or rolled back)."""
        arbiter = self.arbiter
        kind, reason, totals = arbiter.upgrades.reaped_outcome(fact.upgrade)
        if arbiter.metrics and totals is not None:
            arbiter.metrics.carry(totals)
        if kind != "gone":
            self.upgrade_failed(fact.upgrade, kind, reason)

    def upgrade_failed(self, new, kind, reason):
        """The upgrade to the new master `new` ended without it: this master serves on (in
        lame duck, until the stop the operator asked for: only the record says it)."""
        arbiter = self.arbiter
        arbiter.upgrades.ended(new, kind, reason)
        if self.phase.is_in(Phase.LAME_DUCK):
            return
        self.phase.move(Phase.SERVING)
        what = "rolled back" if kind == "rolled_back" else "refused"
        self.notifier.ready(arbiter.log, "upgrade %s, master %s still serving: %s"
                            % (what, arbiter.pid, reason))
        arbiter.status.write()

    def hand_over(self, fact):
        """The new master's workers are all ready and it asks: name it (pidfile, then systemd's
        MAINPID, which systemd must know before this process exits), then answer and stop
        (Gunicorn's loop halts on StopIteration; `stopping` sees the new master and neither
        closes the door nor tells systemd the service stops)."""
        arbiter, new = self.arbiter, fact.upgrade
        arbiter.upgrades.name_successor(new)
        self.notifier.send(arbiter.log, MAINPID=new.new_master,
                           STATUS="handing over to new master %s" % new.new_master)
        arbiter.upgrades.hand_over(new)
        self.arbiter.system.signal(new.new_master, signal.SIGCHLD)  # it reads the answer now
        self.forward_deferred(new.new_master)
        arbiter.status.write()
        raise StopIteration

    def forward_deferred(self, new_master):
        """What waited for this upgrade to end is the new master's to run: the same signals,
        sent to it (it defers them until it serves)."""
        arbiter = self.arbiter
        if arbiter.reloads.pending is not None:
            arbiter.reloads.forward(new_master)
            self.arbiter.system.signal(new_master, signal.SIGHUP)
        if arbiter.upgrades.pending is not None:
            arbiter.upgrades.forward(new_master)
            self.arbiter.system.signal(new_master, signal.SIGUSR2)

    # -- the new master's facts -------------------------------------------------------------

    def ask_to_take_over(self, fact):
        """New master on trial, all its workers ready: ask for the service; take it at once
        if the old master is gone (its answer is `take_over`'s fact)."""
        arbiter = self.arbiter
        emit(arbiter.log, "info", "master.serving", pid=arbiter.pid,
             generation=arbiter.generation, workers=fact.ready)
        if arbiter.upgrades.ask_to_take_over():
            self.take_over(fact)

    def take_over(self, fact):
        """The old master answered (it stops from now on) or is gone: this master is the
        service, also if a worker of its generation crashed since it asked."""
        arbiter = self.arbiter
        self.phase.move(Phase.TAKING_OVER)
        arbiter.upgrades.take_over()
        self.notifier.send(arbiter.log, MAINPID=arbiter.pid)
        self.notifier.ready(arbiter.log, "new master %s serving, old master %s draining"
                            % (arbiter.pid, arbiter.master_pid))

    def claim_pidfile(self, fact):
        self.arbiter.upgrades.claim_pidfile()

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

    def stop(self, fact):
        """Lame duck is over: the normal stop begins (Gunicorn's loop halts)."""
        self.arbiter.stopper.lame_duck_over()
        raise StopIteration

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
