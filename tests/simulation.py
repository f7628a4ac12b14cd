"""A simulated world for the master's real decisions: a fake clock and fake worker processes.

The master under test is the pack's own `GracefulArbiter`, with only Gunicorn's
process calls replaced (`FakeProcesses`: fork, kill, exec, setup, and its stop's
wait loop) and the pack's own calls into the OS given as a `SimSystem` (the
`system.System` port: signals to other masters, the parent, binds, the door, the
in-place check and exec). A fork makes
a `SimWorker` whose state bits live in a real temporary file, as a real
worker's heartbeat file holds them; a signal changes what that simulated process
does next; an exit is handed to the arbiter's own `reaped`. The pool, rollout,
recycling, upgrade, stop, status and phase code is the code that runs in
production, on the clock `clock.use` gives it.

Through the port: the door (a socket filter) never closes, and a bind opens a
`FakeListener`, or fails on an address another service holds. An in-place
upgrade's check is a `FakeCheck` the test ends (with graceful_mold, also a
`SimMold` that says its config passed, then imports, and crosses the exec), and
its exec builds the next code's arbiter from the state the real `InPlace.payload`
wrote, through the real `install` and `inplace.adopt` (`Master.exec_code`); a mold
the exec does not hand over reads the end of its socket and exits.

Fake pids start at 10**8, above any kernel's pid_max: a signal the master code
sends with os.kill itself can never reach a real process.
"""

import collections
import itertools
import json
import os
import signal
import socket
import tempfile
import time

from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.errors import HaltServer
from gunicorn.pidfile import Pidfile

from gunicorn_graceful import clock, hooks, settings, state
from gunicorn_graceful.master import (files, handover, metrics, mold, system,
                                      upgrade_report)
from gunicorn_graceful.master.arbiter import GracefulArbiter
from gunicorn_graceful.master.systemd import Notifier

WORKER_CLASS = "gunicorn_graceful.workers.GracefulSyncWorker"
FIRST_PID = 10 ** 8
GRACEFUL_TIMEOUT = 30
BOOT_ERROR = Arbiter.WORKER_BOOT_ERROR


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def wall(self):
        return 1.7e9 + self.now


class Log:
    """Gunicorn's logger interface; keeps every line, and shows each to `watch` as it is
    written: what an invariant must judge at the moment of a decision, not after the step."""

    def __init__(self):
        self.lines = []
        self.watch = None

    def __getattr__(self, level):
        if level.startswith("_"):
            raise AttributeError(level)
        return lambda msg, *args, **kwargs: self.write(level, msg % args if args else msg)

    def write(self, level, text):
        self.lines.append((level, text))
        if self.watch is not None:
            self.watch(text)

    def reopen_files(self):
        pass

    def events(self, name):
        return [text for _, text in self.lines if text.startswith("event=%s " % name)]


class RecordingNotifier(Notifier):
    """systemd's notify socket, as the messages the master sent."""

    def __init__(self):
        super().__init__("sim")
        self.messages = []

    def send(self, log, **fields):
        self.messages.append(fields)


class HeartbeatFile:
    """A worker's heartbeat file: its state bits in a real file (`state` fstat()s it)."""

    def __init__(self):
        self.file = tempfile.TemporaryFile()
        self.hung = False

    def fileno(self):
        return self.file.fileno()

    def close(self):
        self.file.close()

    def last_update(self):
        """Gunicorn's heartbeat check reads the real clock: a hung worker is far behind it."""
        return float("-inf") if self.hung else time.monotonic()


class SimWorker:
    """What the master holds of a worker (Gunicorn's Worker), plus the simulated process."""

    LAME_DUCK_SIGNAL = signal.SIGUSR2

    def __init__(self, age, code):
        self.age, self.code = age, code
        self.pid = None
        self.tmp = HeartbeatFile()
        self.aborted = False
        self.booted = False
        self.lame_duck = False
        self.exited = False
        self.slot = None            # its metrics slot, once it counted a request


class World:
    """Everything outside the master: processes, the code on disk, the other master."""

    def __init__(self):
        self.clock = FakeClock()
        self.pids = itertools.count(FIRST_PID)
        self.code = "good"          # what a worker forked now imports: good, broken, slow
        self.processes = {}         # pid -> SimWorker, until reaped
        self.exits = collections.deque()   # (pid, wait status) not reaped yet
        self.kills = []             # (time, pid, signal, state bit, hung, term_sent) sent
        self.to_new_master = []     # (pid, signal) the old master sent its new masters
        self.report_fd = None       # the new master's ends of the upgrade channels
        self.ack_fd = None
        self.new_masters = []       # each new master a USR2 really forked
        self.handed_over = None     # the new master the old master acknowledged, if any
        self.molds = {}             # pid -> SimMold
        self.molds_started = 0
        self.mold_forks = []        # (the mold's generation, it was ready, the record's)
        self.busy = {("127.0.0.1", 9999)}   # addresses another service listens on
        self.opened = []            # every listener the master opened
        self.checks = {}            # pid -> FakeCheck: in-place upgrades' checks
        self.exec_fails = False     # the next in-place exec fails (a missing interpreter)
        self.execs = []             # (direction, reason) of each in-place exec
        self.disk_cfg = None        # the config an in-place exec's next code loads (None: same)
        self.kept_cfg = None        # the config of the code an in-place exec replaced
        self.old_master = None      # a new master's old master (`NewMasterMachine`)
        self.old_master_alive = False
        self.to_old_master = []     # the signals the master sent its old master
        self.files_fail = False     # the pidfile's directory refuses every write and removal
        self.refused = set()        # paths whose last write or removal was refused
        self.endpoints = []         # every metrics endpoint a master served

    def parent(self):
        """The master's parent: its old master while that lives, else init."""
        return self.old_master if self.old_master_alive else 1

    def open_listener(self, address, cfg, log):
        """`binds.open_one`: a bind, which fails on an address another service holds."""
        if address in self.busy:
            raise OSError(98, "Address already in use")
        self.opened.append(FakeListener(address))
        return self.opened[-1]

    def fork(self, worker):
        worker.pid = next(self.pids)
        self.processes[worker.pid] = worker
        return worker.pid

    def exit(self, worker, status):
        if not worker.exited:
            worker.exited = True
            self.exits.append((worker.pid, status))

    def exit_mold(self, sim_mold, status):
        if not sim_mold.exited:
            sim_mold.exited = True
            self.exits.append((sim_mold.pid, status))

    def write_file(self, log, path, text):
        """`files.write`, or a refusal while the directory refuses (EROFS, ENOSPC, chattr)."""
        return not self.refuses(log, "write", path) and files.write(log, path, text)

    def remove_file(self, log, path):
        if not self.refuses(log, "remove", path):
            files.remove(log, path)

    def refuses(self, log, action, path):
        """Whether the directory refuses `action` on `path` now (one line when it does)."""
        if not self.files_fail:
            self.refused.discard(path)
            return False
        self.refused.add(path)
        log.warning("event=master.file_failed action=%s path=%s (simulated)" % (action, path))
        return True

    def close_channels(self):
        for fd in (self.report_fd, self.ack_fd):
            if fd is not None:
                os.close(fd)
        self.report_fd = self.ack_fd = None

    def deliver(self, pid, sig, state_bit, term_sent):
        """A signal from the master to a simulated worker: what the real worker does with it."""
        worker = self.processes.get(pid)
        if worker is None or worker.exited:
            return
        self.kills.append((self.clock.now, pid, sig, state_bit, worker.tmp.hung, term_sent))
        if sig == signal.SIGTERM:
            if state_bit == "booting":
                self.exit(worker, 0)   # a booting worker exits at once (os._exit(0))
            else:
                state.mark_draining(worker.tmp)
        elif sig == signal.SIGUSR2:
            worker.lame_duck = True
        elif sig in (signal.SIGKILL, signal.SIGABRT, signal.SIGQUIT, signal.SIGINT):
            self.exit(worker, sig)


class FakeCheck:
    """An in-place upgrade's check of the new code (a subprocess.Popen): the test ends it.
    With graceful_mold, it is also a `SimMold` (`mold`), which the master adopts once it
    passed and the exec went forward."""

    def __init__(self, world, mold=False):
        self.world, self.pid, self.returncode = world, next(world.pids), None
        world.checks[self.pid] = self
        self.mold = None
        if mold:
            self.mold = world.molds[self.pid] = SimMold(self.pid, None, world.code)
            self.mold.state, self.mold.configured = "configuring", False
            world.molds_started += 1

    def kill(self):
        if self.mold is not None:
            self.world.exit_mold(self.mold, int(signal.SIGKILL))
        elif self.returncode is None:
            self.world.exits.append((self.pid, int(signal.SIGKILL)))


class Exec(BaseException):
    """The master's process image was replaced: the old code's call stack ends here."""


class SimMold:
    """A mold process: it imports the code on disk when it was forked (`World.code`)."""

    def __init__(self, pid, generation, code):
        self.pid, self.generation, self.code = pid, generation, code
        self.state = "importing"    # then ready, or failed (a "slow" import never ends)
        self.told = False           # whether the master heard its first message
        self.exited = False
        self.configured = None      # an in-place check: whether it said its config passed

    def fileno(self):
        """Its pid stands for its socket across an in-place exec (`SimMoldProcesses.adopt`):
        fake pids are above any descriptor, so closing one is a harmless EBADF."""
        return self.pid


class SimMoldProcesses(mold.Processes):
    """The molds' process calls (`mold.Processes`), against the `World`."""

    def __init__(self, world, arbiter):
        self.world, self.arbiter = world, arbiter

    def start(self, arbiter, generation, release_dir, close):
        pid = next(self.world.pids)
        self.world.molds[pid] = SimMold(pid, generation, self.world.code)
        self.world.molds_started += 1
        return pid, self.world.molds[pid]

    def poll(self, sim_mold):
        if sim_mold.configured is False and sim_mold.state != "configuring":
            sim_mold.configured = True
            return {"configured": True}
        if sim_mold.told or sim_mold.state in ("configuring", "importing"):
            return None
        sim_mold.told = True
        return {"ready": 0.1, "release": None} if sim_mold.state == "ready" \
            else {"failed": "RuntimeError: broken"}

    def adopt(self, fd):
        return self.world.molds[fd]

    def serve(self, sim_mold, generations, listeners):
        """A passed in-place check is sent its generation (and the listeners)."""
        if sim_mold.exited:
            return "Broken pipe (simulated)"
        sim_mold.generation = generations["generation"]
        return None

    def ask(self, sim_mold, worker, slot, buckets):
        """A fork: the worker runs the code its mold imported (which imported, so good)."""
        if sim_mold.exited:
            return {}
        self.world.mold_forks.append((sim_mold.generation, sim_mold.state == "ready",
                                      self.arbiter.records.next.generation))
        worker.code = "good"
        return {"pid": self.world.fork(worker)}

    def signal(self, pid, sig):
        sim_mold = self.world.molds.get(pid)
        if sim_mold is not None:
            self.world.exit_mold(sim_mold, int(sig))

    def close(self, sim_mold):
        pass


class FakeListener:
    """A listening socket the master holds (what `binds` opens): a pipe stands for the
    socket, so that an in-place exec can hand its descriptor over; a unix socket's family
    (no accept queue to count, as `listeners.reports_queue` says)."""

    sock = None
    family, type = socket.AF_UNIX, socket.SOCK_STREAM

    def __init__(self, address):
        self.cfg_addr, self.closed = address, False
        self.fd, self.other_end = os.pipe()

    def close(self):
        if not self.closed:
            os.close(self.fd)
            os.close(self.other_end)
        self.closed = True

    def fileno(self):
        return self.fd

    def __str__(self):
        return "fake:%s" % (self.cfg_addr,)


class SimSystem(system.System):
    """The master's calls into the OS (`system.System`), against the `World`."""

    def __init__(self, master):
        self.master, self.world = master, master.world

    def signal(self, pid, sig):
        if pid in self.world.new_masters:
            self.world.to_new_master.append((pid, sig))
        elif pid == self.world.old_master:
            self.world.to_old_master.append(sig)

    def parent(self):
        return self.world.parent()

    def signal_at_parent_exit(self, signum):
        return True

    def open_listener(self, address, cfg, log):
        return self.world.open_listener(address, cfg, log)

    def close_door(self, listener):
        return False  # the door is a socket filter: not here

    def become_subreaper(self):
        pass  # the test process must not adopt orphans

    def run_check(self, executable, args, cwd, environ, errors, mold=False):
        return FakeCheck(self.world, mold)

    def execute(self, code, state):
        return self.master.exec_code(code, state)

    def create_sockets(self, cfg, log, fds):
        return self.master.create_sockets(cfg, log, fds)

    def serve_metrics(self, metrics, bind, fd):
        self.world.endpoints.append(FakeEndpoint(metrics, fd))
        return self.world.endpoints[-1]

    def close_in_children(self, fd):
        pass  # no child of the test process is forked from the master's code

    def write_file(self, log, path, text):
        return self.world.write_file(log, path, text)

    def remove_file(self, log, path):
        self.world.remove_file(log, path)


class FakeEndpoint:
    """The metrics endpoint (`endpoint.Endpoint`): its listener a real descriptor, as an
    in-place exec hands it on; a scrape is a call to what the handler serves."""

    def __init__(self, metrics, fd):
        self.metrics = metrics
        self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) if fd is None else fd
        self.paused = self.closed = False

    def fileno(self):
        return self.fd

    def pause(self, limit):
        self.paused = True

    def resume(self):
        self.paused = False

    def scrape(self):
        """The requests counted, as `gunicorn_requests` would say."""
        total, _ = self.metrics.snapshot()
        return sum(total.requests.values())

    def close(self):
        if not self.closed:
            os.close(self.fd)
        self.closed = True


def totals(requests, buckets):
    """What the other master of a USR2 sends (`Metrics.export`): `requests` answered 2xx."""
    return json.dumps({
        "requests": {"2xx": requests}, "buckets": list(buckets),
        "duration": [0.0, requests, [requests] + [0] * len(buckets)], "websockets": 0,
        "drain_cut": 0, "drains": [0.0, [0] * (len(metrics.DRAIN_BUCKETS) + 1)],
        "exits": {}, "recycles": {}, "reloads": []})


class OldMasterEnds:
    """The old master of a new master under test: its ends of the two pipes
    (`upgrade_report`) and what it did, as the world plays it."""

    def __init__(self, pidfile, pid):
        self.channel = upgrade_report.Channel()
        # The new master's ends, as the fork gives it its own copies of them.
        self.value = "%s,%s" % (os.dup(self.channel.write_fd), os.dup(self.channel.ack_read_fd))
        self.channel.after_fork()
        self.pidfile, self.pid = pidfile, pid
        self.acknowledged = self.rolled_back = False
        if pidfile is not None:
            with open(pidfile, "w") as handle:
                handle.write("%s\n" % pid)

    def environ_value(self):
        return self.value

    def heard(self):
        """Every line the new master wrote so far."""
        return self.channel.read()

    def asked(self):
        return self.channel.asks_to_take_over()

    def acknowledge(self, new_master):
        """As `core.hand_over`: the pidfile names the new master, then the answer."""
        if self.pidfile is not None:
            with open(self.pidfile, "w") as handle:
                handle.write("%s\n" % new_master)
        self.channel.acknowledge()
        self.acknowledged = True

    def send_totals(self, requests, buckets):
        """Its metrics once its workers drained: `requests` answered."""
        upgrade_report.send_totals(self.channel.ack_fd, totals(requests, buckets))

    def close(self):
        os.close(self.channel.read_fd)
        os.close(self.channel.ack_fd)


class FakeProcesses(Arbiter):
    """Gunicorn's process calls, against the `World` (the rest of Arbiter is untouched)."""

    world = None

    def spawn_worker(self):
        """Gunicorn's spawn_worker, with a simulated fork."""
        self.worker_age += 1
        worker = SimWorker(self.worker_age, self.world.code)
        self.cfg.pre_fork(self, worker)
        pid = self.world.fork(worker)
        self.WORKERS[pid] = worker
        return pid

    def kill_worker(self, pid, sig):
        worker, record = self.WORKERS.get(pid), self.records.by_pid.get(pid)
        if worker is not None:
            self.world.deliver(pid, sig, state.read(worker.tmp), record and record.term_sent)

    def reexec(self):
        """USR2's fork and exec: a simulated new master that holds the report channel.

        Gunicorn's own refusals come first, as in its reexec."""
        if self.reexec_pid or self.master_pid:
            self.log.warning("USR2 signal ignored. Child exists.")
            return
        write_fd, ack_fd = upgrade_report.fds(self.cfg.env_orig[upgrade_report.ENV])
        self.world.close_channels()
        self.world.report_fd, self.world.ack_fd = os.dup(write_fd), os.dup(ack_fd)
        os.set_blocking(self.world.ack_fd, False)
        self.reexec_pid = next(self.world.pids)
        self.world.new_masters.append(self.reexec_pid)

    def stop(self, graceful=True):
        """Gunicorn's stop, less its wait loop: the listeners close and every worker is told;
        the world's exits are reaped as the main loop turns on (`Master.loop`)."""
        for listener in self.LISTENERS:
            listener.close()
        self.LISTENERS = []
        self.kill_workers(signal.SIGTERM if graceful else signal.SIGQUIT)

    def halt(self, reason=None, exit_status=0):
        """Gunicorn's halt, less its exit: the stop."""
        self.stop()

    def maybe_promote_master(self):
        """Gunicorn's promotion: once its parent is no longer the old master."""
        if self.master_pid and self.master_pid != self.world.parent():
            self.master_pid = 0

    def setup(self, app):
        """Gunicorn's setup, less its logger and environment."""
        self.log = self.log or Log()
        self.app, self.cfg = app, app.cfg
        self.worker_class = self.cfg.worker_class
        self.address = self.cfg.address
        self.num_workers = self.cfg.workers
        self.timeout = self.cfg.timeout
        self.proc_name = self.cfg.proc_name


class SimArbiter(GracefulArbiter, FakeProcesses):
    """The pack's master over simulated processes (GracefulArbiter's `super()` is FakeProcesses)."""

    def reap_workers(self):
        """The world hands exits to `reaped` itself (`Master.loop`): never waitpid here."""

    def new_worker(self):
        """The worker a mold forks next (its code is set by the mold, `SimMoldProcesses.ask`)."""
        return SimWorker(self.worker_age, None)


class SimApp:
    """Gunicorn's application object: its config, read again on each HUP."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.next_cfg = self.next_settings = None

    def reload(self):
        """Gunicorn reads the config again; its install(globals()) sets the pack's settings."""
        if isinstance(self.next_cfg, BaseException):
            raise self.next_cfg
        self.cfg = self.next_cfg
        if self.next_settings is not None:
            settings.set_current(self.next_settings)

    def wsgi(self):
        pass


BIND = ["127.0.0.1:8000"]


def raising_hook(name):
    """A user's hook `name` that raises, chained after the pack's as install(globals())
    chains it (what the master then does: `userhooks`)."""
    def hook(*args):
        raise RuntimeError("user %s failed" % name)
    return hooks.chain(hooks.HOOKS[name], hook)


def make_config(workers, pre_fork=None, bind=BIND, raising=(), pidfile=None):
    """A Gunicorn Config as the pack's template makes it (the pack's hooks installed; the
    user's hooks named in `raising` raise)."""
    cfg = Config()
    cfg.set("bind", bind)
    cfg.set("pidfile", pidfile)
    cfg.set("workers", workers)
    cfg.set("worker_class", WORKER_CLASS)
    cfg.set("graceful_timeout", GRACEFUL_TIMEOUT)
    cfg.set("timeout", 30)
    for name, hook in hooks.HOOKS.items():
        cfg.set(name, hook)
    if pre_fork is not None:
        cfg.set("pre_fork", pre_fork)
    for name in raising:
        cfg.set(name, raising_hook(name))
    return cfg


def dup(fd):
    return None if fd is None else os.dup(fd)


class Master:
    """One simulated master: builds it, runs its main loop step by step, keeps what it did."""

    def __init__(self, workers, pack_settings, old_master=None, pidfile=None):
        """`old_master`: this master is the new master a USR2 of that pid started (its
        channel's other ends are the world's: `OldMasterEnds`); `pidfile`: the config's."""
        self.world = World()
        clock.use(self.world.clock.monotonic, self.world.clock.wall)
        self.system = SimSystem(self)
        os.environ.pop(handover.ENV, None)
        settings.set_current(pack_settings)
        FakeProcesses.world = self.world
        self.old_master = None
        if old_master is not None:
            self.world.old_master, self.world.old_master_alive = old_master, True
            self.old_master = OldMasterEnds(pidfile, old_master)
            os.environ[upgrade_report.ENV] = self.old_master.environ_value()
        cfg = make_config(workers, pidfile=pidfile)
        self.arbiter = self.new_code(cfg, RecordingNotifier(), master_pid=old_master or 0)
        self.arbiter.log.watch = self.note_retirement
        self.retirements = []       # (ready, wanted, line) as each replaced worker was retired
        self.stopped = None         # why the master's main loop ended, once it did
        self.operator_term = False

    def new_code(self, cfg, notifier, log=None, handed=False, master_pid=0):
        """A stock arbiter (with the fake process calls), made a SimArbiter by install as
        on_starting makes the running one a GracefulArbiter; `handed`: the code an in-place
        exec started, which adopts the listeners instead of binding them."""
        arbiter = FakeProcesses(SimApp(cfg))
        arbiter.pid, arbiter.WORKERS, arbiter.log = os.getpid(), {}, log or arbiter.log
        arbiter.master_pid = master_pid  # Gunicorn's start reads it from GUNICORN_PID
        if cfg.pidfile is not None:  # as Gunicorn's start, before its on_starting
            arbiter.pidfile = Pidfile(cfg.pidfile + (".2" if master_pid else ""))
            arbiter.pidfile.create(arbiter.pid)
        arbiter.LISTENERS = [] if handed else [
            self.world.open_listener(a, None, None) for a in arbiter.cfg.address]
        SimArbiter.install(arbiter, hooks.check_config, hooks.worker_class_of, self.system)
        if arbiter.molds is not None:
            arbiter.molds.processes = SimMoldProcesses(self.world, arbiter)
        arbiter.notifier = notifier
        return arbiter

    def exec_code(self, code, state):
        """`System.execute`: the exec of the next code, which adopts what `state` hands it;
        or, with `world.exec_fails`, the exec that fails and returns why."""
        if self.world.exec_fails:
            return "cannot exec %s: No such file or directory (simulated)" % code[0]
        self.world.execs.append((state["direction"], state["reason"]))
        handed = {os.fstat(fd).st_ino for fd in state["listeners"]}
        for listener in self.world.opened:  # not handed over: not inheritable, closed
            if not listener.closed and os.fstat(listener.fd).st_ino not in handed:
                listener.close()
        # The originals stay with the world's processes: the next code gets copies (as the
        # exec gives it the same descriptors), and closes them at its first tick.
        state = dict(state, listeners=[os.dup(fd) for fd in state["listeners"]],
                     workers=[dict(w, heartbeat=os.dup(w["heartbeat"]))
                              for w in state["workers"]],
                     handoff=[os.dup(fd) for fd in state["handoff"] or ()] or None,
                     check=state["check"] and dict(state["check"],
                                                   errors=os.dup(state["check"]["errors"])),
                     metrics=state["metrics"] and dict(state["metrics"],
                                                       fd=dup(state["metrics"]["fd"])))
        handed_molds = {m["pid"] for m in state["molds"]} | (
            {state["check"]["pid"]} if state["check"] else set())
        for sim_mold in self.world.molds.values():  # not handed: the end of its socket
            if sim_mold.pid not in handed_molds:
                self.world.exit_mold(sim_mold, 0)
        memfd = os.memfd_create("simulated-handover", 0)
        os.write(memfd, json.dumps(state).encode())
        os.environ[handover.ENV] = str(memfd)
        old = self.arbiter
        if state["direction"] == "new":  # the next code reads the config on disk
            self.world.kept_cfg = old.app.cfg
            cfg = self.world.disk_cfg or old.app.cfg
        else:
            cfg = self.world.kept_cfg
        try:
            self.next_arbiter = self.new_code(cfg, old.notifier, old.log, handed=True)
        except SystemExit as exc:  # what `relaunch` does when the new code fails at start
            handover.go_back(exc.code, self.system)
            raise AssertionError("going back returned: the master would be gone") from exc
        for pid, adopted in list(self.next_arbiter.WORKERS.items()):  # the same processes
            process = self.world.processes[pid]
            adopted.tmp.close()  # a WorkerTmp over a copy of the process's heartbeat file
            process.age = adopted.age
            self.next_arbiter.WORKERS[pid] = process
        raise Exec()

    def create_sockets(self, cfg, log, fds):
        """`gunicorn.sock.create_sockets` for the fds an exec handed over: the FakeListeners
        they stand for (the copies close, as Gunicorn closes the fds it wraps)."""
        found = []
        for fd in fds:
            identity = os.fstat(fd).st_ino
            os.close(fd)
            found += [lnr for lnr in self.world.opened
                      if not lnr.closed and os.fstat(lnr.fd).st_ino == identity]
        return found

    def close(self):
        clock.use(time.monotonic, time.time)
        FakeProcesses.world = None
        os.environ.pop(handover.PIDFILE_ENV, None)
        fd = os.environ.pop(handover.ENV, None)  # an exec'd code that never ticked
        if fd:
            os.close(int(fd))
        for worker in self.world.processes.values():
            worker.tmp.close()
        for listener in self.world.opened + self.world.endpoints:
            listener.close()
        self.world.close_channels()
        if self.old_master is not None:
            self.old_master.close()
            for fd in (self.arbiter.upgrades.report_fd, self.arbiter.upgrades.ack_fd):
                if fd is not None:  # the new master closes them once it took over
                    os.close(fd)
        os.environ.pop(upgrade_report.ENV, None)

    # -- the main loop, one turn at a time ------------------------------------------------

    def loop(self):
        """One turn of Gunicorn's main loop: reap, promotion, heartbeat timeouts, the pool's
        tick (after the stop began, Gunicorn's stop loop only reaps)."""
        while self.world.exits:
            self.arbiter.reaped(*self.world.exits.popleft())
        if self.stopped:
            return
        try:
            self.arbiter.maybe_promote_master()
            self.arbiter.murder_workers()
            self.arbiter.manage_workers()
        except Exec:            # an in-place upgrade: the next code runs from here on
            self.arbiter = self.next_arbiter
        except StopIteration:   # lame duck over: the stop begins
            self.stop()
        except HaltServer as exc:   # as Gunicorn's loop: its halt, the pack's first
            self.arbiter.halt(exc.reason, exc.exit_status)
            self.stopped = "halt: %s" % exc.reason

    def stop(self):
        """The pack's stop (`GracefulArbiter.stop`, over Gunicorn's stop less its wait)."""
        self.arbiter.stop()
        self.stopped = "stop"

    def held(self):
        """A signal sent after an in-place exec waits for the next code's first tick (the
        exec blocks them: `handover`): that tick runs first."""
        if not self.stopped and self.arbiter.inplace.first_tick_due():
            self.loop()

    def term(self):
        """SIGTERM to the master."""
        self.held()
        try:
            self.arbiter.handle_term()
        except StopIteration:
            self.stop()

    # -- what the invariants read ---------------------------------------------------------

    def live(self):
        """(worker, record) for each worker the master runs."""
        return self.arbiter.pool.workers()

    def ready(self, worker):
        return state.read(worker.tmp) == "ready"

    def note_retirement(self, text):
        """A worker retired as replaced or recycled: how many others served ready then, and
        how many the master wanted (a deferred HUP may change that later in the tick)."""
        if text.startswith("event=worker.retire ") and (
                "reason=replaced" in text or "reason=recycled" in text):
            self.retirements.append((len(self.serving_ready()), self.arbiter.num_workers, text))

    def serving_ready(self):
        """Ready workers the master has not told to stop."""
        return [w for w, r in self.live() if self.ready(w) and not r.retired]

    def kill_grace_met(self, kill):
        """Whether a SIGKILL the master sent is one the invariants allow (see pool)."""
        when, pid, sig, state_bit, hung, term_sent = kill
        if hung or state_bit == state.BOOTING:
            return True
        return term_sent is not None and when - term_sent > GRACEFUL_TIMEOUT

    def phase(self):
        return self.arbiter.phase.value


def booting(master):
    """The workers still booting (not yet exited)."""
    return [w for w, r in master.live() if state.read(w.tmp) == "booting" and not w.exited]

