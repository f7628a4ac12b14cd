"""The mold: per generation, one process imports the app once and forks that generation's workers.

With `graceful_mold`, the master never imports the application. For each
generation it forks a mold, which enters the generation's release, imports the
app through Gunicorn's own load path (`app.wsgi()`: `chdir`, `pythonpath` and
`wsgi_app` apply), runs `gc.freeze()` so that the workers' reference counting
does not copy the app's pages, and then forks a worker whenever the master
asks. Each worker is forked twice (mold -> a middle process that exits at once
-> the worker) and the master is a child subreaper (a Linux prctl), so the
worker becomes the master's own child: Gunicorn's reaping, heartbeat timeouts
and signals, and the pack's records, work on it unchanged. Shopify's pitchfork
does the same for Ruby.

The master keeps one mold per generation it may still need: the wanted one,
and during a HUP the one a rollback goes back to; any other is stopped. A mold
that fails to import, is not ready within graceful_readiness_timeout, or dies
before it is ready is a boot failure of its generation, which `core` decides
on as for a worker: a rollback during a HUP, a halt at start, a back-off with
`degraded` while others serve. A ready mold that dies is started again at
once, from its generation's release, with one line. A worker the pool asks
for while the mold imports is not forked yet: the pool asks again on the next
tick, and the mold wakes the master when it is ready.

What runs in the mold is `mold_process`. Protocol: a SOCK_SEQPACKET pair, one
JSON message per packet. The mold's first message is {"ready": seconds} or
{"failed": why}. Then the master sends {"age": n, "buckets": [...]} with the
worker's heartbeat file (and its metrics slot) as SCM_RIGHTS, and the middle
process answers {"pid": p} or the mold {"error": why}.

With an in-place upgrade, the molds cross the exec (`export`, `adopt`), and the
check that imported the new code becomes the new generation's mold
(`adopt_check`, `mold_process.run_check`); it was started by the old code, not
forked by a master, and needs nothing of it but what it is sent.

Invariants (checked in simulation, `tests/test_simulation.py`):
- A generation's workers are forked only by its mold, after its import
  succeeded; the master imports no application code.
- At most one mold per generation; a mold no generation can need is stopped.
- The master waits for a mold at most FORK_TIMEOUT, and never for an import.
"""

import json
import os
import signal
import socket
import sys

from gunicorn_graceful import clock, compat, handoff
from gunicorn_graceful.events import emit
from gunicorn_graceful.master import mold_process
from gunicorn_graceful.master.facts import MoldLate
from gunicorn_graceful.master.plan import late
from gunicorn_graceful.master.pool import BootFailure, describe_status, how_it_ended

FORK_TIMEOUT = 5.0       # a mold answers a fork in milliseconds; one that does not is hung
_EARLY_EXITS = 64        # Gunicorn 23: workers reaped before the mold's answer, kept at most


def problem(cfg, pack_settings):
    """Why graceful_mold cannot run with this config, or None (at start and on each HUP)."""
    if not pack_settings.mold:
        return None
    if not sys.platform.startswith("linux"):
        return ("graceful_mold=true needs Linux (the master becomes a child subreaper, a Linux "
                "prctl); this is %s: set graceful_mold = False" % sys.platform)
    if cfg.preload_app:
        return ("graceful_mold=true and preload_app=True: the mold imports the app once per "
                "generation, the master must not; set preload_app = False")
    if cfg.reload:
        return ("graceful_mold=true and reload=True: a worker restarted by the code reloader "
                "would be forked from the mold with the old code; set reload = False (HUP "
                "loads new code through a new mold)")
    return None


def reload_problem(molds, cfg, pack_settings):
    """Why a config loaded on HUP cannot run with the mold (`problem`), or None; a HUP cannot
    turn the mold on or off either: the master's children would change kind."""
    if (molds is not None) != pack_settings.mold:
        return ("graceful_mold changes on a restart or a USR2 only (the running master has it "
                "%s)" % ("on" if molds is not None else "off"))
    return problem(cfg, pack_settings)


class Mold:
    """The master's view of one mold process."""

    def __init__(self, pid, generation, sock):
        self.pid, self.generation, self.sock = pid, generation, sock
        self.started = clock.monotonic()
        self.ready_at = None
        self.failure = None      # the reason it sent before exiting
        self.stopping = None     # why the master stopped it
        self.kill_reason = None  # why the master killed it before it was ready


class Molds:
    """The molds of one master (see the top). It receives the siblings it reads: the pool
    (boot failures, back-off), the rollouts (the generation kept by a HUP), the generations
    (releases) and the in-place upgrade (the generation it keeps)."""

    def __init__(self, arbiter, pool, rollouts, generations, inplace):
        self.arbiter, self.pool, self.rollouts = arbiter, pool, rollouts
        self.generations, self.inplace = generations, inplace
        self.processes = Processes()
        self.by_pid = {}
        self.early_exits = {}

    def of(self, generation):
        """The running mold of `generation` the master has not stopped, or None."""
        return next((m for m in self.by_pid.values()
                     if m.generation == generation and not m.stopping), None)

    def ready(self):
        """Whether the wanted generation's mold can fork now."""
        mold = self.of(self.arbiter.generation)
        return mold is not None and mold.ready_at is not None

    def needed(self):
        generations = {self.arbiter.generation}
        if self.rollouts.current is not None:
            generations.add(self.rollouts.current.previous_generation)
        if self.inplace.new_generation_boots():
            generations.add(self.inplace.kept_generation())
        return generations

    # -- each tick ----------------------------------------------------------------------------

    def late(self):
        """Hear what the molds said; those still importing past graceful_readiness_timeout
        (`facts.MoldLate`: `core` kills them)."""
        for mold in list(self.by_pid.values()):
            self.hear(mold)
        limit, now = self.arbiter.settings.readiness_timeout, clock.monotonic()
        return [MoldLate(mold, limit) for mold in self.by_pid.values()
                if mold.ready_at is None and mold.kill_reason is None
                and late(mold.started, now, limit)]

    def tick(self):
        """Stop the molds no generation needs, and start the wanted generation's (unless the
        pool backs off)."""
        self.stop_unneeded()
        if self.of(self.arbiter.generation) is None \
                and clock.monotonic() >= self.pool.respawn_after:
            self.start(self.arbiter.generation)

    def stop_unneeded(self):
        """Stop each mold no generation can need (also when a HUP's generation completes: the
        old generation retires, its mold with it)."""
        needed = self.needed()
        for mold in list(self.by_pid.values()):
            if mold.generation not in needed and not mold.stopping:
                self.stop(mold, "generation %s is not served" % mold.generation)

    def hear(self, mold):
        if mold.ready_at is not None or mold.failure is not None:
            return
        message = self.processes.poll(mold.sock)
        if message is None:
            return
        if "ready" in message:
            mold.ready_at = clock.monotonic()
            emit(self.arbiter.log, "info", "mold.ready", pid=mold.pid,
                 generation=mold.generation, import_time=message["ready"])
        else:
            mold.failure = message.get("failed") or "the mold exited before it was ready"

    def kill(self, mold, reason):
        """`core`: a mold that is not ready in time hangs in its import; it has forked
        nothing, so SIGKILL loses nothing."""
        mold.kill_reason = reason
        self.processes.signal(mold.pid, signal.SIGKILL)

    # -- starting and stopping ----------------------------------------------------------------

    def start(self, generation):
        """Fork the mold of `generation`; it imports in the background (see `run`)."""
        arbiter = self.arbiter
        release_dir = self.generations.release_of(generation)
        close = [m.sock.fileno() for m in self.by_pid.values()] + \
            [lnr.fileno() for lnr in self.rollouts.held() if lnr not in arbiter.LISTENERS]
        pid, sock = self.processes.start(arbiter, generation, release_dir, close)
        self.by_pid[pid] = Mold(pid, generation, sock)
        emit(arbiter.log, "info", "mold.start", pid=pid, generation=generation,
             release=release_dir or "-")

    def stop(self, mold, reason):
        mold.stopping = reason
        emit(self.arbiter.log, "info", "mold.stop", pid=mold.pid, generation=mold.generation,
             reason=reason)
        self.processes.signal(mold.pid, signal.SIGTERM)

    def stop_all(self):
        """The master stops: so do its molds (a mold importing dies at once)."""
        for mold in list(self.by_pid.values()):
            if not mold.stopping:
                self.stop(mold, "the master stops")

    # -- across an in-place exec ----------------------------------------------------------------

    def export(self):
        """What an in-place exec hands the next code of each mold (`adopt`): the same
        processes, children of the same pid, go on forking for their generations."""
        return [{"pid": m.pid, "generation": m.generation, "sock": m.sock.fileno(),
                 "ready": m.ready_at is not None, "stopping": m.stopping,
                 "kill_reason": m.kill_reason} for m in self.by_pid.values()]

    def adopt(self, handed):
        """The molds the previous code ran (at the first tick: `InPlace.first_tick`)."""
        for item in handed:
            mold = Mold(item["pid"], item["generation"],
                        self.processes.adopt(item["sock"]))
            mold.ready_at = clock.monotonic() if item["ready"] else None
            mold.stopping, mold.kill_reason = item["stopping"], item["kill_reason"]
            self.by_pid[mold.pid] = mold

    def adopt_check(self, check, import_time, generation):
        """The in-place check that passed becomes `generation`'s mold: it is sent what its
        workers need (`mold_process.adopted`). A send fails only when it is gone (a live
        peer's SOCK_SEQPACKET blocks instead): its exit starts a new mold, as any lost one's."""
        mold = Mold(check.pid, generation, check.mold)
        mold.ready_at = clock.monotonic()
        self.by_pid[mold.pid] = mold
        emit(self.arbiter.log, "info", "mold.ready", pid=mold.pid, generation=generation,
             import_time=import_time, source="in-place-check")
        problem = self.processes.serve(mold.sock, self.generations.export(),
                                       self.arbiter.LISTENERS)
        if problem:
            emit(self.arbiter.log, "error", "mold.fork_failed", pid=mold.pid,
                 generation=generation, reason="it could not be sent its listeners: %s"
                 % problem)

    # -- forking a worker -----------------------------------------------------------------------

    def fork(self, worker, slot, buckets):
        """Ask the wanted generation's mold to fork `worker` (the master's Worker object, whose
        heartbeat file the new worker shares); its pid, or None."""
        mold = self.of(self.arbiter.generation)
        answer = self.processes.ask(mold.sock, worker, slot, buckets)
        if answer and "pid" in answer:
            return answer["pid"]
        reason = answer.get("error", "it closed its socket") if answer is not None \
            else "no answer within %ss" % FORK_TIMEOUT
        emit(self.arbiter.log, "error", "mold.fork_failed", pid=mold.pid,
             generation=mold.generation, reason=reason)
        if answer is None:  # hung or gone: a new mold takes its place
            mold.stopping = "it did not answer a fork"
            self.processes.signal(mold.pid, signal.SIGKILL)
        return None

    # -- exits ----------------------------------------------------------------------------------

    def reaped(self, pid, status):
        """Whether `pid` was a mold (then its exit is handled); Gunicorn 23 calls this inside
        its SIGCHLD handler, so it only records."""
        mold = self.by_pid.pop(pid, None)
        if mold is None:
            return False
        self.hear(mold)
        self.processes.close(mold.sock)
        log = self.arbiter.log
        if mold.ready_at is None and (mold.kill_reason or not mold.stopping):
            reason = "mold: %s" % (mold.kill_reason or mold.failure or describe_status(status))
            self.pool.boot_failures.append(BootFailure(
                pid, mold.generation, reason, clock.monotonic() - mold.started,
                os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1))
        elif mold.stopping:
            emit(log, "info", "mold.exit", pid=pid, generation=mold.generation,
                 reason=mold.stopping)
        else:
            emit(log, "error", "mold.lost", pid=pid, generation=mold.generation,
                 reason=how_it_ended(status),
                 action="starting a new mold for generation %s" % mold.generation)
        return True

    def early_exit(self, pid, status):
        """A child that is neither a known worker nor a mold: on Gunicorn 23, a worker reaped
        (in the SIGCHLD handler) before its mold's answer reached the master."""
        if len(self.early_exits) >= _EARLY_EXITS:
            self.early_exits.pop(next(iter(self.early_exits)))
        self.early_exits[pid] = status

    def take_early_exit(self, pid):
        return self.early_exits.pop(pid, None)


class Processes:
    """The molds' process calls: fork a mold, hear it, ask it to fork, signal it (the
    simulation of the master's decisions replaces them, `tests/simulation.py`)."""

    def start(self, arbiter, generation, release_dir, close):
        """Fork a mold that imports in the background (`run`); (its pid, the master's end)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        compat.settle_control_server(arbiter)
        pid = os.fork()
        if pid == 0:
            ours.close()
            mold_process.run(arbiter, theirs, generation, release_dir, close)  # never returns
        theirs.close()
        return pid, ours

    def poll(self, sock):
        return mold_process.receive(sock, 0)

    def adopt(self, fd):
        """The master's end of a mold's socket, handed across an exec: a copy."""
        return socket.socket(fileno=os.dup(fd))

    def serve(self, sock, generations, listeners):
        """Send a passed in-place check the generations (`Generations.export`: its own is
        the wanted one), the master's stdout and stderr, the listeners and the hand-off
        pair; why that failed, or None."""
        fds = [1, 2] + [lnr.fileno() for lnr in listeners] + \
            (handoff.shared.fds() if handoff.shared is not None else [])
        message = {"generations": generations, "listeners": len(listeners)}
        try:
            socket.send_fds(sock, [json.dumps(message).encode()], fds)
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    def ask(self, sock, worker, slot, buckets):
        """A fork of `worker`, its heartbeat file and its slot handed over: the answer, or
        None when none came within FORK_TIMEOUT."""
        fds = [worker.tmp.fileno()] + ([slot.fd] if slot is not None and slot.fd is not None
                                       else [])
        request = json.dumps({"age": worker.age, "buckets": list(buckets)}).encode()
        try:
            socket.send_fds(sock, [request], fds)
            return mold_process.receive(sock, FORK_TIMEOUT)
        except OSError as exc:
            return {"error": str(exc)}

    def signal(self, pid, sig):
        mold_process.signal_pid(pid, sig)

    def close(self, sock):
        sock.close()
