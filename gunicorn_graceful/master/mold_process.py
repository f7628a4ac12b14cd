"""What runs in a mold (see `mold`): import the app once, freeze it, fork workers on request.

The mold is forked from the master and never returns into the master's code: it
ends with `os._exit`. Each worker is forked twice: the middle process sends the
worker's pid to the master and exits at once, so the worker is reparented to the
master (a child subreaper) before it starts; it waits for that, then runs the
child's half of Gunicorn's `spawn_worker` (`GracefulArbiter.run_worker`) with the
heartbeat file and metrics slot the master made and handed over (SCM_RIGHTS).
"""

import atexit
import gc
import json
import os
import select
import signal
import socket
import sys
import threading
import time

from gunicorn import sock as sock_module, util

from gunicorn_graceful import compat, counters, forked, handoff, release
from gunicorn_graceful.events import emit

CHECK_ENV = "GRACEFUL_MOLD_CHECK_FD"  # the check's end of its socket (`run_check`)
REPARENT_TIMEOUT = 5.0   # a new worker waits this long to become the master's child
PACKET = 65536          # the largest message either side sends


def receive(sock, timeout):
    """One message from `sock` within `timeout` seconds: a dict, {} at end of file, None when
    nothing came."""
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        return None
    data = sock.recv(PACKET)
    return json.loads(data) if data else {}


def send(sock, message):
    sock.send(json.dumps(message).encode())


def signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


_DEFAULT = (signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD)
_IGNORED = (signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
            signal.SIGTTIN, signal.SIGTTOU)


def run(arbiter, sock, generation, release_dir, close):
    """The mold's life, in the process the master forked: import, freeze, serve forks.

    SIGTERM ends it at any time (default action, an import included); SIGINT and
    the master's other signals are ignored (the master stops it itself). It ends
    when the master's end of the socket closes or the master is gone.
    """
    def importing():
        become_mold(arbiter, generation, close)
        load(arbiter, sock, release_dir)

    def serving():
        warn_fork_safety(arbiter, generation, sock)
        serve(arbiter, sock, generation, release_dir)
    live(arbiter, sock, generation, importing, serving)


def run_check(arbiter, sock, generations):
    """An in-place upgrade's check with graceful_mold (`GracefulArbiter.become_check_mold`):
    the new code's own interpreter, started by the old code. It says when the new config
    passed ({"configured": true}: the master execs the new code then, while this imports),
    then imports the new code as any check does, and says so; a failure is the check's,
    which refuses the upgrade. Passed, it stays: once the new code began the generation, it
    is sent the generations, the listeners, the hand-off pair and the master's stdout and
    stderr (`adopted`), and forks that generation's workers. One import."""
    def importing():
        become_mold(arbiter, "checking", ())
        send(sock, {"configured": True})
        wake(arbiter)
        release_dir = release.resolve(arbiter.settings.release_link)
        load(arbiter, sock, release_dir, {"release": release_dir})

    def serving():
        generation, release_dir = adopted(arbiter, sock, generations)
        warn_fork_safety(arbiter, generation, sock)
        serve(arbiter, sock, generation, release_dir)
    live(arbiter, sock, "checking", importing, serving)


def live(arbiter, sock, generation, importing, serving):
    """A mold's life, which must never return into the master's code: its exit code, and
    a failure to import said on the socket (a boot failure of its generation, or the
    in-place check's failure)."""
    code, ready = 0, False
    try:
        importing()
        ready = True
        wake(arbiter)
        serving()
    except BaseException as exc:
        code = 1 if ready else arbiter.APP_LOAD_ERROR
        arbiter.log.error("Exception in the mold of generation %s %s", generation,
                          "while it forked workers" if ready else "while it loaded the app",
                          exc_info=not isinstance(exc, SystemExit))
        if not ready:
            try:
                send(sock, {"failed": load_failure(exc)})
            except OSError:
                pass
    finally:
        os._exit(code)


def load(arbiter, sock, release_dir, said=None):
    """Import the app from `release_dir`, freeze what it built, say ready."""
    began = time.monotonic()
    release.enter(release_dir, arbiter.settings.release_link)
    arbiter.app.wsgi()
    gc.collect()
    gc.freeze()
    send(sock, dict(said or {}, ready=round(time.monotonic() - began, 3)))


def adopted(arbiter, sock, generations):
    """The check passed: once the master began its generation (`Processes.serve`), take
    what it sent (`settle`); (the generation, its release). Bounded by
    graceful_upgrade_timeout and by the master's life."""
    deadline = time.monotonic() + arbiter.settings.upgrade_timeout
    for message, fds in from_master(arbiter.pid, sock, 64, deadline):
        settle(arbiter, message, fds, generations)
        return generations.current, generations.release_of(generations.current)
    raise SystemExit("the master did not adopt the passed check within %ss" %
                     arbiter.settings.upgrade_timeout)


def settle(arbiter, message, fds, generations):
    """The master's generations (into `generations`, the arbiter's: the wanted one is this
    mold's), its stdout and stderr (what this process and its workers print goes where the
    master's output goes: the check's stderr was a file the old code read), the listeners
    and the hand-off pair the workers inherit."""
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    listeners, shared = fds[2:2 + message["listeners"]], fds[2 + message["listeners"]:]
    arbiter.LISTENERS = sock_module.create_sockets(arbiter.cfg, arbiter.log, listeners) \
        if listeners else []
    handoff.open_shared(shared or None)
    for fd in fds[:2] + shared:
        os.close(fd)
    generations.adopt(message["generations"])
    util._setproctitle("mold [%s] generation %s" % (arbiter.proc_name, generations.current))


def load_failure(exc):
    if isinstance(exc, SystemExit):
        return "the app called sys.exit(%r) while it was imported" % (exc.code,)
    return "%s: %s" % (type(exc).__name__, exc)


def become_mold(arbiter, generation, close):
    """Leave the master's part: its signal handlers, its workers' heartbeat files, the
    other molds' sockets and the listeners a HUP dropped."""
    for sig in _DEFAULT:
        signal.signal(sig, signal.SIG_DFL)
    for sig in _IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    util._setproctitle("mold [%s] generation %s" % (arbiter.proc_name, generation))
    for worker in arbiter.WORKERS.values():
        worker.tmp.close()
    arbiter.WORKERS = {}
    for fd in close:
        try:
            os.close(fd)
        except OSError:
            pass


def wake(arbiter):
    """Wake the master's loop, asleep until a signal or a second passes: SIGCHLD, which
    every supported Gunicorn answers with a reap (nothing here) and a tick."""
    signal_pid(arbiter.pid, signal.SIGCHLD)


def warn_fork_safety(arbiter, generation, sock):
    """One WARNING when the import left threads or sockets: a fork copies a lock a thread
    held (a child deadlocks), and every worker would share one database connection."""
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    own = {sock.fileno()} | {lnr.fileno() for lnr in arbiter.LISTENERS} | set(
        handoff.shared.fds() if handoff.shared is not None else ())
    sockets = [fd for fd in open_sockets() if fd not in own]
    if threads or sockets:
        emit(arbiter.log, "warning", "mold.fork_unsafe", pid=os.getpid(), generation=generation,
             threads=",".join(threads) or "-", sockets=",".join(map(str, sockets)) or "-",
             problem="the app's import started threads or opened sockets; a forked worker gets "
                     "a copy without the threads; open them in post_fork or on first use")


def open_sockets():
    """File descriptors of this process that are sockets (Linux: /proc/self/fd)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + name).startswith("socket:"):
                found.append(int(name))
        except OSError:
            pass
    return sorted(found)


def from_master(master, sock, max_fds, deadline=float("inf")):
    """Each (message, descriptors) `master` sends on `sock`, until it closes its end, is
    gone (this process is no longer its child) or `deadline` (monotonic) passes."""
    while os.getppid() == master and time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], 1.0)
        if not readable:
            continue
        data, fds, _, _ = socket.recv_fds(sock, PACKET, max_fds)
        if not data:
            return
        yield json.loads(data), fds


def serve(arbiter, sock, generation, release_dir):
    """Fork a worker per request until the master closes its end or is gone."""
    for request, fds in from_master(arbiter.pid, sock, 2):
        try:
            fork_worker(arbiter, sock, request, fds, release_dir)
        finally:
            for fd in fds:
                os.close(fd)


def fork_worker(arbiter, sock, request, fds, release_dir):
    """Fork twice: the middle process exits at once, so the worker becomes the master's child
    (the master is a subreaper); the middle sends the worker's pid."""
    try:
        middle = os.fork()
    except OSError as exc:
        send(sock, {"error": "the mold could not fork: %s" % exc})
        return
    if middle == 0:
        code = 1
        try:
            pid = os.fork()
            if pid == 0:
                become_worker(arbiter, sock, request, fds, release_dir)  # never returns
            send(sock, {"pid": pid})
            code = 0
        except BaseException as exc:
            send(sock, {"error": "the mold could not fork: %s" % exc})
        finally:
            os._exit(code)
    os.waitpid(middle, 0)


def become_worker(arbiter, sock, request, fds, release_dir):
    """In the new worker: wait to be the master's child, then Gunicorn's own worker start
    (`GracefulArbiter.run_worker`) with the heartbeat file and slot the master made."""
    code = arbiter.WORKER_BOOT_ERROR
    try:
        sock.close()
        deadline = time.monotonic() + REPARENT_TIMEOUT
        while os.getppid() != arbiter.pid:
            if time.monotonic() > deadline:
                os._exit(code)
            time.sleep(0.001)
        arbiter.worker_age = request["age"]
        worker = arbiter.new_worker()  # as the master made its own object of this worker
        worker.tmp.close()
        worker.tmp = compat.inherited_heartbeat(fds[0])
        slot = counters.Slot(request["buckets"], fd=fds[1]) if len(fds) > 1 else None
        forked.prepare(release_dir, (), slot)
        arbiter.run_worker(worker)
        code = 0
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException:
        arbiter.log.exception("Exception in a worker the mold forked, before it started")
    finally:
        atexit._run_exitfuncs()  # what the interpreter's exit runs in a stock worker
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def exit_code(exc):
    """The process exit code of a SystemExit, as the interpreter computes it."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1
