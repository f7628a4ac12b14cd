"""The master's decisions under model-based tests: random sequences of what can happen.

Hypothesis drives a simulated master (`simulation.Master`: the pack's real
decision code, fake clock, fake processes) through signals, deploys, boots,
crashes, hangs and the passing of time, and checks after every step the
invariants the master's modules state in prose. A failing sequence is shrunk
to the shortest one and printed; each one found becomes a named test below.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import tempfile

import pytest
from hypothesis import HealthCheck, Phase as Phase_, settings as hsettings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from gunicorn.arbiter import Arbiter

from gunicorn_graceful import hooks, settings, state, userhooks
from gunicorn_graceful.master import binds, core, facts, pool, rollout, upgrade_report
from gunicorn_graceful.master.phase import Phase
from tests.simulation import (BIND, BOOT_ERROR, FakeProcesses, Master, SimArbiter, booting,
                              make_config, raising_hook, totals)

MAX_WORKERS = 3
METRICS_BIND = "127.0.0.1:9464"  # never bound: the endpoint is the simulation's (`FakeEndpoint`)
EXAMPLES = int(os.environ.get("SIMULATION_EXAMPLES", "1500"))
STEPS = 50
NAMELESS = int(signal.SIGRTMIN) + 1
BINDS = {"same": BIND, "added": BIND + ["127.0.0.1:8001"], "moved": ["127.0.0.1:8001"],
         "taken": BIND + ["127.0.0.1:9999"]}  # 9999: another service listens there
PIDFILES = {"kept": "gunicorn.pid", "moved": "moved.pid", "dropped": None}


class MasterMachine(RuleBasedStateMachine):
    """One master's life: each rule is something that can happen to it."""

    def __init__(self):
        super().__init__()
        self.master = None
        self.directory = tempfile.mkdtemp(prefix="simulated-master-")
        self.pidfile = os.path.join(self.directory, "gunicorn.pid")
        self.served = 0   # the most requests the metrics endpoint has said so far

    @initialize(workers=st.integers(1, MAX_WORKERS), max_booting=st.integers(0, 2),
                shutdown_delay=st.sampled_from([0.0, 2.0]),
                max_worker_age=st.sampled_from([0.0, 60.0]), mold=st.booleans(),
                in_place=st.booleans(), metrics=st.booleans())
    def start(self, workers, max_booting, shutdown_delay, max_worker_age, mold=False,
              in_place=False, metrics=False):
        pack = settings.Settings(max_booting=max_booting, shutdown_delay=shutdown_delay,
                                 readiness_timeout=30.0, upgrade_timeout=60.0,
                                 max_worker_age=max_worker_age, mold=mold,
                                 upgrade="in-place" if in_place else "new-master",
                                 metrics_bind=METRICS_BIND if metrics else "")
        self.master = Master(workers, pack, pidfile=self.pidfile)
        self.generations = [1]
        self.most_workers = workers
        self.most_booting = max_booting or 1
        for _ in range(MAX_WORKERS + 2):  # the mold imports; max_booting: one at a time
            self.master.loop()
            for sim_mold in self.master.world.molds.values():
                sim_mold.state = "ready"
            for worker in booting(self.master):
                state.mark_ready(worker.tmp, os.getpid())
        self.master.loop()
        assert self.master.phase() is Phase.SERVING, self.master.arbiter.log.lines

    def teardown(self):
        if self.master is not None:
            self.master.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def running(self):
        return self.master is not None and not self.master.stopped

    def step(self, seconds=0.0):
        """Time passes, then the master's main loop turns once (a signal wakes it too)."""
        self.master.world.clock.now += seconds
        self.master.loop()
        self.note_generation()

    def note_generation(self):
        """A generation a HUP started (at once, or once it waited): never a reused number."""
        after = self.master.arbiter.generations.last
        if after != self.generations[-1]:
            assert after > max(self.generations), "generation %s reused" % after
            self.generations.append(after)

    def pick(self, workers, index):
        return workers[index % len(workers)] if workers else None

    # -- the workers ------------------------------------------------------------------------

    @precondition(running)
    @rule(index=st.integers(0, 20))
    def a_worker_finishes_booting(self, index):
        worker = self.pick(booting(self.master), index)
        if worker is None:
            return
        self.finish_booting(worker)
        self.step()

    @precondition(running)
    @rule()
    def every_booting_worker_finishes(self):
        """Workers boot side by side: each that is booting finishes now (one tick)."""
        for worker in booting(self.master):
            self.finish_booting(worker)
        self.step()

    def finish_booting(self, worker):
        """The code it imported decides: good is ready, broken fails, slow goes on."""
        if worker.code == "good":
            state.mark_ready(worker.tmp, os.getpid())
        elif worker.code == "broken":
            state.write_reason(worker.tmp, "RuntimeError: broken release")
            self.master.world.exit(worker, BOOT_ERROR << 8)

    @precondition(running)
    @rule(index=st.integers(0, 20), how=st.sampled_from([signal.SIGSEGV, signal.SIGKILL,
                                                         NAMELESS, "exit 1"]))
    def a_worker_crashes(self, index, how):
        worker = self.pick([w for w, _ in self.master.live() if not w.exited], index)
        if worker is None:
            return
        self.master.world.exit(worker, 1 << 8 if how == "exit 1" else int(how))
        self.step()

    # -- the molds (graceful_mold) ----------------------------------------------------------

    def importing(self):
        return [m for m in self.master.world.molds.values()
                if m.state == "importing" and not m.exited]

    @precondition(running)
    @rule(index=st.integers(0, 20))
    def a_mold_finishes_importing(self, index):
        """The code it imported decides: good is ready, broken fails, slow never ends."""
        sim_mold = self.pick(self.importing(), index)
        if sim_mold is not None and sim_mold.code == "good":
            sim_mold.state = "ready"
        elif sim_mold is not None and sim_mold.code == "broken":
            sim_mold.state = "failed"
            self.master.world.exit_mold(sim_mold, Arbiter.APP_LOAD_ERROR << 8)
        self.step()

    @precondition(running)
    @rule(index=st.integers(0, 20), how=st.sampled_from([signal.SIGKILL, signal.SIGSEGV]))
    def a_mold_dies(self, index, how):
        sim_mold = self.pick([m for m in self.master.world.molds.values() if not m.exited],
                             index)
        if sim_mold is not None:
            self.master.world.exit_mold(sim_mold, int(how))
        self.step()

    @precondition(running)
    @rule(index=st.integers(0, 20))
    def a_worker_hangs(self, index):
        worker = self.pick([w for w, _ in self.master.live() if not w.exited], index)
        if worker is not None:
            worker.tmp.hung = True
        self.step()

    @rule(index=st.integers(0, 20))
    def a_draining_worker_finishes(self, index):
        worker = self.pick([w for w, _ in self.master.live() if not w.exited
                            and state.read(w.tmp) == state.DRAINING], index)
        if worker is not None:
            self.master.world.exit(worker, 0)
        self.step()

    @precondition(running)
    @rule(index=st.integers(0, 20))
    def a_worker_asks_to_be_recycled(self, index):
        worker = self.pick([w for w in self.master.serving_ready() if not w.exited], index)
        if worker is not None:
            state.mark_recycle(worker.tmp, os.getpid(), "reason=max_requests served=1000")
        self.step()

    @precondition(running)
    @rule(index=st.integers(0, 20), count=st.integers(1, 5))
    def a_worker_answers_requests(self, index, count):
        """Counted into its slot, the shared memory its master reads (graceful_metrics_bind)."""
        metrics = self.master.arbiter.metrics
        worker = self.pick([w for w in self.master.serving_ready() if not w.exited], index)
        if metrics is None or worker is None:
            return
        worker.slot = worker.slot or metrics.slots[worker.pid]  # the mapping it got at fork
        for _ in range(count):
            worker.slot.ended(200, worker.slot.started())
        self.step()

    @rule(refuses=st.booleans())
    def the_pidfile_directory_refuses_writes(self, refuses):
        """EROFS, a full disk, chattr +i: every write and removal there fails, or works again."""
        self.master.world.files_fail = refuses
        self.step()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 31.0, 61.0]))
    def time_passes(self, seconds):
        self.step(seconds)

    # -- the operator -----------------------------------------------------------------------

    @precondition(running)
    @rule(code=st.sampled_from(["good", "broken", "slow"]), workers=st.integers(0, MAX_WORKERS),
          config=st.sampled_from(["fine", "raises", "user pre_fork", "pre_fork raises",
                                  "on_reload raises"]),
          bind=st.sampled_from(list(BINDS)), max_booting=st.integers(0, 2),
          pidfile=st.sampled_from(list(PIDFILES)))
    def hup(self, code, workers, config, bind, max_booting, pidfile="dropped"):
        """A HUP; the new config may change the pack's settings too (its install(globals()))
        and its pidfile (`PIDFILES`)."""
        self.master.held()
        master = self.master
        master.world.code = code
        if config == "raises":
            master.arbiter.app.next_cfg = SyntaxError("invalid syntax (gunicorn_conf.py, line 3)")
        else:
            master.arbiter.app.next_cfg = make_config(
                workers, pre_fork=user_pre_fork if config == "user pre_fork" else None,
                bind=BINDS[bind], raising=[config.split()[0]] if "raises" in config else [],
                pidfile=PIDFILES[pidfile] and os.path.join(self.directory, PIDFILES[pidfile]))
            master.arbiter.app.next_settings = dataclasses.replace(
                master.arbiter.settings, max_booting=max_booting)
        self.most_workers = max(self.most_workers, workers)
        self.most_booting = max(self.most_booting, max_booting or 1)
        try:
            master.arbiter.reload()
        except BaseException as exc:  # SystemExit included: the master would be gone
            raise AssertionError("the master did not survive a HUP: %r" % exc) from exc
        self.note_generation()
        self.step()

    @precondition(running)
    @rule(more=st.booleans())
    def ttin_or_ttou(self, more):
        arbiter = self.master.arbiter
        if more and arbiter.num_workers < MAX_WORKERS:
            arbiter.num_workers += 1
        elif not more and arbiter.num_workers > 1:
            arbiter.num_workers -= 1
        self.most_workers = max(self.most_workers, arbiter.num_workers)
        self.step()

    @precondition(running)
    @rule(code=st.sampled_from(["good"] * 3 + ["broken", "slow"]),
          bind=st.sampled_from(["same"] * 3 + ["added", "moved", "taken"]),
          pidfile=st.sampled_from(["same"] * 3 + list(PIDFILES)))
    def usr2(self, code="good", bind="same", pidfile="same"):
        """USR2 after a deploy put `code` on disk (what workers forked from now import), and a
        config whose `bind` and `pidfile` an in-place upgrade's next code loads."""
        self.master.world.code = code
        self.master.world.disk_cfg = make_config(
            self.master.arbiter.cfg.workers, bind=BINDS[bind],
            pidfile=self.master.arbiter.cfg.pidfile if pidfile == "same"
            else PIDFILES[pidfile] and os.path.join(self.directory, PIDFILES[pidfile]))
        self.master.held()
        self.master.arbiter.handle_usr2()
        self.step()

    def checking(self):
        """The in-place checks that run (with the mold: loading the config, or importing)."""
        return [c for c in self.master.world.checks.values() if c.returncode is None
                and c.pid not in [pid for pid, _ in self.master.world.exits]
                and (c.mold is None or c.mold.state in ("configuring", "importing"))]

    @precondition(lambda self: self.running() and self.checking())
    @rule(outcome=st.sampled_from(["passes"] * 4 + ["fails", "passes, the exec fails",
                                                     "killed"]))
    def the_in_place_check_ends(self, outcome):
        """The new code's check (graceful_upgrade = "in-place") ends: the exec follows, or
        the upgrade is refused."""
        world, check = self.master.world, self.checking()[0]
        world.exec_fails = outcome == "passes, the exec fails"
        status = {"fails": 1 << 8, "killed": int(signal.SIGKILL)}.get(outcome, 0)
        if check.mold is None:
            world.exits.append((check.pid, status))
        elif status:  # with the mold: its config or its import failed, or it was killed
            check.mold.state = "failed"
            world.exit_mold(check.mold, status)
        elif check.mold.state == "configuring":  # its config passed: the exec, it imports
            check.mold.state = "importing"
        else:  # it imported, said so, and stays to fork the new generation
            check.mold.state = "ready"
        self.step()  # the exec, when it passed
        world.exec_fails = False
        self.step()  # the next code's first tick: its generation starts booting

    @precondition(lambda self: self.running() and self.master.arbiter.reexec_pid)
    @rule()
    def the_new_master_asks_to_take_over(self):
        """Its workers are all ready: it asks on the report channel, and takes the service
        only once the old master acknowledged (`upgrade_report`)."""
        world = self.master.world
        upgrade_report.tell(world.report_fd, upgrade_report.HANDOVER)
        self.step()
        if upgrade_report.acknowledged(upgrade_report.read_available(world.ack_fd)):
            world.handed_over = world.new_masters[-1]

    @precondition(lambda self: self.running() and self.master.arbiter.reexec_pid)
    @rule(how=st.sampled_from([signal.SIGKILL, NAMELESS, "exit 3"]), counted=st.integers(0, 9))
    def the_new_master_dies(self, how, counted=0):
        """Killed, or stopped on trial (exit 3) after its workers `counted` requests, which
        it returned on the report channel: this master's counters go on from them."""
        master, metrics = self.master, self.master.arbiter.metrics
        returned = counted if how == "exit 3" and metrics is not None else 0
        if returned:
            upgrade_report.send_totals(master.world.report_fd, totals(returned, metrics.buckets))
        before = metrics.endpoint.scrape() if metrics and metrics.endpoint else 0
        status = 3 << 8 if how == "exit 3" else int(how)
        master.arbiter.reaped(master.arbiter.reexec_pid, status)
        self.step()
        if returned and self.running():
            assert metrics.endpoint.scrape() >= before + returned, "the returned counts are lost"

    @precondition(running)
    @rule(hook=st.sampled_from(["pre_fork", "child_exit", "nworkers_changed"]))
    def a_user_hook_of_the_serving_config_starts_to_raise(self, hook):
        """A hook that worked fails from now on (its network share went away)."""
        self.master.arbiter.cfg.set(hook, raising_hook(hook))
        self.step()

    @precondition(running)
    @rule()
    def operator_term(self):
        self.master.operator_term = True
        self.master.term()
        self.step()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def spawning_is_bounded(self):
        """Counted in the world, not in the master's records: a worker it lost track of counts."""
        if self.master is None:
            return
        records = self.master.arbiter.records.by_pid
        staying = [pid for pid, w in self.master.world.processes.items() if not w.exited
                   and not (pid in records and records[pid].retired)]
        # The serving generation with its recycle replacements in transit, and the next one.
        bound = 2 * self.most_workers + self.most_booting
        assert len(staying) <= bound, "%s workers not told to stop, wanted at most %s" \
            % (len(staying), self.most_workers)

    @invariant()
    def the_listeners_are_the_serving_configs_and_none_leaks(self):
        if self.master is None or self.master.stopped:
            return
        arbiter = self.master.arbiter
        rollout = arbiter.rollouts.current
        held = list(arbiter.LISTENERS) + list(rollout.previous_listeners if rollout else []) \
            + arbiter.inplace.held()
        assert not [lnr for lnr in held if lnr.closed], "a listener in use was closed"
        assert [lnr.cfg_addr for lnr in arbiter.LISTENERS] == list(arbiter.cfg.address)
        leaked = [lnr for lnr in self.master.world.opened
                  if not lnr.closed and all(lnr is not h for h in held)]
        assert not leaked, "listeners neither held nor closed: %s" % leaked

    @invariant()
    def the_master_decides_with_the_settings_its_workers_inherit(self):
        """The pack settings on the arbiter are the ones a worker forked now inherits (the
        global), and a rollback or a refused config restores both."""
        if self.master is None:
            return
        assert self.master.arbiter.settings is settings.current(), \
            "arbiter.settings and settings.current() differ"

    @invariant()
    def at_most_max_booting_boot_at_once(self):
        if self.master is None:
            return
        limit = settings.current().max_booting
        current = self.master.arbiter.generation
        new = [w for w, r in self.master.live() if r.generation == current and not r.retired
               and state.read(w.tmp) == state.BOOTING]
        assert not limit or len(new) <= limit, "%s booting, graceful_max_booting=%s" \
            % (len(new), limit)

    @invariant()
    def a_ready_worker_is_never_sigkilled_while_it_may_hold_a_connection(self):
        if self.master is None:
            return
        for kill in self.master.world.kills:
            if kill[2] == 9:
                assert self.master.kill_grace_met(kill), "SIGKILL to a serving worker: %s" \
                    % (kill,)

    @invariant()
    def replacing_never_goes_below_the_wanted_ready_count(self):
        """The capacity floor: a ready worker is retired as replaced or recycled only while
        at least `workers` other ready workers serve."""
        if self.master is None or self.master.stopped:
            return
        for ready, wanted, line in self.master.retirements:
            assert ready >= wanted, "%s ready after %s" % (ready, line)
        self.master.retirements.clear()

    @invariant()
    def the_phase_and_what_is_in_progress_agree(self):
        if self.master is None or self.master.stopped:
            return
        arbiter, phase = self.master.arbiter, self.master.phase()
        if phase in (Phase.LAME_DUCK, Phase.STOPPING):
            return  # a stop may begin while a reload or an upgrade runs
        assert (arbiter.rollouts.current is not None) == (phase is Phase.RELOADING), phase
        upgrading = arbiter.upgrades.current is not None and not arbiter.upgrades.current.stop_sent
        assert upgrading == (phase is Phase.UPGRADING), phase
        assert (arbiter.inplace.current is not None) == (phase is Phase.IN_PLACE), phase
        snapshot = arbiter.status.snapshot()
        assert snapshot["phase"] == phase.value
        assert snapshot["serving"] == bool(self.master.serving_ready())

    @invariant()
    def no_accepted_intent_is_lost_while_the_master_serves(self):
        """A HUP or USR2 that waited runs once the master serves (a USR2 also waits for the
        last upgrade's new master to be gone); every HUP is in exactly one record."""
        if not self.running():
            return
        arbiter = self.master.arbiter
        if self.master.phase() is Phase.SERVING:
            assert arbiter.reloads.pending is None, arbiter.reloads.pending
            assert arbiter.upgrades.pending is None or arbiter.upgrades.deferral(), \
                arbiter.upgrades.pending
        records = arbiter.reloads.records
        if records:
            assert records[-1]["seq"] == arbiter.reloads.seq, records[-1]
        for before, after in zip(records, records[1:]):
            assert before["seq"] < after["first_seq"], (before, after)
        booting = [r for r in records if r["state"] == "booting"]
        if self.master.phase() not in (Phase.LAME_DUCK, Phase.STOPPING):
            assert len(booting) == (arbiter.rollouts.current is not None), booting

    @invariant()
    def only_a_master_that_stops_the_service_announces_stopping(self):
        if self.master is None:
            return
        stopping = [m for m in self.master.arbiter.notifier.messages if "STOPPING" in m]
        assert not stopping or self.master.operator_term, \
            "STOPPING=1 without an operator's TERM: %s" % stopping

    @invariant()
    def systemd_hears_ready_after_each_reloading_once_a_generation_serves(self):
        """RELOADING=1 (HUP, in-place USR2) leaves systemd waiting: once the master serves
        again, the last of the two it said is READY=1, whatever the outcome."""
        if not self.running() or self.master.phase() is not Phase.SERVING:
            return
        said = [m for m in self.master.arbiter.notifier.messages
                if "READY" in m or "RELOADING" in m]
        assert not said or "READY" in said[-1], said[-3:]

    @invariant()
    def an_in_place_upgrade_never_names_another_main_pid(self):
        if self.master is None or self.master.arbiter.settings.upgrade != "in-place":
            return
        assert not [m for m in self.master.arbiter.notifier.messages if "MAINPID" in m]

    @invariant()
    def every_upgrade_follows_a_new_master_it_started(self):
        """An upgrade recorded for a new master that USR2 did not start (Gunicorn ignores a
        USR2 while a child exists) would report a bogus outcome."""
        if self.master is None:
            return
        started = self.master.arbiter.log.events("upgrade.start")
        assert len(started) == len(self.master.world.new_masters), started

    @invariant()
    def the_two_masters_never_both_stop(self):
        """A new master given the service is never stopped by its old master, and an old
        master stops only for an operator or a hand-over it acknowledged; it never halts
        (the machine starts serving: no user hook, crash or rollback may end it)."""
        if self.master is None:
            return
        assert not (self.master.stopped or "").startswith("halt"), \
            (self.master.stopped, self.master.arbiter.log.lines[-20:])
        world = self.master.world
        assert (world.handed_over, signal.SIGTERM) not in world.to_new_master, \
            "the old master handed over to a new master it had already stopped"
        if self.master.stopped == "stop" and not self.master.operator_term:
            assert world.handed_over, "the old master stopped without handing over"

    @invariant()
    def a_rollback_restores_the_configuration(self):
        if self.master is None or self.master.stopped:
            return
        arbiter = self.master.arbiter
        if arbiter.rollouts.current is None:
            assert arbiter.cfg is arbiter.app.cfg


    @invariant()
    def a_counter_never_goes_down(self):
        """Whatever a worker's end (recycled, crashed, killed, replaced by a HUP) and across
        an in-place exec: what the endpoint says only grows while its master serves it."""
        endpoint = self.master.arbiter.metrics.endpoint \
            if self.running() and self.master.arbiter.metrics else None
        if endpoint is None:
            return
        served = endpoint.scrape()
        assert served >= self.served, "gunicorn_requests went from %s to %s" % (self.served,
                                                                                 served)
        self.served = served

    @invariant()
    def the_endpoint_serves_while_its_master_has_the_service(self):
        """From the start (or the promotion of a new master) to the stop; paused only for an
        in-place exec that then ran; the memory of the counts bounded by the live workers."""
        metrics = self.master.arbiter.metrics if self.running() else None
        if metrics is None:
            return
        assert (metrics.endpoint is None) == bool(self.master.arbiter.master_pid), \
            (metrics.endpoint, self.master.arbiter.master_pid)
        assert metrics.endpoint is None or not metrics.endpoint.paused
        assert set(metrics.slots) <= set(self.master.arbiter.WORKERS), \
            (sorted(metrics.slots), sorted(self.master.arbiter.WORKERS))

    @invariant()
    def the_status_file_names_no_reaped_process_once_a_write_succeeds(self):
        """Written each tick it changed, tried again until it lands; gone once the master
        stopped (unless that removal was refused: then it names the master that wrote it)."""
        if self.master is None or self.master.world.files_fail:
            return
        path = self.master.arbiter.status.path()
        if self.master.stopped:
            left = [name for name in os.listdir(self.directory) if name.endswith(".status")
                    and os.path.join(self.directory, name) not in self.master.world.refused]
            assert not left, left
            return
        if path is None or self.master.arbiter.status.last is None:
            return  # none, or the code an in-place exec started has not ticked yet
        with open(path) as handle:
            said = json.load(handle)
        assert said["pid"] == self.master.arbiter.pid, said
        listed = {w["pid"] for w in said["workers"]}
        assert listed <= set(self.master.arbiter.WORKERS), \
            (sorted(listed), sorted(self.master.arbiter.WORKERS))

    @invariant()
    def a_serving_master_leaves_no_other_pidfile_behind(self):
        """Once nothing is in progress, the only pidfile and status file are the master's
        own: those a HUP or an in-place upgrade moved from went (left, they would name a
        dead master after the stop)."""
        master = self.master
        if master is None or master.stopped or master.world.files_fail \
                or master.phase() is not Phase.SERVING or master.arbiter.rollouts.current \
                or master.arbiter.inplace.current:
            return
        pidfile = master.arbiter.pidfile
        ours = {os.path.basename(pidfile.fname), os.path.basename(pidfile.fname) + ".status"} \
            if pidfile is not None else set()
        left = {name for name in os.listdir(self.directory) if name.endswith((".pid", ".status"))
                and os.path.join(self.directory, name) not in master.world.refused}
        assert left <= ours, (sorted(left), sorted(ours))

    @invariant()
    def at_most_one_mold_per_generation(self):
        molds = self.master.arbiter.molds if self.master else None
        if molds is not None:
            generations = [m.generation for m in molds.by_pid.values() if not m.stopping]
            assert len(generations) == len(set(generations)), generations

    @invariant()
    def a_mold_runs_only_for_a_generation_that_may_serve(self):
        """The wanted generation, or during a HUP the one a rollback goes back to."""
        if not self.running() or self.master.arbiter.molds is None:
            return
        molds = self.master.arbiter.molds
        running = sorted(m.generation for m in molds.by_pid.values() if not m.stopping)
        assert set(running) <= molds.needed(), \
            "molds of generations %s run, which may not serve (%s may)" % (running, molds.needed())

    @invariant()
    def workers_are_forked_only_by_a_ready_mold_of_their_generation(self):
        for generation, ready, wanted in self.master.world.mold_forks if self.master else ():
            assert ready and generation == wanted, (generation, ready, wanted)

    @invariant()
    def a_mold_is_started_only_for_a_new_generation_or_in_place_of_one_gone(self):
        """No mold crash loop faster than the pool's back-off, no second mold beside one."""
        if self.master is None or self.master.arbiter.molds is None:
            return
        world = self.master.world
        gone = sum(1 for m in world.molds.values() if m.exited)
        checking = sum(1 for m in world.molds.values() if m.generation is None and not m.exited)
        assert world.molds_started <= len(set(self.generations)) + gone + checking, \
            (world.molds_started, self.generations, gone, checking)

    @invariant()
    def every_mold_process_is_its_masters(self):
        """A mold runs only as one of the master's molds, or as the in-place check that
        imports the next generation (across the exec too: none is left behind)."""
        if self.master is None or self.master.arbiter.molds is None or self.master.stopped:
            return
        arbiter = self.master.arbiter
        trial = arbiter.inplace.current
        check = trial.preflight.pid if trial is not None and trial.preflight else None
        known = set(arbiter.molds.by_pid) | {check}
        if arbiter.inplace.first_tick_due():  # exec'd: adopted at the first tick
            handed = arbiter.inplace.handed
            known |= {m["pid"] for m in handed["molds"] + [handed["check"] or {"pid": None}]}
        running = {pid for pid, m in self.master.world.molds.items() if not m.exited}
        assert running <= known, "%s %s" % (sorted(running - known), arbiter.log.lines[-8:])


OLD_MASTER = 10 ** 8 - 1  # a fake pid, as the world's workers' are


class NewMasterMachine(MasterMachine):
    """The life of a new master a USR2 started, beside an old master the world plays: one
    that answers when asked, dies at any moment, is slow, or rolls the upgrade back (its
    SIGTERM). Every rule of a master applies to it too, from its trial on."""

    @initialize(workers=st.integers(1, MAX_WORKERS), max_booting=st.integers(0, 2),
                shutdown_delay=st.sampled_from([0.0, 2.0]),
                code=st.sampled_from(["good"] * 4 + ["broken", "slow"]), metrics=st.booleans())
    def start(self, workers, max_booting, shutdown_delay, code, metrics=False):
        pack = settings.Settings(max_booting=max_booting, shutdown_delay=shutdown_delay,
                                 readiness_timeout=30.0, upgrade_timeout=60.0,
                                 metrics_bind=METRICS_BIND if metrics else "")
        self.master = Master(workers, pack, old_master=OLD_MASTER, pidfile=self.pidfile)
        self.master.world.code = code
        self.generations = [1]
        self.most_workers, self.most_booting = workers, max_booting or 1
        self.spoken = 0   # the systemd messages the invariants have judged
        self.carried = 0  # the requests the old master's totals handed on
        self.master.loop()
        assert self.master.phase() is Phase.TRIAL, self.master.arbiter.log.lines

    def old(self):
        return self.master.old_master

    def old_master_alive(self):
        return self.master.world.old_master_alive

    @precondition(lambda self: self.running() and self.old_master_alive()
                  and not self.old().rolled_back and not self.old().acknowledged)
    @rule()
    def the_old_master_answers_if_asked(self):
        """It acknowledges a new master that asked (it names it in the pidfile first)."""
        if self.old().asked():
            self.old().acknowledge(self.master.arbiter.pid)
        self.step()

    @precondition(lambda self: self.running() and self.old_master_alive()
                  and self.old().acknowledged)
    @rule(requests=st.integers(0, 50))
    def the_old_master_drained_and_exits(self, requests=0):
        """With its metrics' totals (`upgrade.send_totals`), which this master carries on."""
        if self.master.arbiter.metrics is not None:
            self.old().send_totals(requests, self.master.arbiter.metrics.buckets)
            self.carried = requests
        self.master.world.old_master_alive = False
        self.step()

    @precondition(lambda self: self.running() and self.old_master_alive())
    @rule()
    def the_old_master_is_killed(self):
        """SIGKILL, OOM: at any moment, the pidfile naming it or not."""
        self.master.world.old_master_alive = False
        self.step()

    @precondition(lambda self: self.running() and self.old_master_alive()
                  and not self.old().acknowledged and not self.old().rolled_back)
    @rule()
    def the_old_master_rolls_the_upgrade_back(self):
        """Late or failed as the old master sees it: SIGTERM to this master."""
        self.old().rolled_back = True
        self.master.term()
        self.step()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def a_promoted_master_goes_on_from_its_old_masters_totals(self):
        metrics = self.master.arbiter.metrics if self.running() else None
        if metrics is not None and metrics.endpoint is not None:
            assert metrics.endpoint.scrape() >= self.carried, (self.carried,
                                                               metrics.endpoint.scrape())

    @invariant()
    def the_pidfile_names_a_live_master(self):
        """The old master until it handed over; this one once it did or once it is gone (as
        long as the config names that pidfile: a HUP may drop it), from the first tick its
        directory takes writes again."""
        if not self.running() or self.master.arbiter.cfg.pidfile != self.pidfile \
                or self.master.world.files_fail:
            return
        with open(self.pidfile) as handle:
            named = int(handle.read())
        if self.old_master_alive() and not self.old().acknowledged:
            assert named == OLD_MASTER, "the pidfile names %s before the hand-over" % named
        elif not self.old().rolled_back:
            assert named == self.master.arbiter.pid, \
                "the pidfile names %s, the old master is gone" % named

    @invariant()
    def it_speaks_for_the_service_only_once_it_has_it(self):
        """MAINPID and READY only once acknowledged or once the old master is gone, and
        never after the old master rolled it back; STOPPING never from a master on trial."""
        if self.master is None:
            return
        messages = self.master.arbiter.notifier.messages
        new, self.spoken = messages[self.spoken:], len(messages)
        if any("READY" in m or "MAINPID" in m for m in new):
            assert not self.old().rolled_back, "READY after the old master rolled it back"
            assert self.old().acknowledged or not self.old_master_alive(), \
                "READY or MAINPID before the old master answered: %s" % new

    @invariant()
    def promoted_only_once_serving_and_the_old_master_gone(self):
        if not self.running():
            return
        arbiter = self.master.arbiter
        if not arbiter.master_pid:
            assert not self.old_master_alive()
            assert self.master.phase() not in (Phase.TRIAL, Phase.TAKING_OVER)
        if self.master.phase() in (Phase.TAKING_OVER, Phase.SERVING):
            assert self.old().acknowledged or not self.old_master_alive()

    @invariant()
    def the_two_masters_never_both_stop(self):
        """A halt only on trial, before the hand-over, while the old master serves, and it is
        told why; once acknowledged (or alone), only an operator's TERM stops it, the old
        master's own (it rolled back before it died) or its hand-over to a new master of
        its own."""
        if self.master is None or not self.master.stopped:
            return
        if self.master.stopped.startswith("halt"):
            assert not self.old().acknowledged, "halted after the hand-over"
            assert self.old_master_alive(), "halted with no old master left to serve"
            reasons = [line for line in self.old().heard() if line != upgrade_report.HANDOVER]
            assert reasons, "the old master was not told why the new master halted"
        elif self.old().acknowledged or not self.old_master_alive():
            assert self.master.operator_term or self.master.world.handed_over \
                or self.old().rolled_back, "stopped after the hand-over: %s" % self.master.stopped


def user_pre_fork(server, worker):
    """A user's own pre_fork, defined after install(globals()): it replaces the pack's."""


def run(machine, examples=EXAMPLES, shrink=True, fixed=False):
    """Random sequences, new ones on every developer's run (a failure prints the blob that
    replays it; SIMULATION_EXAMPLES asks for more). CI (CI=true) runs a fixed set, so that
    its verdict on a commit is reproducible; so do the old-code tests below, without
    shrinking, so that they find what they look for every time."""
    phases = [Phase_.explicit, Phase_.generate] + ([Phase_.shrink] if shrink else [])
    run_state_machine_as_test(machine, settings=hsettings(
        max_examples=examples, stateful_step_count=STEPS, deadline=None, phases=phases,
        suppress_health_check=list(HealthCheck), database=None, print_blob=True,
        derandomize=fixed or not shrink or os.environ.get("CI") == "true"))


def test_the_master_keeps_its_invariants_in_every_sequence():
    run(MasterMachine)


def test_a_new_master_keeps_its_invariants_in_every_sequence():
    run(NewMasterMachine, examples=EXAMPLES // 2)


# -- counterexamples the simulation found, shrunk, replayed as named tests ---------------------

def replay(start, *steps, machine_class=None):
    """Run one sequence on a MasterMachine (or `machine_class`), checking every invariant
    after each step."""
    machine_class = machine_class or MasterMachine
    invariants = [name for name in dir(machine_class)
                  if getattr(getattr(machine_class, name), "hypothesis_stateful_invariant", None)]
    assert len(invariants) >= 10, invariants  # found by the marker Hypothesis puts on them
    machine = machine_class()
    defaults = dict(max_booting=0, shutdown_delay=0.0) if machine_class is NewMasterMachine \
        else dict(max_booting=0, shutdown_delay=0.0, max_worker_age=0.0, mold=False)
    try:
        machine.start(**dict(defaults, **start))
        for name, arguments in steps:
            getattr(machine, name)(**arguments)
            for invariant_name in invariants:
                getattr(machine, invariant_name)()
        return machine.master
    finally:
        machine.teardown()


def test_a_crash_and_a_ttin_in_one_tick_during_a_recycle_boot_no_more_than_max_booting():
    replay({"workers": 2, "max_booting": 2}, ("a_worker_asks_to_be_recycled", {"index": 0}),
           ("a_worker_hangs", {"index": 1}), ("ttin_or_ttou", {"more": True}))


def test_ttou_during_a_recycle_retires_the_booting_replacement_not_a_serving_worker():
    replay({"workers": 2}, ("a_worker_asks_to_be_recycled", {"index": 0}),
           ("ttin_or_ttou", {"more": False}))


def test_usr2_while_a_rolled_back_new_master_still_stops_waits_and_then_runs():
    master = replay({"workers": 1}, ("usr2", {}), ("time_passes", {"seconds": 61.0}),
                    ("usr2", {}), ("the_new_master_dies", {"how": signal.SIGKILL}))
    assert "the new master %s of the last upgrade is still stopping" \
        % master.world.new_masters[0] in master.arbiter.log.events("upgrade.deferred")[-1]
    assert len(master.world.new_masters) == 2 and master.phase() is Phase.UPGRADING
    assert master.arbiter.upgrades.last["first_seq"] == 2


def test_hups_during_a_boot_and_an_upgrade_wait_and_run_once_as_one_reload():
    master = replay({"workers": 1}, ("usr2", {}), ("hup", HUP), ("hup", HUP),
                    ("the_new_master_dies", {"how": signal.SIGKILL}))
    records = master.arbiter.reloads.records
    assert [(r["first_seq"], r["seq"], r["state"]) for r in records] == [(1, 2, "booting")]
    assert master.phase() is Phase.RELOADING
    assert len(master.arbiter.log.events("reload.deferred")) == 2


HUP = {"code": "good", "workers": 1, "config": "fine", "bind": "same", "max_booting": 0}


def test_a_new_master_that_asks_after_its_rollback_is_not_handed_the_service():
    master = replay({"workers": 1}, ("usr2", {}), ("time_passes", {"seconds": 61.0}),
                    ("the_new_master_asks_to_take_over", {}))
    assert not master.stopped and master.world.handed_over is None


def test_a_new_master_answered_after_a_crash_takes_over_and_never_halts():
    """Found by NewMasterMachine: a worker crashed after the new master asked; the old master
    answered (it stops); the replacement failed to boot and the new master, still on trial
    since its generation was not complete, halted: no master left."""
    master = replay({"workers": 1, "code": "good"}, ("every_booting_worker_finishes", {}),
                    ("a_worker_crashes", {"index": 0, "how": signal.SIGSEGV}),
                    ("the_old_master_answers_if_asked", {}),
                    ("a_worker_crashes", {"index": 0, "how": signal.SIGSEGV}),
                    machine_class=NewMasterMachine)
    assert not master.stopped and master.phase() is Phase.TAKING_OVER


def test_a_new_master_whose_old_master_died_keeps_trying_a_failing_boot():
    """Found by NewMasterMachine: with its old master gone, a new master on trial whose
    worker failed to boot halted, and nothing served. Now it takes the service, degraded,
    and is promoted, so that a HUP with fixed code can run."""
    master = replay({"workers": 1, "code": "broken"}, ("the_old_master_is_killed", {}),
                    ("a_worker_finishes_booting", {"index": 0}),
                    ("time_passes", {"seconds": 0.5}), ("hup", HUP),
                    ("every_booting_worker_finishes", {}),
                    machine_class=NewMasterMachine)
    assert not master.stopped and master.phase() is Phase.SERVING
    assert master.arbiter.generation == 2 and not master.arbiter.master_pid


def test_a_reap_only_records_and_the_tick_forgets_the_worker():
    """On Gunicorn 23 a reap runs inside the SIGCHLD handler, while the main loop may iterate
    the records: it must not change the table ("dictionary changed size during iteration")."""
    machine = MasterMachine()
    try:
        machine.start(workers=2, max_booting=0, shutdown_delay=0.0, max_worker_age=0.0)
        master = machine.master
        worker, _ = master.live()[0]
        records = dict(master.arbiter.records.by_pid)
        master.arbiter.reaped(worker.pid, 9)
        assert master.arbiter.records.by_pid == records and worker.pid not in \
            master.arbiter.WORKERS
        master.loop()
        assert worker.pid not in master.arbiter.records.by_pid
    finally:
        machine.teardown()


BROKEN_HUP = ("hup", {"code": "broken", "workers": 2, "config": "fine", "bind": "same",
                     "max_booting": 0})


def test_with_the_mold_a_broken_hup_rolls_back_and_a_lost_mold_is_started_again():
    master = replay({"workers": 2, "mold": True}, BROKEN_HUP,
                    ("a_mold_finishes_importing", {"index": 0}),
                    ("a_mold_dies", {"index": 0, "how": signal.SIGKILL}),
                    ("a_worker_crashes", {"index": 0, "how": signal.SIGKILL}))
    log = master.arbiter.log
    assert 'reason="mold: RuntimeError: broken"' in log.events("reload.rollback")[0]
    assert len(log.events("mold.lost")) == 1 and master.phase() is Phase.SERVING
    # The kept generation's new mold imports the code on disk now (broken: no release link).
    assert [m.code for m in master.world.molds.values()] == ["good", "broken", "broken"]


def test_with_the_mold_a_hung_import_is_killed_at_the_readiness_timeout():
    master = replay({"workers": 2, "mold": True}, ("hup", dict(BROKEN_HUP[1], code="slow")),
                    ("time_passes", {"seconds": 31.0}), ("time_passes", {"seconds": 0.5}))
    assert "not ready within graceful_readiness_timeout" in \
        master.arbiter.log.events("reload.rollback")[0]


# -- the simulation finds the defects of the old decision code --------------------------------
# Each test puts one piece of the decision code back as it was before these defects were fixed
# (a few lines, quoted from that code) and expects the invariants to catch it.

def failures(machine, examples=500, distinct=False):
    """The messages of what Hypothesis found running `machine` on a fixed set of sequences
    (not shrunk: only whether the invariants catch it matters here; `distinct`: shrunk,
    which reports each distinct failure, not only the first one found)."""
    try:
        run(machine, examples, shrink=distinct, fixed=True)
    except BaseException as exc:  # an ExceptionGroup when it found distinct failures
        return [str(leaf) for leaf in leaves(exc)]
    return []


def leaves(exc):
    for inner in getattr(exc, "exceptions", None) or []:
        yield from leaves(inner)
    if not getattr(exc, "exceptions", None):
        yield exc

def old_pool_workers(self):
    """Before: a worker without a record was left out of the pool's count."""
    records = self.arbiter.records
    pairs = [(w, records.of(w)) for w in list(self.arbiter.WORKERS.values())]
    return [(w, r) for w, r in pairs if r is not None]


def old_spawn_worker(self):
    """Before: the record came from the pack's pre_fork hook, which a user's hook replaces."""
    if getattr(self.cfg.pre_fork, "graceful_hook", False):
        self.records.expect(self.pool.new_record())
    pid = FakeProcesses.spawn_worker(self)
    self.records.spawned(pid)
    return pid


def test_the_simulation_finds_unbounded_spawning_under_a_user_pre_fork(monkeypatch):
    monkeypatch.setattr(pool.Pool, "workers", old_pool_workers)
    monkeypatch.setattr(SimArbiter, "spawn_worker", old_spawn_worker)
    monkeypatch.setattr(hooks, "check_config", lambda cfg, log: None)  # nothing chained late
    found = failures(MasterMachine, distinct=True)  # a raising user pre_fork escapes it too
    assert any("workers not told to stop" in text for text in found), found


def reraise(hook, args, error):
    raise error


def test_the_simulation_finds_a_user_hook_that_kills_the_master(monkeypatch):
    """Before: the user's hook was called bare; what it raised went through the master."""
    monkeypatch.setattr(userhooks, "failed", reraise)
    found = failures(MasterMachine)
    assert any(re.search(r"user \w+ failed", text) for text in found), found


def old_apply_config(self, kept_cfg, new_listeners):
    """Before: after the config was taken, every configured listener was created anew while
    the old workers held the old ones; Gunicorn retried five times, a second apart, then
    sys.exit(1)."""
    arbiter = self.arbiter
    arbiter.setup(arbiter.app)
    if kept_cfg.address != arbiter.cfg.address:
        held = {binds.address_of(lnr) for lnr in self.held()}
        if held & set(arbiter.cfg.address) or ("127.0.0.1", 9999) in arbiter.cfg.address:
            raise SystemExit(1)
        arbiter.LISTENERS = [binds.open_one(a, arbiter.cfg, None) for a in arbiter.cfg.address]


class OldBindHup(MasterMachine):
    """That old code leaked listeners too: that invariant is left out here, so the first
    failure found is the one this test looks for (shrinking to tell failures apart took 85 s)."""

    def the_listeners_are_the_serving_configs_and_none_leaks(self):
        pass


def test_the_simulation_finds_the_master_exiting_on_a_hup_that_changes_bind(monkeypatch):
    monkeypatch.setattr(binds, "changed", lambda old, new: False)
    monkeypatch.setattr(rollout.Rollouts, "apply_config", old_apply_config)
    found = failures(OldBindHup)
    assert any("the master did not survive a HUP: SystemExit(1)" in text for text in found), found


class OldHandOver(MasterMachine):
    """Before: a new master whose workers were ready took over, then SIGTERMed its old master,
    which took that for an operator's stop (lame duck, STOPPING=1 with a shutdown delay)."""

    @precondition(lambda self: self.running() and self.master.arbiter.reexec_pid)
    @rule()
    def the_new_master_asks_to_take_over(self):
        self.master.world.handed_over = self.master.arbiter.reexec_pid  # the old hand-over
        self.master.term()
        self.step()


def test_the_simulation_finds_stopping_sent_during_a_hand_over():
    found = failures(OldHandOver)
    assert any("STOPPING=1 without an operator's TERM" in text for text in found), found


def old_reconcile(self):
    """Before: the molds ticked before the pool's boot failures were decided, so the mold of
    a generation a failure was about to roll back was started again in the same tick."""
    arbiter, pool_ = self.arbiter, self.arbiter.pool
    if arbiter.molds:
        self.dispatch_all(arbiter.molds.late())
        arbiter.molds.tick()
    pool_.observe()
    for failure in pool_.take_boot_failures():
        if failure.generation == arbiter.generation:
            self.dispatch(facts.BootFailed(failure))
    pool_.reconcile(recycling=self.phase.is_in(Phase.SERVING))
    ready = pool_.complete()
    if ready is not None:
        pool_.retire_old()
        self.dispatch(facts.GenerationComplete(ready))
    if pool_.recovered():
        self.dispatch(facts.Recovered())


def test_the_simulation_finds_a_mold_started_for_a_generation_being_rolled_back(monkeypatch):
    monkeypatch.setattr(core.Core, "reconcile", old_reconcile)
    found = failures(MasterMachine)
    assert any("which may not serve" in text for text in found), found


# -- graceful_upgrade = "in-place": the exec, both ways ----------------------------------------

def boot_all(times=4):
    """A tick (the exec'd code's first), then its workers' boots."""
    return [("time_passes", {"seconds": 0.5})] + [("a_worker_finishes_booting", {"index": 0})] * times


def test_in_place_a_good_release_is_exec_d_adopted_and_completes():
    master = replay({"workers": 2, "in_place": True}, ("usr2", {"code": "good"}),
                    ("the_in_place_check_ends", {"outcome": "passes"}), *boot_all())
    assert master.world.execs == [("new", "")]
    assert master.phase() is Phase.SERVING and master.arbiter.generation == 2
    assert len(master.arbiter.log.events("upgrade.done")) == 1
    assert master.arbiter.upgrades.last["state"] == "done"


def test_in_place_a_broken_release_is_rolled_back_by_the_exec_back():
    master = replay({"workers": 2, "in_place": True}, ("usr2", {"code": "broken"}),
                    ("the_in_place_check_ends", {"outcome": "passes"}), *boot_all(),
                    ("time_passes", {"seconds": 0.5}), ("time_passes", {"seconds": 0.5}))
    assert [d for d, _ in master.world.execs] == ["new", "back"]
    assert master.phase() is Phase.SERVING and master.arbiter.generation == 1
    assert master.arbiter.upgrades.last["state"] == "rolled_back"
    assert "direction=back workers=2 generation=1" in master.arbiter.log.events("upgrade.adopted")[-1]


def test_in_place_an_exec_that_fails_refuses_and_the_old_code_serves_on():
    master = replay({"workers": 2, "in_place": True}, ("usr2", {"code": "good"}),
                    ("the_in_place_check_ends", {"outcome": "passes, the exec fails"}))
    assert master.world.execs == [] and master.phase() is Phase.SERVING
    assert "cannot exec" in master.arbiter.upgrades.last["reason"]


def test_in_place_term_while_the_new_generation_boots_stops_the_service_once():
    master = replay({"workers": 2, "in_place": True}, ("usr2", {"code": "slow"}),
                    ("the_in_place_check_ends", {"outcome": "passes"}),
                    ("time_passes", {"seconds": 0.5}), ("operator_term", {}),
                    ("every_booting_worker_finishes", {}), ("time_passes", {"seconds": 31.0}))
    assert master.stopped == "stop" and master.world.execs == [("new", "")]
    assert len([m for m in master.arbiter.notifier.messages if "STOPPING" in m]) == 1


@pytest.mark.parametrize("end", ["done", "rolled_back", "interrupted", "went back"])
def test_in_place_to_a_config_with_another_pidfile_leaves_only_the_current_one(end):
    """Found by random sequences: the pidfile the code before the exec kept stayed, with its
    status file, when the next code's config named another (after the stop, naming a dead
    master); so did the next code's, when it failed at start (a bind taken) and went back.
    The invariants judge the files after each step."""
    steps = [("usr2", {"code": "broken" if end == "rolled_back" else "good",
                       "bind": "taken" if end == "went back" else "same", "pidfile": "moved"}),
             ("the_in_place_check_ends", {"outcome": "passes"})]
    steps += [("time_passes", {"seconds": 0.5}), ("operator_term", {})] \
        if end == "interrupted" else boot_all() + [("time_passes", {"seconds": 0.5})] * 2
    master = replay({"workers": 2, "in_place": True}, *steps)
    state = "rolled_back" if end == "went back" else end
    assert master.arbiter.upgrades.last["state"] == state, master.arbiter.upgrades.last


def test_in_place_a_new_worker_killed_while_booting_rolls_back_and_the_old_serve():
    master = replay({"workers": 2, "in_place": True}, ("usr2", {"code": "slow"}),
                    ("the_in_place_check_ends", {"outcome": "passes"}),
                    ("time_passes", {"seconds": 0.5}),
                    ("a_worker_crashes", {"index": 2, "how": signal.SIGKILL}),
                    ("time_passes", {"seconds": 0.5}), ("time_passes", {"seconds": 0.5}))
    assert [d for d, _ in master.world.execs] == ["new", "back"]
    assert "SIGKILL" in master.world.execs[1][1] and master.phase() is Phase.SERVING
    assert "direction=back workers=2 generation=1" in master.arbiter.log.events("upgrade.adopted")[-1]


def test_in_place_a_term_held_across_the_exec_back_arrives_after_its_first_tick():
    """Found by 5,000 random sequences: the simulation handled a TERM between an exec and
    the next code's first tick, which the real master cannot (the exec blocks signals until
    that tick); the first tick's Adopted then came in lame duck, and ran again."""
    master = replay({"workers": 1, "in_place": True, "shutdown_delay": 2.0},
                    ("usr2", {"code": "broken"}),
                    ("the_in_place_check_ends", {"outcome": "passes"}),
                    *[("every_booting_worker_finishes", {})] * 2, ("operator_term", {}),
                    ("every_booting_worker_finishes", {}))
    assert master.phase() is Phase.LAME_DUCK and master.arbiter.inplace.current is None
    assert not master.arbiter.log.events("master.unexpected")


def test_in_place_with_the_mold_the_check_forks_the_new_generation():
    master = replay({"workers": 2, "in_place": True, "mold": True}, ("usr2", {"code": "good"}),
                    *[("the_in_place_check_ends", {"outcome": "passes"})] * 2, *boot_all())
    world, molds = master.world, master.arbiter.molds
    check = next(iter(world.checks))
    assert world.execs == [("new", "")] and master.arbiter.upgrades.last["state"] == "done"
    # Two imports in all: the first generation's mold, and the check, which forked the new one.
    assert world.molds_started == 2
    assert [pid for pid, m in molds.by_pid.items() if not m.stopping] == [check]
    assert world.molds[min(world.molds)].exited  # the kept generation's, once it retired
    assert [g for g, _, _ in world.mold_forks] == [1, 1, 2, 2]
    assert "source=in-place-check" in master.arbiter.log.events("mold.ready")[-1]


def test_in_place_with_the_mold_a_rollback_keeps_the_old_generations_mold():
    master = replay({"workers": 2, "in_place": True, "mold": True}, ("usr2", {"code": "good"}),
                    *[("the_in_place_check_ends", {"outcome": "passes"})] * 2,
                    ("time_passes", {"seconds": 0.5}),
                    ("a_worker_crashes", {"index": 2, "how": signal.SIGKILL}),
                    ("time_passes", {"seconds": 0.5}), ("time_passes", {"seconds": 0.5}),
                    ("a_worker_crashes", {"index": 0, "how": signal.SIGKILL}),
                    ("time_passes", {"seconds": 0.5}))
    world = master.world
    assert [d for d, _ in world.execs] == ["new", "back"] and master.arbiter.generation == 1
    # The kept generation's mold crossed both execs and forked the killed worker's
    # replacement: no import after the check's.
    first = min(world.molds)
    assert list(master.arbiter.molds.by_pid) == [first] and world.molds_started == 2
    assert world.mold_forks[-1] == (1, True, 1)


def test_in_place_after_a_rollback_a_hup_that_moves_the_bind_closes_the_old_listeners():
    master = replay({"workers": 1, "in_place": True}, ("usr2", {"code": "good"}),
                    ("the_in_place_check_ends", {"outcome": "passes"}),
                    ("a_worker_crashes", {"index": 1, "how": signal.SIGSEGV}),
                    *[("a_draining_worker_finishes", {"index": 0})] * 2,
                    ("hup", dict(HUP, bind="moved")))
    assert [d for d, _ in master.world.execs] == ["new", "back"]
    assert master.arbiter.inplace.held() == []


def test_in_place_a_hup_deferred_until_it_completes_may_raise_the_worker_count():
    master = replay({"workers": 1, "in_place": True}, ("usr2", {"code": "good"}),
                    ("the_in_place_check_ends", {"outcome": "passes"}),
                    ("hup", dict(HUP, workers=2)), ("every_booting_worker_finishes", {}))
    assert master.arbiter.upgrades.last["state"] == "done"
    assert master.phase() is Phase.RELOADING and master.arbiter.num_workers == 2


def test_in_lame_duck_the_status_file_stops_naming_a_worker_that_died():
    """Found by the status-file invariant: the lame duck's tick wrote nothing, so for all of
    graceful_shutdown_delay `status` listed a crashed worker as running (and a write that had
    failed before the TERM was not tried again); the metrics kept its slot unfolded."""
    replay({"workers": 2, "shutdown_delay": 2.0, "metrics": True}, ("operator_term", {}),
           ("a_worker_crashes", {"index": 0, "how": signal.SIGKILL}))


def test_a_new_master_whose_old_master_died_names_itself_once_the_pidfile_can_be_written():
    """Found by the pidfile invariant over failing writes: the claim was written once, so a
    refused write left the pidfile naming the dead master for good (`files.Owed`)."""
    replay({"workers": 1, "code": "good"},
           ("the_pidfile_directory_refuses_writes", {"refuses": True}),
           ("the_old_master_is_killed", {}),
           ("the_pidfile_directory_refuses_writes", {"refuses": False}),
           machine_class=NewMasterMachine)


def test_a_term_during_a_hup_that_moved_the_pidfile_leaves_no_status_file():
    """Found by the status-file invariant: Gunicorn removes the current pidfile at exit, and
    the pack the current status file; the ones the HUP moved from stayed, naming a master
    and workers that were gone."""
    replay({"workers": 1}, ("hup", dict(code="slow", workers=1, config="fine", bind="same",
                                        max_booting=0, pidfile="moved")),
           ("operator_term", {}))


def test_a_new_master_that_ends_during_its_old_masters_lame_duck_is_heard():
    """Found by the carry rule: the lame duck's tick did not watch the new master, so one that
    stopped on trial meanwhile (its workers' counts returned) was never heard: its counts
    were lost and its upgrade's record said booting until the stop."""
    master = replay({"workers": 1, "shutdown_delay": 2.0, "metrics": True},
                    ("usr2", {}), ("operator_term", {}),
                    ("the_new_master_dies", {"how": "exit 3", "counted": 1}))
    assert master.phase() is Phase.LAME_DUCK
    assert master.arbiter.upgrades.last["state"] == "rolled_back", master.arbiter.upgrades.last
