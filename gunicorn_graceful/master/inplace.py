"""USR2 with graceful_upgrade = "in-place": the master execs the new code itself, same PID.

Gunicorn's USR2 starts a second master with a new PID, which supervisord, tini,
a container's PID 1 and a plain systemd unit cannot follow. HAProxy's
master-worker reload and Puma's hot restart exec in place; here the running
workers also keep serving across the exec, and the new generation is gated on
readiness as a HUP's is. Each step fails closed:

1. USR2, in the old code (`start`): the new code's own start runs in a child
   (`relaunch ... --check-config`: the interpreter, the pack, the config, the
   app's import), bounded by graceful_upgrade_timeout. A failure refuses the
   upgrade; nothing else changed.
2. The exec (`handover`): what the next code needs (`payload`) crosses it: the
   listeners, each worker's heartbeat file and metrics slot, each worker's
   record, the metrics' totals and listener, and how to exec this code again;
   the master's signals are held across it. An exec that fails leaves this code
   running: refused.
3. The new code (`adopt`, from `GracefulArbiter.install`) takes the workers
   over as the previous generation and boots the next one; the pool retires the
   old generation only once the new one is complete, as on a HUP.
4. A new generation that fails, or is not complete within
   graceful_upgrade_timeout, is retired; once its workers are gone (within the
   pool's deadlines), the old code is exec'd back the same way, adopts the old
   workers and serves on: rolled back. A new code that exits before its first
   tick (its config, hooks or start fail) is exec'd back by `relaunch`, with
   the hand-over untouched.

With graceful_mold, the check is the new generation's mold: it imports the new
code once (`mold_process.run_check`), says so on a socket, and stays; the exec
hands it over with the molds the master runs (`Molds.export`), and the new code
sends it the generation and its listeners when it begins the generation, so the
new workers are forked by the process that imported, and no second import
runs. The kept generation's mold crosses both execs (the same process, still the
same pid's child): a rollback forks from it at once, with no import, instead of
importing the pinned release again.

Each run of an upgrade is in one `Step` at a time: `checking` (old code, its
check runs), `executed` (the code an exec started, before its first tick),
`importing` (with the mold: the new code waits for its check's import),
`booting` (the new generation boots), `rolling_back` (it failed; the old code is
exec'd back once its workers are gone). What each observation means (`watch`
returns facts) is `core`'s to decide.

Invariants: the master's PID never changes; an upgrade never signals a worker
of the serving generation before the next one is complete; systemd hears
RELOADING=1 at the USR2 and READY=1 once a generation serves (`core`), never
MAINPID; what the upgrade becomes (booting, done, rolled_back, refused) is in the
status file under the USR2's number, across the execs.
"""

import dataclasses
import enum
import os
import signal
import tempfile

from gunicorn_graceful import clock, compat, handoff, release, settings
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import binds, handover, preflight
from gunicorn_graceful.master.facts import (Adopted, CheckEnded, CheckImported, CheckLate,
                                            InPlaceLate, RollbackDrained)
from gunicorn_graceful.master.plan import late
from gunicorn_graceful.master.pool import how_it_ended
from gunicorn_graceful.master.records import Record

CHECK = "--check-config"  # Gunicorn's option: the new code's start, as a check (at nice 10)


class Step(enum.Enum):
    CHECKING = "checking"
    EXECUTED = "executed"
    IMPORTING = "importing"        # with graceful_mold: the new code runs, its check imports
    BOOTING = "booting"
    ROLLING_BACK = "rolling_back"


class AdoptedCheck:
    """The check an exec handed the new code (with graceful_mold): the same child process,
    killed through the molds' process calls (`mold.Processes`)."""

    def __init__(self, pid, mold, processes):
        self.pid, self.mold, self.processes, self.returncode = pid, mold, processes, None

    def kill(self):
        if self.returncode is None:
            self.processes.signal(self.pid, signal.SIGKILL)


def mold_of(check):
    """The master's end of a check's socket with graceful_mold (else None)."""
    return getattr(check, "mold", None)


@dataclasses.dataclass
class Run:
    """An in-place upgrade in progress, in the code that runs it."""

    seq: int
    started: float
    new_master: int                  # this master's pid: the same before and after
    step: Step = Step.CHECKING
    preflight: object = None         # the checking child (old code), a subprocess.Popen
    preflight_status: int = None
    errors: object = None            # the checking child's stderr, a temporary file
    failed: str = None               # why the check failed, or the new generation rolls back
    check_said: dict = None          # with graceful_mold: what the check said so far
    outcome: str = "rolled_back"     # what going back makes of it ("refused": the check)
    new_generation: int = 0
    first_seq: int = 0               # a deferred upgrade carries out USR2s first_seq..seq


class InPlace:
    """The in-place side of one master: before the exec (old code) and after (new code).

    `handed`: what the upgrade that exec'd this code handed it (`handover.take`), else None;
    `notify_address`: systemd's socket, which the exec gives back to the next code;
    `system`: the calls into the OS (`system.System`)."""

    def __init__(self, arbiter, pool, upgrades, generations, reloads, handed, notify_address,
                 system):
        self.arbiter, self.pool, self.upgrades = arbiter, pool, upgrades
        self.generations, self.system = generations, system
        self.reloads = reloads
        self.handed, self.notify_address = handed, notify_address
        self.current = None
        self.kept = []  # the old code's listeners, while a new config's own ones serve too
        self.molds = None  # with graceful_mold, the master's (`mold.Molds`, set by install)

    # -- the old code: USR2 -------------------------------------------------------------------

    def refusal(self):
        """Why an in-place upgrade cannot start, beyond the phase (`core`), or None."""
        arbiter = self.arbiter
        if arbiter.cfg.reuse_port:
            return "reuse_port is on: the workers' own listeners cannot be handed over"
        if getattr(arbiter, "dirty_arbiter_pid", 0):
            return "dirty workers run: their arbiter cannot be handed over an exec"
        return None

    def start(self):
        """USR2: run the new code's checks in a child; `watch` execs once they pass."""
        upgrades = self.upgrades
        first_seq = upgrades.take_pending()
        self.current = Run(upgrades.seq, clock.monotonic(), self.arbiter.pid,
                           first_seq=first_seq)
        self.current.preflight = self.check_new_code()
        self.record("booting")
        emit(self.arbiter.log, "info", "upgrade.in_place", pid=self.arbiter.pid,
             generation=self.arbiter.generation,
             timeout=self.arbiter.settings.upgrade_timeout,
             checking=self.current.preflight.pid if self.current.preflight else "-")

    def check_new_code(self):
        """The new code's start, without serving: Gunicorn's --check-config under `relaunch`,
        in the directory and environment the exec will use (with graceful_mold, the check
        that becomes the new generation's mold: `mold_process.run_check`). None when it
        cannot even run."""
        executable, args, cwd, environ = self.new_code()
        # Gunicorn's --check-config imports the app before it applies pythonpath.
        preflight.with_pythonpath(environ, self.arbiter.cfg, cwd)
        mold = self.molds is not None
        try:
            self.current.errors = tempfile.TemporaryFile()  # a pipe could fill up, block it
            return self.system.run_check(executable, args + ([] if mold else [CHECK]), cwd,
                                         environ, self.current.errors, mold=mold)
        except OSError as exc:
            self.current.failed = "cannot run the new code's check: %s" % (exc.strerror or exc)
            return None

    def new_code(self):
        """(executable, argv, cwd, environment) of the code a USR2 runs: Gunicorn's START_CTX,
        through `relaunch`, in the release the deploy link points to now."""
        arbiter = self.arbiter
        args = handover.command(arbiter.START_CTX["args"])
        cwd = arbiter.settings.release_link or arbiter.START_CTX["cwd"]
        return arbiter.START_CTX[0], handover.relaunched(args), cwd, \
            handover.environ_of(arbiter.cfg)

    def old_code(self):
        """How to run this code again: what a new code that fails execs back to. With
        graceful_release_link, every path through the link (interpreter, script, config,
        --chdir, directory) is pinned to the serving generation's release: the link points
        to the new one by then."""
        arbiter = self.arbiter
        serving = self.generations.release_of(arbiter.generation)
        link = arbiter.settings.release_link

        def pinned(path):
            return release.pin(path, serving, link)
        args = [pinned(arg) for arg in handover.command(arbiter.START_CTX["args"])]
        return [pinned(arbiter.START_CTX[0]), handover.relaunched(args),
                pinned(arbiter.START_CTX["cwd"]), handover.environ_of(arbiter.cfg)]

    def reaped(self, pid, status):
        """Whether `pid` was the checking child (reaped, maybe in Gunicorn 23's SIGCHLD
        handler: only noted)."""
        trial = self.current
        if trial is None or trial.preflight is None or trial.preflight.pid != pid:
            return False
        trial.preflight_status = status
        trial.preflight.returncode = status  # reaped here: Popen must not wait for it
        return True

    def watch(self):
        """Each tick while an upgrade runs in this code: what became of it (`facts`)."""
        trial, now = self.current, clock.monotonic()
        if trial is None or trial.step is Step.EXECUTED:
            return []
        limit = self.arbiter.settings.upgrade_timeout
        if trial.step in (Step.CHECKING, Step.IMPORTING):
            if trial.preflight is None:
                return [CheckEnded(trial.failed)]
            importing = trial.step is Step.IMPORTING
            passed = self.check_passed(trial, "ready" if importing else "configured")
            if passed is None:
                return [CheckLate(limit)] if late(trial.started, now, limit) else []
            reason = None if passed else "the new code's check failed: %s" % (
                (trial.check_said or {}).get("failed") or last_line(trial))
            return [CheckImported(reason) if importing else CheckEnded(reason)]
        if trial.step is Step.BOOTING:
            return [InPlaceLate(trial.new_generation, now - trial.started)] \
                if late(trial.started, now, limit) else []
        return [] if self.pool_has(trial.new_generation) else [RollbackDrained(trial.failed)]

    def check_passed(self, trial, wanted):
        """Whether the check passed, None while it runs: its exit code; with graceful_mold,
        what it said (`wanted`: "configured" before the exec, "ready" after), and a check
        that exits (even after it said ready) failed."""
        mold = mold_of(trial.preflight)
        if mold is None:
            status = trial.preflight_status
            return None if status is None else not check_failed(status)
        said = trial.check_said or {}
        for _ in range(3):  # it says at most configured, then ready or failed
            message = self.molds.processes.poll(mold) if "ready" not in said else None
            if not message:
                break
            said = trial.check_said = dict(said, **message)
        if trial.preflight_status is not None or "failed" in said:
            return False
        return True if wanted in said or "ready" in said else None

    def kill_check(self):
        """`core`: the check ran out of time."""
        self.current.preflight.kill()

    def exec_forward(self, metrics):
        """The check passed (with graceful_mold: its config did, and it goes on importing
        while the new code starts): exec the new code (`metrics`: this master's, None when
        off, whose counts it hands on). Returns only when the exec failed: why."""
        if mold_of(self.current.preflight) is None:
            self.close_errors()
        return self.exec_code(self.new_code(), metrics, "new")

    def checks_after_exec(self):
        """Whether the check still runs in this code, which an exec started (then a failure
        of it is a refusal that execs the old code back: `refuse_after_exec`)."""
        return self.current.step is Step.IMPORTING

    def refuse_after_exec(self, reason):
        """With graceful_mold, the check failed after the exec: nothing of the new code ever
        served; the old code is exec'd back, and records the refusal."""
        self.end_check()
        self.current.failed, self.current.outcome = reason, "refused"
        emit(self.arbiter.log, "error", "upgrade.refused", pid=self.arbiter.pid, reason=reason)

    def refuse(self, reason):
        """The upgrade ended before the exec (its check failed, or the exec did)."""
        self.end_check()
        emit(self.arbiter.log, "error", "upgrade.refused", pid=self.arbiter.pid, reason=reason)
        self.finish("refused", reason)

    def close_errors(self):
        if self.current.errors is not None:
            self.current.errors.close()
            self.current.errors = None

    def exec_back_failed(self, problem):
        """The exec back failed: this code serves on with the kept generation. Returns what
        the upgrade became and why."""
        emit(self.arbiter.log, "error", "upgrade.exec_back_failed", pid=self.arbiter.pid,
             reason=problem, action="this code serves on with the kept generation")
        outcome, reason = self.current.outcome, self.current.failed
        self.finish(outcome, reason)
        return outcome, reason

    def abandon(self):
        """The master stops during an upgrade: the checking child goes with it; one line and
        the record say the upgrade was cut short (`gunicorn-graceful upgrade` exits 4)."""
        trial = self.current
        if trial is None:
            return
        self.end_check()
        emit(self.arbiter.log, "warning", "upgrade.interrupted", pid=self.arbiter.pid,
             seq=trial.seq, step=trial.step.value, after=clock.monotonic() - trial.started)
        self.finish("interrupted", "master %s stopped during the in-place upgrade (step %s)"
                    % (self.arbiter.pid, trial.step.value))

    def end_check(self):
        """The check will not be exec'd to (`core`: refused, the master stops, or the new code
        went back before it began a generation): killed if it runs (with graceful_mold, one
        that passed waits for a generation that will not come), its socket and stderr
        closed."""
        trial = self.current
        self.close_errors()
        if trial.preflight is not None and trial.preflight_status is None:
            trial.preflight.kill()
        mold = mold_of(trial.preflight)
        if mold is not None:
            self.molds.processes.close(mold)

    # -- the exec, both ways -----------------------------------------------------------------

    def exec_code(self, code, metrics, direction, reason=""):
        """Replace this process's code with `code` (see the top), handing it this master's
        state; returns only when the exec failed: why."""
        return handover.exec_with(self.arbiter, self.system, code,
                                  lambda: self.payload(metrics, direction, reason), metrics)

    def exec_back(self, metrics, reason):
        """The new generation is gone: the old code comes back with the old listeners; those
        only the new config opened close at the exec (not inheritable)."""
        arbiter = self.arbiter
        added = [lnr for lnr in arbiter.LISTENERS if lnr not in self.kept]
        for lnr in added:
            os.set_inheritable(lnr.fileno(), False)
        problem = self.exec_code(tuple(self.handed["back"]), metrics, "back", reason)
        for lnr in added:
            os.set_inheritable(lnr.fileno(), True)  # as Gunicorn makes its listeners
        return problem

    def held(self):
        """The old code's listeners a new config replaced, held until the upgrade ends: a
        worker forked meanwhile closes them (`GracefulArbiter.spawn_worker`)."""
        return [lnr for lnr in self.kept if lnr not in self.arbiter.LISTENERS]

    def payload(self, metrics, direction, reason):
        """The state the next code adopts (`adopt`): every descriptor in it is kept across
        the exec (`handover.fds`)."""
        arbiter, trial = self.arbiter, self.current
        workers = []
        for worker, record in self.pool.workers():
            workers.append({"pid": worker.pid, "age": worker.age,
                            "heartbeat": worker.tmp.fileno(),
                            "slot": metrics.slot_fd(worker.pid) if metrics else None,
                            "record": dataclasses.asdict(record)})
        return {"seq": trial.seq, "first_seq": trial.first_seq, "direction": direction,
                "reason": reason, "upgrade_seq": self.upgrades.seq,
                "upgrade_pending": self.upgrades.pending, "reloads": self.reloads.export(),
                "upgrade_history": self.upgrades.history,
                "started": trial.started, "generations": self.generations.export(),
                "worker_age": arbiter.worker_age,
                "listeners": [lnr.fileno() for lnr in (self.kept if direction == "back"
                                                       else arbiter.LISTENERS)],
                "binds": handover.binds_of(arbiter.cfg) if direction == "new" else self.handed["binds"],
                "workers": workers,
                "metrics": metrics.handover() if metrics else None,
                "handoff": handoff.shared.fds() if handoff.shared is not None else None,
                "back": self.old_code() if direction == "new" else self.handed["back"],
                "notify": self.notify_address, "upgrade_refused": self.upgrades.last_refusal,
                "molds": self.molds.export() if self.molds is not None else [],
                "check": self.passed_check() if direction == "new" else None,
                "outcome": trial.outcome, "pidfile": self.pidfile_path()}

    def pidfile_path(self):
        """Where this code's pidfile is (each config names its own): absolute, since the next
        code may run in another directory."""
        pidfile = self.arbiter.pidfile
        return os.path.abspath(pidfile.fname) if pidfile is not None else None

    def passed_check(self):
        """With graceful_mold, the check the next code adopts as its generation's mold: what
        it said, and its stderr (read when it fails)."""
        trial = self.current
        mold = mold_of(trial.preflight)
        if mold is None:
            return None
        return {"pid": trial.preflight.pid, "sock": mold.fileno(), "said": trial.check_said,
                "errors": trial.errors.fileno()}

    # -- the new code: adopt, then finish --------------------------------------------------

    def adopt(self):
        """In the code an upgrade exec'd (from `install`): take over the listeners and the
        workers, with their records; going forward, the next generation is wanted. It works
        on copies of the handed descriptors: until the first tick, `go_back` can hand the
        originals back untouched."""
        arbiter, handed = self.arbiter, self.handed
        self.kept = self.system.create_sockets(arbiter.cfg, arbiter.log,
                                               [os.dup(fd) for fd in handed["listeners"]])
        arbiter.LISTENERS = self.listeners_for(arbiter.cfg)
        arbiter.worker_age = handed["worker_age"]
        for item in handed["workers"]:
            self.adopt_worker(item)
        self.upgrades.seq = handed["upgrade_seq"]
        self.upgrades.pending = handed["upgrade_pending"]
        self.upgrades.history = handed["upgrade_history"]
        self.upgrades.last_refusal = handed["upgrade_refused"]
        self.reloads.adopt(handed["reloads"])
        if arbiter.pidfile is not None:  # Gunicorn found its own pid there and kept it
            arbiter.pidfile.pid = arbiter.pid
        self.current = Run(handed["seq"], handed["started"], self.arbiter.pid,
                           step=Step.EXECUTED, failed=handed["reason"] or None,
                           first_seq=handed["first_seq"])
        self.generations.adopt(handed["generations"])
        emit(arbiter.log, "info", "upgrade.adopted", pid=arbiter.pid,
             direction=handed["direction"], workers=len(handed["workers"]),
             generation=arbiter.generation)

    def listeners_for(self, cfg):
        """The handed listeners, or, when the new config binds elsewhere, its own (those of
        the handed ones it keeps, new ones bound, as a HUP does: `binds.reopen`); a bind that
        fails ends this code's start, and `relaunch` goes back. Going back, always the handed
        ones: they are what the kept workers serve, whatever the config on disk says now."""
        if self.handed["binds"] == handover.binds_of(cfg):
            return list(self.kept)
        if self.handed["direction"] == "back":
            emit(self.arbiter.log, "warning", "settings.warning",
                 problem="the config on disk binds %s, the restored code serves %s (the "
                         "code an upgrade went back to reads the config of the release it "
                         "runs: with graceful_release_link, the kept one)"
                 % (cfg.address, ",".join(str(lnr) for lnr in self.kept)))
            return list(self.kept)
        try:
            listeners = binds.reopen(cfg, self.kept, self.arbiter.log, self.system.open_listener)
        except binds.BindFailure as exc:
            raise SystemExit(settings.ERROR + "the new config's bind: %s" % exc) from None
        emit(self.arbiter.log, "info", "master.listening",
             listeners=",".join(str(lnr) for lnr in listeners))
        return listeners

    def adopt_worker(self, item):
        arbiter = self.arbiter
        worker = arbiter.new_worker()
        worker.tmp.close()
        worker.tmp = compat.inherited_heartbeat(os.dup(item["heartbeat"]))
        worker.pid, worker.age = item["pid"], item["age"]
        arbiter.WORKERS[worker.pid] = worker
        self.pool.records.by_pid[worker.pid] = Record(**item["record"])

    def first_tick(self):
        """The new code runs its loop: `go_back` no longer applies, the signals the exec held
        are delivered, the handed descriptors close (copies were adopted), workers exited
        meanwhile are reaped. The fact `core` acts on: which way the exec went."""
        self.adopt_molds()
        handover.first_tick(self.arbiter, self.handed)
        self.arbiter.reap_workers()
        return Adopted(self.handed["direction"], self.current.failed,
                       self.handed["outcome"])

    def adopt_molds(self):
        """The molds the previous code ran go on here (copies of their sockets, before the
        originals close), and the check it handed over (its generation begins once it
        imported; going back, when the new code failed at start, `core` ends it). A mold a
        code without the mold is handed reads the end of its socket, and exits."""
        handed, check = self.handed, self.handed["check"]
        if self.molds is None:
            return
        self.molds.adopt(handed["molds"])
        if check:
            trial, processes = self.current, self.molds.processes
            trial.preflight = AdoptedCheck(check["pid"], processes.adopt(check["sock"]),
                                           processes)
            trial.check_said = check["said"]
            trial.errors = os.fdopen(os.dup(check["errors"]), "rb")

    def check_imports(self):
        """Whether the check an exec handed over still imports: `core` waits for it
        (`await_check`) before the generation begins."""
        trial = self.current
        return trial.preflight is not None and "ready" not in (trial.check_said or {})

    def await_check(self):
        self.current.step = Step.IMPORTING

    def begin_generation(self):
        """Going forward: the old code's generation serves on until the next one is ready
        (with graceful_mold, forked by the check that imported the new code, which is the
        molds' from now on)."""
        arbiter, trial = self.arbiter, self.current
        check, said = trial.preflight, trial.check_said or {}
        generation = self.generations.begin(arbiter.settings.release_link, said.get("release"))
        if check is not None:
            trial.preflight = None
            self.close_errors()
            self.molds.adopt_check(check, said["ready"], generation)
        self.current.new_generation = generation
        self.current.step = Step.BOOTING
        self.record("booting")
        emit(arbiter.log, "info", "upgrade.booting", pid=arbiter.pid, generation=generation,
             previous_generation=self.kept_generation(), workers=arbiter.num_workers)

    def new_generation_boots(self):
        """Whether an in-place upgrade's new generation boots here, not rolled back yet."""
        return self.current is not None and self.current.step is Step.BOOTING

    def roll_back(self, reason):
        """The new generation failed: the kept one is wanted again; the generation to retire
        (`core` retires it; the old code comes back once it is gone)."""
        arbiter, trial = self.arbiter, self.current
        trial.failed, trial.step = reason, Step.ROLLING_BACK
        emit(arbiter.log, "error", "upgrade.rollback", pid=arbiter.pid,
             generation=trial.new_generation, kept_generation=self.kept_generation(),
             after=clock.monotonic() - trial.started, reason=reason)
        self.generations.roll_back(trial.new_generation, to=self.kept_generation())
        return trial.new_generation

    def finish(self, state_name, reason=""):
        """The upgrade ended in this code: its record, one line when done."""
        trial = self.current
        if state_name == "done":
            emit(self.arbiter.log, "info", "upgrade.done", pid=self.arbiter.pid,
                 generation=self.arbiter.generation, after=clock.monotonic() - trial.started)
            binds.close_unused(self.kept, keep=self.arbiter.LISTENERS)
        # Those the serving config uses are the listeners' own from now on: a later HUP
        # that moves the bind closes them. Only after a failed exec back does the kept
        # generation serve on others, and those stay held.
        self.kept = [] if state_name == "done" else self.held()
        self.record(state_name, reason)
        self.drop_handed_pidfile()
        self.current = None
        self.handed = None

    def drop_handed_pidfile(self):
        """The upgrade ended in this code: the pidfile the code before it kept, when this
        code's config names another, goes with its status file (as a HUP's moved one does).
        Gunicorn removes only its own at exit: left, it would name a dead master."""
        path = (self.handed or {}).get("pidfile")
        if path and path != self.pidfile_path():
            self.arbiter.files.remove_pidfile(path)

    def first_tick_due(self):
        return self.current is not None and self.current.step is Step.EXECUTED

    def kept_generation(self):
        """The generation that served when the exec to this code began."""
        return self.handed["generations"]["generation"]

    def pool_has(self, generation):
        return any(r.generation == generation for _, r in self.pool.workers())

    def record(self, state_name, reason=""):
        self.upgrades.record(self.current, state_name, reason, in_place=True)


def check_failed(status):
    return status is None or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0


def last_line(trial):
    """The last line the checking child wrote on stderr (Gunicorn's error), or how it ended."""
    text = ""
    if trial.errors is not None:
        trial.errors.seek(0)
        text = trial.errors.read()[-4096:].decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else how_it_ended(trial.preflight_status)
