"""Every Gunicorn internal the pack relies on, detected by feature, never by version number.

Each entry names what the pack needs and how it is found. `tests/test_compat.py`
asserts every one of them on the installed Gunicorn, so an internal that a
Gunicorn release renames or drops fails loudly there instead of silently
falling back here. Supported: the releases CI runs (see the README).
"""

import importlib.util
import inspect
import os
import re
import time

from gunicorn import sock
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker
from gunicorn.workers.workertmp import WorkerTmp

# Methods the pack overrides or calls, with the parameters it passes (contract-tested).
ARBITER_METHODS = {
    "setup": ["self", "app"], "manage_workers": ["self"], "reap_workers": ["self"],
    "murder_workers": ["self"], "reload": ["self"], "handle_term": ["self"],
    "handle_int": ["self"], "handle_usr2": ["self"], "maybe_promote_master": ["self"], "reexec": ["self"],
    "halt": ["self", "reason", "exit_status"], "stop": ["self", "graceful"],
    "spawn_worker": ["self"], "kill_worker": ["self", "pid", "sig"], "wakeup": ["self"],
}
ARBITER_ATTRIBUTES = ["WORKERS", "LISTENERS", "reexec_pid", "master_pid", "pidfile", "systemd",
                      "START_CTX", "WORKER_BOOT_ERROR", "APP_LOAD_ERROR", "worker_class",
                      "num_workers", "SIG_QUEUE"]
WORKER_METHODS = {
    "init_process": ["self"], "load_wsgi": ["self"], "init_signals": ["self"], "run": ["self"],
    "handle_exit": ["self", "sig", "frame"], "handle_quit": ["self", "sig", "frame"],
    "handle_abort": ["self", "sig", "frame"],
}
# Called in each worker's run loop; returns False when the master is gone.
PARENT_CHECK = {SyncWorker: "is_parent_alive", ThreadWorker: "is_parent_alive"}
# The sync worker handles one accepted client with `handle(listener, client, addr)`, and each
# request with `handle_request(listener, req, client, addr)`; the thread worker each request
# with `handle_request(req, conn)`. Both count max_requests there against `self.max_requests`.
SYNC_HANDLE = ["self", "listener", "client", "addr"]
ACCEPT = ["self", "listener"]  # both workers' accept(listener), which the pack wraps
SYNC_HANDLE_REQUEST = ["self", "listener", "req", "client", "addr"]
THREAD_HANDLE_REQUEST = ["self", "req", "conn"]
PIDFILE_ATTRIBUTES = ["fname", "pid"]

# Gunicorn >= 27's thread worker stops through `set_accept_enabled(False)`, accepts with
# `accept(listener)`, and keeps kept-alive connections a moment (`_cap_keepalive`) to answer
# them with `Connection: close`: the graceful thread worker hooks its drain there. 24-26 have
# the first two but reset kept-alive clients at stop; 23 has neither. Without all three the
# graceful thread worker runs Gunicorn's own thread-worker shutdown (a WARNING says so).
THREAD_WORKER_STOP_HOOK = hasattr(ThreadWorker, "set_accept_enabled") \
    and hasattr(ThreadWorker, "_cap_keepalive")

# Gunicorn >= 24's thread worker calls set_accept_enabled(False) in its loop when it stops:
# there the graceful thread worker serves what it took from the accept queue through the
# worker's own pool. Gunicorn 23's has no such call: it serves them after its loop.
THREAD_WORKER_ACCEPT_HOOK = hasattr(ThreadWorker, "set_accept_enabled")

# Gunicorn 23 reaps children inside its SIGCHLD handler (handle_chld(sig, frame)); newer
# releases queue the signal (signal_chld) and reap in the main loop. The pack's reap only
# records in either case, and labels a worker before its fork (records.expect).
REAPS_IN_SIGNAL_HANDLER = not hasattr(Arbiter, "signal_chld")

# Gunicorn's heartbeat is the mtime of the worker's tmp file (WorkerTmp.notify uses utime),
# which leaves its permission bits free for the worker's state (see `state`).
HEARTBEAT_BY_MTIME = "utime" in inspect.getsource(WorkerTmp.notify) \
    and "chmod" not in inspect.getsource(WorkerTmp.notify)

# The thread worker's kept-alive connections: `keepalived_conns` (27), `_keep` (23-26).
KEEPALIVE_ATTRIBUTE = "keepalived_conns" \
    if "self.keepalived_conns" in inspect.getsource(ThreadWorker.__init__) else "_keep"

# Gunicorn >= 27: a control socket for gunicornc, started after the first workers.
CONTROL_SOCKET = hasattr(Arbiter, "_start_control_server") \
    and hasattr(Arbiter, "_stop_control_server")

# Gunicorn >= 27: the dirty arbiter is a child too, reaped by its own handler.
DIRTY_ARBITER = hasattr(Arbiter, "handle_dirty_arbiter_exit")

# Gunicorn >= 27 counts reloads in `_stats`, and forks in `_stats['workers_spawned']`.
RELOAD_STATS = "_stats['reloads']" in inspect.getsource(Arbiter.reload)
SPAWN_STATS = "_stats['workers_spawned']" in inspect.getsource(Arbiter.spawn_worker)

# Gunicorn >= 24 opens each worker's own listeners with reuse_port, in the forked child.
WORKER_REUSE_PORT = "create_sockets" in inspect.getsource(Arbiter.spawn_worker)

# WorkerTmp keeps its open file in `_tmp` (every method reads it): a worker a mold forks
# takes the heartbeat file the master made, by descriptor (`inherited_heartbeat`).
WORKER_TMP_FILE = all("self._tmp" in inspect.getsource(getattr(WorkerTmp, name))
                      for name in ("notify", "last_update", "fileno", "close"))

# Gunicorn >= 24: its native asyncio worker (`gunicorn.workers.gasgi.ASGIWorker`), which the
# graceful one extends: it keeps its asyncio servers in `servers`, counts connections in
# `nr_conns`, runs the app's lifespan through `lifespan`, stops through `_shutdown()` and gets
# SIGTERM through `handle_exit_signal()` (contract-tested where it exists).
NATIVE_ASGI = importlib.util.find_spec("gunicorn.workers.gasgi") is not None
NATIVE_ASGI_METHODS = {"_shutdown": ["self"], "handle_exit_signal": ["self"],
                       "handle_quit_signal": ["self"], "_serve": ["self"],
                       "load_wsgi": ["self"]}


def native_asgi_counts_connections():
    """Gunicorn 25's asgi protocol returns early from `connection_lost` once `_closed` is
    set, which its own close of a connection does first: `nr_conns` then never goes down.
    24, 26 and 27 count right. (A function, asked by the asgi worker only: the answer
    imports gunicorn.asgi and asyncio, megabytes a WSGI master and its workers need not
    hold.)"""
    if not NATIVE_ASGI:
        return False
    from gunicorn.asgi.protocol import ASGIProtocol
    lost = inspect.getsource(ASGIProtocol.connection_lost)
    return not re.search(r"if self\._closed:\s+return", lost)


def native_websocket_hears_close_reply():
    """Gunicorn >= 26's asgi WebSocket keeps reading after the server's close frame until the
    client answers it, and tells the app `websocket.disconnect`. 24 and 25 stop reading at
    once, so a handler waiting in receive() would wait until the drain's cut: the guard
    tells it the client left (`asgi.Socket`). (Asked by the asgi worker only, as above.)"""
    if not NATIVE_ASGI:
        return False
    from gunicorn.asgi.websocket import WebSocketProtocol
    return "_close_received" in inspect.getsource(WebSocketProtocol)


def timed_out(worker):
    """Whether Gunicorn's heartbeat timeout aborted `worker` (`murder_workers` sets
    `aborted` before its SIGABRT; contract-tested)."""
    return bool(getattr(worker, "aborted", False))


def listener_class(address):
    """Gunicorn's listener class for a configured address (`sock._sock_type`), whose objects
    keep that address in `cfg_addr` (contract-tested): `binds` opens new ones on a HUP."""
    return sock._sock_type(address)


def idle_connections(worker):
    """How many kept-alive connections a thread worker holds between requests."""
    return len(getattr(worker, KEEPALIVE_ATTRIBUTE, None) or ())


def is_dirty_arbiter(arbiter, pid):
    return DIRTY_ARBITER and pid == arbiter.dirty_arbiter_pid


def count_reload(arbiter):
    """Gunicorn's own reload counter, which the pack's reload must keep counting."""
    if RELOAD_STATS:
        arbiter._stats["reloads"] += 1


def count_spawn(arbiter):
    """Gunicorn's own fork counter, for a worker a mold forked."""
    if SPAWN_STATS:
        arbiter._stats["workers_spawned"] += 1


def inherited_heartbeat(fd):
    """A WorkerTmp over the heartbeat file descriptor `fd` the master made (see above)."""
    tmp = WorkerTmp.__new__(WorkerTmp)
    tmp._tmp = os.fdopen(fd, "w+b", 0)
    return tmp


def rebind_control_socket(arbiter):
    """Bind the control socket path to this master again (a new master of it took the path)."""
    if CONTROL_SOCKET and arbiter._control_server is not None:
        Arbiter._stop_control_server(arbiter)
        arbiter._start_control_server()


def settle_control_server(arbiter, limit=2.0):
    """Before a fork: wait (at most `limit` seconds) until the control server listens.

    Gunicorn stops its control server's thread before every fork and starts it
    again after. Gunicorn 25's stop signals the thread only once it listens
    (`_server` set); a fork that comes sooner waits out a 2 s join and leaves the
    thread running, holding its socket (Gunicorn #3648). 26 waits for it itself
    (`_ready`); here the pack does, for the lines whose server has no `_ready`.
    """
    server = getattr(arbiter, "_control_server", None) if CONTROL_SOCKET else None
    thread = getattr(server, "_thread", None)
    if thread is None or hasattr(server, "_ready"):
        return
    deadline = time.monotonic() + limit
    while getattr(server, "_server", None) is None and thread.is_alive() \
            and time.monotonic() < deadline:
        time.sleep(0.002)


def report_metrics(arbiter):
    """The metric lines stock `manage_workers` logs (the worker gauge; on 27 the backlog)."""
    count = len(arbiter.WORKERS)
    if getattr(arbiter, "_last_logged_active_worker_count", count) != count:
        arbiter._last_logged_active_worker_count = count
        arbiter.log.debug("{0} workers".format(count), extra={
            "metric": "gunicorn.workers", "value": count, "mtype": "gauge"})
    if getattr(arbiter.cfg, "enable_backlog_metric", False):
        backlog = sum(lnr.get_backlog() or 0 for lnr in arbiter.LISTENERS)
        if backlog >= 0:
            arbiter.log.debug("socket backlog: {0}".format(backlog), extra={
                "metric": "gunicorn.backlog", "value": backlog, "mtype": "histogram"})


def take_queued_signals(arbiter):
    """The signals Gunicorn's handlers queued in memory that its loop has not handled yet,
    leaving the queue empty: an exec would throw them away. Gunicorn 23's queue is a list;
    later ones a SimpleQueue that also carries wake-up requests (not signals)."""
    queued, taken = arbiter.SIG_QUEUE, []
    if isinstance(queued, list):
        taken, queued[:] = list(queued), []
    else:
        while not queued.empty():
            taken.append(queued.get_nowait())
    wakeup = getattr(arbiter, "WAKEUP_REQUEST", None)
    return [sig for sig in taken if sig != wakeup]


def queue_signals(arbiter, signals):
    """Put `signals` back in Gunicorn's queue, in order, and wake its loop to handle them."""
    for sig in signals:
        if isinstance(arbiter.SIG_QUEUE, list):
            arbiter.SIG_QUEUE.append(sig)
        else:
            arbiter.SIG_QUEUE.put_nowait(sig)
    if signals:
        arbiter.wakeup()
