"""The test harness: real Gunicorn servers, real HTTP load, real peers (HAProxy, Prometheus).

Every wait polls a condition against a deadline; every load loop is bounded in
time and count; traffic goes to 127.0.0.1 only; a server is stopped by the
pids this code started, even when a test fails. The tests and `bench/` import it
as `tests.harness` (the repository root is on the path under pytest and `python -m`).
"""

from tests.harness.apps import (make_release, point_link, write_app, write_asgi_app,
                                write_config)
from tests.harness.load import Load, Result, Sockets, classify, under_load
from tests.harness.peers import (HAPROXY_MISSING, PROMETHEUS_MISSING, SUPERVISORD_MISSING,
                                 TINI_MISSING, HAProxy, Prometheus, Supervisord, terminate)
from tests.harness.server import (DEFAULT_WORKER, GUNICORN, MODULE_GUNICORN, ROOT, WORKERS,
                                  Server, cli, control_socket_args, pid_in, process_alive,
                                  quick_stop, read_pid, reload_command, unwritable,
                                  upgrade_command,
                                  usr2_new_master)
from tests.harness.waits import POLL, free_port, wait_for
from tests.harness.watchers import NotifySocket, Watcher

__all__ = ["DEFAULT_WORKER", "GUNICORN", "HAPROXY_MISSING", "MODULE_GUNICORN", "POLL",
           "PROMETHEUS_MISSING", "ROOT", "SUPERVISORD_MISSING", "TINI_MISSING", "WORKERS",
           "HAProxy", "Load", "NotifySocket", "Prometheus", "Result", "Server", "Sockets",
           "Supervisord", "Watcher", "classify", "cli",
           "control_socket_args", "free_port", "make_release", "pid_in", "point_link",
           "process_alive", "quick_stop", "read_pid", "reload_command", "terminate",
           "under_load", "unwritable",
           "upgrade_command", "usr2_new_master", "wait_for", "write_app", "write_asgi_app",
           "write_config"]
