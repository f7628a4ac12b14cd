"""The contract with Gunicorn: every internal `compat` names is there, as the pack uses it.

These run on every Gunicorn release CI runs. A release that renames or drops an
internal fails here, by name, instead of the pack silently falling back.
"""

import inspect
import os
import re
import stat
import tempfile

import pytest
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.pidfile import Pidfile
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker
from gunicorn.workers.workertmp import WorkerTmp

from gunicorn_graceful import compat


pytestmark = pytest.mark.lines  # every test here goes through internals that differ between lines

def parameters(function):
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("name", sorted(compat.ARBITER_METHODS))
def test_arbiter_method_is_there_with_the_parameters_the_pack_passes(name):
    assert parameters(getattr(Arbiter, name)) == compat.ARBITER_METHODS[name]


@pytest.mark.parametrize("name", sorted(compat.WORKER_METHODS))
def test_worker_method_is_there_with_the_parameters_the_pack_passes(name):
    assert parameters(getattr(Worker, name)) == compat.WORKER_METHODS[name]


def test_arbiter_instance_has_the_attributes_the_pack_reads():
    class App:
        cfg = Config()
    arbiter = Arbiter(App())
    missing = [name for name in compat.ARBITER_ATTRIBUTES if not hasattr(arbiter, name)]
    assert missing == []
    assert arbiter.cfg.env_orig is not None and "args" in arbiter.START_CTX


def test_each_worker_checks_its_parent_with_the_method_the_pack_overrides():
    for worker_class, name in compat.PARENT_CHECK.items():
        source = inspect.getsource(worker_class)
        assert "self.%s()" % name in source or hasattr(worker_class, name), worker_class
    assert parameters(SyncWorker.handle) == compat.SYNC_HANDLE
    assert parameters(SyncWorker.accept) == compat.ACCEPT


def test_the_sync_accept_the_pack_replaces_is_the_one_it_copied():
    """`GracefulSyncWorker.accept` does what Gunicorn's does (less close_on_exec, which
    Python's accept makes redundant) instead of calling it: a line Gunicorn adds there
    must be read before it is missed."""
    body = inspect.getsource(SyncWorker.accept).split(":", 1)[1].split()
    assert body == ["client,", "addr", "=", "listener.accept()", "client.setblocking(1)",
                    "util.close_on_exec(client)", "self.handle(listener,", "client,", "addr)"]


def test_requests_are_handled_and_counted_where_the_pack_hooks_recycling():
    assert parameters(SyncWorker.handle_request) == compat.SYNC_HANDLE_REQUEST
    assert parameters(ThreadWorker.handle_request) == compat.THREAD_HANDLE_REQUEST
    for worker_class in (SyncWorker, ThreadWorker):
        assert "self.nr >= self.max_requests" in inspect.getsource(worker_class), worker_class
    assert "self.max_requests = cfg.max_requests + jitter" in inspect.getsource(Worker.__init__)


def test_a_parsed_request_has_what_the_in_flight_registry_reads():
    """`inflight.Parsed` reads Gunicorn's parsed request (method, path, query) and the peer
    each worker's handle_request gets (sync: addr; gthread: conn.client)."""
    from gunicorn.http.message import Request
    from gunicorn.workers.gthread import TConn
    source = inspect.getsource(Request)
    for name in ("method", "path", "query"):
        assert re.search(r"self\.%s = " % name, source), name
    assert "self.client = client" in inspect.getsource(TConn.__init__)


def test_the_thread_worker_stop_hook_is_whole_when_detected():
    if compat.THREAD_WORKER_STOP_HOOK:
        assert parameters(ThreadWorker.set_accept_enabled) == ["self", "enabled"]
        assert parameters(ThreadWorker.accept) == ["self", "listener"]
        # A connection taken at SIGTERM is served through accept() with a stand-in listener.
        used = set(re.findall(r"listener\.(\w+)\(", inspect.getsource(ThreadWorker.accept)))
        assert used <= {"accept", "getsockname"}, used
        assert "self.set_accept_enabled(False)" in inspect.getsource(ThreadWorker.run)
        assert "self._cap_keepalive(" in inspect.getsource(ThreadWorker.run)
    else:
        assert not ("def set_accept_enabled" in inspect.getsource(ThreadWorker)
                    and "def _cap_keepalive" in inspect.getsource(ThreadWorker))
    if not compat.THREAD_WORKER_ACCEPT_HOOK:  # 23: what was taken is served after the loop
        from gunicorn.workers.gthread import TConn
        assert parameters(TConn.__init__) == ["self", "cfg", "sock", "client", "server"]
        assert parameters(ThreadWorker.handle) == ["self", "conn"]


def test_a_heartbeat_timeout_marks_the_worker_aborted_before_its_sigabrt():
    """`compat.timed_out` reads it: gunicorn_worker_exits_total{reason="timeout"}."""
    source = inspect.getsource(Arbiter.murder_workers)
    assert source.index("worker.aborted = True") < source.index("signal.SIGABRT")


def test_the_kept_alive_connections_attribute_is_the_detected_one():
    assert ("self.%s = " % compat.KEEPALIVE_ATTRIBUTE) in inspect.getsource(ThreadWorker.__init__)


def test_reaping_happens_where_detected():
    if compat.REAPS_IN_SIGNAL_HANDLER:
        assert parameters(Arbiter.handle_chld) == ["self", "sig", "frame"]
        assert "self.reap_workers()" in inspect.getsource(Arbiter.handle_chld)
    else:
        assert parameters(Arbiter.handle_chld) == ["self"]


def test_the_heartbeat_leaves_the_permission_bits_to_the_worker_state():
    assert compat.HEARTBEAT_BY_MTIME

    tmp = WorkerTmp(Config())
    try:
        os.fchmod(tmp.fileno(), stat.S_IXUSR | stat.S_IXGRP)
        tmp.notify()
        assert stat.S_IMODE(os.fstat(tmp.fileno()).st_mode) & (stat.S_IXUSR | stat.S_IXGRP) \
            == stat.S_IXUSR | stat.S_IXGRP
    finally:
        tmp.close()


def test_a_mold_worker_can_share_the_heartbeat_file_the_master_made():
    """`inherited_heartbeat`: a WorkerTmp over another descriptor of the master's file; the
    master sees the worker's heartbeat through its own object."""
    assert compat.WORKER_TMP_FILE
    master = WorkerTmp(Config())
    worker = compat.inherited_heartbeat(os.dup(master.fileno()))
    try:
        os.utime(master.fileno(), (1.0, 1.0))
        worker.notify()
        assert master.last_update() == worker.last_update() > 1.0
    finally:
        worker.close()
        master.close()


def test_the_child_half_of_spawn_worker_is_what_run_worker_repeats():
    """`GracefulArbiter.run_worker` repeats the forked child's half of Gunicorn's
    spawn_worker: the calls it makes there, in that order."""
    source = inspect.getsource(Arbiter.spawn_worker)
    child = source[source.index("# Process Child"):]
    calls = ["_setproctitle", "post_fork(self, worker)", "worker.init_process()",
             "sys.exit(0)", "APP_LOAD_ERROR", "WORKER_BOOT_ERROR", "worker_exit(self, worker)"]
    assert [c in child for c in calls] == [True] * len(calls)
    assert sorted(calls, key=child.index) == calls
    assert compat.WORKER_REUSE_PORT == ("create_sockets" in child)
    if compat.SPAWN_STATS:
        assert "'workers_spawned'" in inspect.getsource(Arbiter.__init__)


def test_the_pidfile_object_has_what_the_pack_sets():
    with tempfile.TemporaryDirectory() as directory:
        pidfile = Pidfile(os.path.join(directory, "x.pid"))
        pidfile.create(os.getpid())
        assert all(hasattr(pidfile, name) for name in compat.PIDFILE_ATTRIBUTES)
        pidfile.unlink()


def test_optional_internals_are_whole_when_detected():
    if compat.CONTROL_SOCKET:
        assert parameters(Arbiter._stop_control_server) == ["self"]
    if compat.DIRTY_ARBITER:
        assert parameters(Arbiter.handle_dirty_arbiter_exit) == ["self", "wpid", "status"]
    if compat.RELOAD_STATS:
        assert "'reloads'" in inspect.getsource(Arbiter.__init__)


def test_native_asgi_worker_has_what_the_graceful_one_overrides_or_refuses_in_one_line():
    """Where Gunicorn has its asgi worker, every method the pack overrides and every
    attribute it reads are there; where not (23), GracefulASGIWorker refuses at start."""
    from gunicorn_graceful.workers import GracefulASGIWorker
    if not compat.NATIVE_ASGI:
        with pytest.raises(SystemExit, match="needs Gunicorn's native asgi worker"):
            GracefulASGIWorker.check_config(Config(), None)
        return
    from gunicorn.workers.gasgi import ASGIWorker
    for name, expected in compat.NATIVE_ASGI_METHODS.items():
        assert parameters(getattr(ASGIWorker, name)) == expected, name
    init = inspect.getsource(ASGIWorker.__init__)
    for attribute in ("self.servers", "self.nr_conns", "self.lifespan", "self.state"):
        assert attribute in init, attribute
    # The app's startup runs before the base's lifespan, in the state dict it hands the app.
    assert "LifespanManager(self.asgi, self.log, self.state)" in inspect.getsource(
        ASGIWorker._serve)


def test_a_listener_for_an_address_keeps_that_address(tmp_path):
    """`binds` keeps a listener across a HUP by the address it was opened for."""
    from gunicorn.config import Config
    cfg = Config()
    for address in (("127.0.0.1", 0), str(tmp_path / "app.sock")):
        listener = compat.listener_class(address)(address, cfg, None)
        try:
            assert listener.cfg_addr == address
        finally:
            listener.close()
