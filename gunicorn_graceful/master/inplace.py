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
2. `exec_code`: what the next code needs (`handover`) goes into a memfd: the
   listeners, each worker's heartbeat file and metrics slot (descriptors made
   inheritable), each worker's record, the metrics' totals and listener, and
   how to exec this code again. The master's signals are blocked across the
   exec (the mask survives it): a TERM in the window waits for the new code
   instead of killing the master. An exec that fails leaves this code running:
   refused.
3. The new code (`adopt`, from `GracefulArbiter.install`) takes the workers
   over as the previous generation and boots the next one; the pool retires the
   old generation only once the new one is complete, as on a HUP.
4. A new generation that fails, or is not complete within
   graceful_upgrade_timeout, is retired; once its workers are gone (within the
   pool's deadlines), the old code is exec'd back the same way, adopts the old
   workers and serves on: rolled back. A new code that exits before its first
   tick (its config, hooks or start fail) is exec'd back by `relaunch`, with
   the hand-over untouched.

Invariants: the master's PID never changes; an upgrade never signals a worker
of the serving generation before the next one is complete; systemd hears
RELOADING=1 at the USR2 and READY=1 once a generation serves (`core`), never
MAINPID; what the upgrade becomes (booting, done, rolled_back, refused) is in the
status file under the USR2's number, across the execs.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile

from gunicorn import sock

from gunicorn_graceful import clock, compat, handoff, release, settings
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import binds, preflight
from gunicorn_graceful.master.facts import (Adopted, CheckEnded, CheckLate, InPlaceLate,
                                            RollbackDrained)
from gunicorn_graceful.master.plan import late
from gunicorn_graceful.master.pool import how_it_ended
from gunicorn_graceful.master.records import Record

ENV = settings.IN_PLACE_ENV
RELAUNCH = "gunicorn_graceful.master.relaunch"
CHECK = "--check-config"  # Gunicorn's option: the new code's start, as a check (at nice 10)
# Blocked across an exec; the new code unblocks them at its first tick.
SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD)


@dataclasses.dataclass
class Trial:
    """An in-place upgrade in progress, in the code that runs it."""

    seq: int
    started: float
    new_master: int                  # this master's pid: the same before and after
    preflight: object = None         # the checking child (old code), a subprocess.Popen
    preflight_status: int = None
    errors: object = None            # the checking child's stderr, a temporary file
    failed: str = None               # why the new generation is being rolled back
    new_generation: int = 0
    first_seq: int = 0               # a deferred upgrade carries out USR2s first_seq..seq


class InPlace:
    """The in-place side of one master: before the exec (old code) and after (new code).

    `handed`: what the upgrade that exec'd this code handed it (`take_handover`), else None;
    `notify_address`: systemd's socket, which the exec gives back to the next code."""

    def __init__(self, arbiter, pool, upgrades, generations, reloads, handed, notify_address):
        self.arbiter, self.pool, self.upgrades = arbiter, pool, upgrades
        self.generations = generations
        self.reloads = reloads
        self.handed, self.notify_address = handed, notify_address
        self.current = None
        self.kept = []  # the old code's listeners, while a new config's own ones serve too

    # -- the old code: USR2 -------------------------------------------------------------------

    def refusal(self, molds):
        """Why an in-place upgrade cannot start, beyond the phase (`core`), or None."""
        arbiter = self.arbiter
        if arbiter.cfg.reuse_port:
            return "reuse_port is on: the workers' own listeners cannot be handed over"
        if getattr(arbiter, "dirty_arbiter_pid", 0):
            return "dirty workers run: their arbiter cannot be handed over an exec"
        if molds is not None:
            return "graceful_mold is on: an in-place upgrade cannot hand molds over yet"
        return None

    def start(self):
        """USR2: run the new code's checks in a child; `watch` execs once they pass."""
        upgrades = self.upgrades
        first_seq = upgrades.take_pending()
        self.current = Trial(upgrades.seq, clock.monotonic(), self.arbiter.pid,
                             first_seq=first_seq)
        self.current.preflight = self.check_new_code()
        self.record("booting")
        emit(self.arbiter.log, "info", "upgrade.in_place", pid=self.arbiter.pid,
             generation=self.arbiter.generation,
             timeout=self.arbiter.settings.upgrade_timeout,
             checking=self.current.preflight.pid if self.current.preflight else "-")

    def check_new_code(self):
        """The new code's start, without serving: Gunicorn's --check-config under `relaunch`,
        in the directory and environment the exec will use. None when it cannot even run."""
        executable, args, cwd, environ = self.new_code()
        # Gunicorn's --check-config imports the app before it applies pythonpath.
        preflight.with_pythonpath(environ, self.arbiter.cfg, cwd)
        try:
            self.current.errors = tempfile.TemporaryFile()  # a pipe could fill up, block it
            return subprocess.Popen(args + [CHECK], executable=executable, cwd=cwd,
                                    env=environ, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=self.current.errors,
                                    close_fds=True)
        except OSError as exc:
            self.current.failed = "cannot run the new code's check: %s" % (exc.strerror or exc)
            return None

    def new_code(self):
        """(executable, argv, cwd, environment) of the code a USR2 runs: Gunicorn's START_CTX,
        through `relaunch`, in the release the deploy link points to now."""
        arbiter = self.arbiter
        args = gunicorn_args(arbiter.START_CTX["args"])
        cwd = arbiter.settings.release_link or arbiter.START_CTX["cwd"]
        return arbiter.START_CTX[0], relaunched(args), cwd, environ_of(arbiter.cfg)

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
        args = [pinned(arg) for arg in gunicorn_args(arbiter.START_CTX["args"])]
        return [pinned(arbiter.START_CTX[0]), relaunched(args), pinned(arbiter.START_CTX["cwd"]),
                environ_of(arbiter.cfg)]

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
        if trial is None:
            return []
        limit = self.arbiter.settings.upgrade_timeout
        if self.handed is None:  # the old code: its check
            if trial.preflight is None:
                return [CheckEnded(trial.failed)]
            if trial.preflight_status is None:
                return [CheckLate(limit)] if late(trial.started, now, limit) else []
            failed = check_failed(trial.preflight_status)
            return [CheckEnded("the new code's check failed: %s" % last_line(trial)
                               if failed else None)]
        if not trial.new_generation:
            return []
        if trial.failed is None:
            return [InPlaceLate(trial.new_generation, now - trial.started)] \
                if late(trial.started, now, limit) else []
        return [] if self.pool_has(trial.new_generation) else [RollbackDrained(trial.failed)]

    def kill_check(self):
        """`core`: the check ran out of time."""
        self.current.preflight.kill()

    def exec_forward(self, metrics):
        """The check passed: exec the new code (`metrics`: this master's, None when off,
        whose counts it hands on). Returns only when the exec failed: why."""
        self.close_errors()
        return self.exec_code(self.new_code(), metrics, "new")

    def refuse(self, reason):
        """The upgrade ended before the exec (its check failed, or the exec did)."""
        self.close_errors()
        emit(self.arbiter.log, "error", "upgrade.refused", pid=self.arbiter.pid, reason=reason)
        self.finish("refused", reason)

    def close_errors(self):
        if self.current.errors is not None:
            self.current.errors.close()
            self.current.errors = None

    def exec_back_failed(self, problem):
        """The exec back failed: this code serves on with the kept generation. Returns why
        the upgrade was rolled back."""
        emit(self.arbiter.log, "error", "upgrade.exec_back_failed", pid=self.arbiter.pid,
             reason=problem, action="this code serves on with the kept generation")
        reason = self.current.failed
        self.finish("rolled_back", reason)
        return reason

    def abandon(self):
        """The master stops during an upgrade: the checking child goes with it."""
        trial = self.current
        if trial is not None and trial.preflight is not None \
                and trial.preflight_status is None:
            trial.preflight.kill()

    # -- the exec, both ways -----------------------------------------------------------------

    def exec_code(self, code, metrics, direction, reason=""):
        """Replace this process's code with `code` (see the top), handing it this master's
        state; returns only when the exec failed: why."""
        arbiter = self.arbiter
        # First: a signal from here on stays pending in the kernel across the exec, and the
        # next code's first tick unblocks it. Those Gunicorn's handlers already queued in
        # memory are handed over (`signals`), or queued again if the exec fails.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        state = self.handover(metrics, direction, reason)
        emit(arbiter.log, "info", "upgrade.exec", pid=arbiter.pid, direction=direction,
             workers=len(state["workers"]), cwd=code[2])
        if metrics:
            metrics.pause()
        state["signals"] = compat.take_queued_signals(arbiter)
        problem = execute(code, state)
        compat.queue_signals(arbiter, state["signals"])
        if metrics:
            metrics.resume()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        return problem

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

    def handover(self, metrics, direction, reason):
        """The state the next code adopts (`adopt`): every descriptor in it is kept across
        the exec."""
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
                "binds": binds_of(arbiter.cfg) if direction == "new" else self.handed["binds"],
                "workers": workers,
                "metrics": metrics.handover() if metrics else None,
                "handoff": handoff.shared.fds() if handoff.shared is not None else None,
                "back": self.old_code() if direction == "new" else self.handed["back"],
                "notify": self.notify_address, "upgrade_refused": self.upgrades.last_refusal}

    # -- the new code: adopt, then finish --------------------------------------------------

    def adopt(self):
        """In the code an upgrade exec'd (from `install`): take over the listeners and the
        workers, with their records; going forward, the next generation is wanted. It works
        on copies of the handed descriptors: until the first tick, `go_back` can hand the
        originals back untouched."""
        arbiter, handed = self.arbiter, self.handed
        self.kept = sock.create_sockets(arbiter.cfg, arbiter.log,
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
        self.current = Trial(handed["seq"], handed["started"], self.arbiter.pid,
                             failed=handed["reason"] or None,
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
        if self.handed["binds"] == binds_of(cfg):
            return list(self.kept)
        if self.handed["direction"] == "back":
            emit(self.arbiter.log, "warning", "settings.warning",
                 problem="the config on disk binds %s, the restored code serves %s (the "
                         "code an upgrade went back to reads the config of the release it "
                         "runs: with graceful_release_link, the kept one)"
                 % (cfg.address, ",".join(str(lnr) for lnr in self.kept)))
            return list(self.kept)
        try:
            listeners = binds.reopen(cfg, self.kept, self.arbiter.log)
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
        global _adopted
        _adopted = True
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        compat.queue_signals(self.arbiter, self.handed["signals"])
        close_handed(self.handed)
        self.arbiter.reap_workers()
        return Adopted(self.handed["direction"], self.current.failed)

    def begin_generation(self):
        """Going forward: the old code's generation serves on until the next one is ready."""
        arbiter = self.arbiter
        generation = self.generations.begin(arbiter.settings.release_link)
        self.current.new_generation = generation
        self.record("booting")
        emit(arbiter.log, "info", "upgrade.booting", pid=arbiter.pid, generation=generation,
             previous_generation=self.kept_generation(), workers=arbiter.num_workers)

    def new_generation_boots(self):
        """Whether an in-place upgrade's new generation boots here, not rolled back yet."""
        trial = self.current
        return trial is not None and bool(trial.new_generation) and trial.failed is None

    def roll_back(self, reason):
        """The new generation failed: the kept one is wanted again; the generation to retire
        (`core` retires it; the old code comes back once it is gone)."""
        arbiter, trial = self.arbiter, self.current
        trial.failed = reason
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
        self.current = None
        self.handed = None

    def first_tick_due(self):
        return self.handed is not None and not _adopted

    def kept_generation(self):
        """The generation that served when the exec to this code began."""
        return self.handed["generations"]["generation"]

    def pool_has(self, generation):
        return any(r.generation == generation for _, r in self.pool.workers())

    def record(self, state_name, reason=""):
        self.upgrades.record(self.current, state_name, reason, in_place=True)


def gunicorn_args(args):
    """Gunicorn's START_CTX args as a command that starts it again: `python -m gunicorn` for
    its __main__ module (run as a script, it would shadow the stdlib), and no `relaunch`."""
    args = list(args)
    if len(args) > 2 and args[1] == "-m" and args[2] == RELAUNCH:
        args[1:3] = []
    if len(args) > 1 and args[1].endswith(os.path.join("gunicorn", "__main__.py")):
        args[1:2] = ["-m", "gunicorn"]
    return args


def relaunched(args):
    """`gunicorn_args` run through `relaunch` (the python -m entry an in-place exec runs)."""
    return [args[0], "-m", RELAUNCH] + args[1:]


_adopted = False  # this code reached its first tick (`first_tick`)


def execute(code, state):
    """Exec `code` ((executable, argv, cwd, environment)) with `state` in a memfd and every
    descriptor it names kept; returns only when the exec failed: why, after undoing all."""
    executable, args, cwd, environ = code
    fds = handed_fds(state)
    memfd = os.memfd_create("gunicorn-graceful-handover", 0)
    os.write(memfd, json.dumps(state).encode())
    environ = dict(environ, **{ENV: str(memfd)})
    if state["notify"]:
        environ["NOTIFY_SOCKET"] = state["notify"]
    kept = [(fd, os.get_inheritable(fd)) for fd in fds]
    for fd in fds:
        os.set_inheritable(fd, True)
    here = os.getcwd()
    try:
        os.chdir(cwd)
        os.execve(executable, args, environ)
    except OSError as exc:
        problem = "cannot exec %s in %s: %s" % (executable, cwd, exc.strerror or exc)
    os.chdir(here)
    for fd, inheritable in kept:
        os.set_inheritable(fd, inheritable)
    os.close(memfd)
    return problem


def handed_fds(state):
    """Every descriptor a hand-over names."""
    fds = list(state["listeners"])
    for item in state["workers"]:
        fds += [item["heartbeat"]] + ([item["slot"]] if item["slot"] is not None else [])
    if state["metrics"] and state["metrics"]["fd"] is not None:
        fds.append(state["metrics"]["fd"])
    return fds + (state["handoff"] or [])


def take_handover():
    """The state an upgrade handed this code (`handover`), or None."""
    fd = os.environ.get(ENV)
    if not fd:
        return None
    return json.loads(os.pread(int(fd), 1 << 24, 0).decode())


def close_handed(state):
    """At the first tick: the originals of what was adopted as copies, and the memfd."""
    for fd in handed_fds(state) + [int(os.environ.pop(ENV))]:
        try:
            os.close(fd)
        except OSError:
            pass


def go_back(code):
    """From `relaunch`, when Gunicorn returned: a code exec'd forward that exits before its
    first tick execs the code it came from, which adopts the workers again. Returns when
    there is nothing to go back to (or the exec failed: the master then ends)."""
    state = None if _adopted else take_handover()
    if state is None or state["direction"] != "new":
        return
    reason = code if isinstance(code, str) else \
        "the new code exited (code %s) at start, before its first tick; its error is above " \
        "on stderr" % code
    state = dict(state, direction="back", reason=reason)
    os.close(int(os.environ.pop(ENV)))
    sys.stderr.write("gunicorn-graceful: event=upgrade.exec direction=back reason=%r\n"
                     % reason)
    problem = execute(tuple(state["back"]), state)
    sys.stderr.write("gunicorn-graceful: event=upgrade.exec_back_failed reason=%r\n" % problem)


def binds_of(cfg):
    """What decides a code's listeners (compared across an exec as `binds.changed` does)."""
    return json.loads(json.dumps({"address": cfg.address, "certfile": cfg.certfile,
                                  "keyfile": cfg.keyfile}))


def environ_of(cfg):
    """The environment Gunicorn started with (what its USR2 execs with), without the pack's
    hand-over or systemd's socket (`exec_code` adds them back for the exec only)."""
    environ = dict(cfg.env_orig)
    environ.pop(ENV, None)
    environ.pop("NOTIFY_SOCKET", None)
    return environ


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
