"""A real Gunicorn master started by a test, and the commands a test runs against it.

A server is stopped by the pids this code started, even when a test fails.
"""

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time

import requests

from gunicorn_graceful import compat
from tests.harness.waits import wait_for

# The graceful thread worker drains gracefully only where Gunicorn's gthread worker has the
# stop path it builds on (compat.THREAD_WORKER_STOP_HOOK); elsewhere the tests cover sync.
WORKERS = ["sync", "gthread"] if compat.THREAD_WORKER_STOP_HOOK else ["sync"]
DEFAULT_WORKER = WORKERS[-1]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The console script, as users start it. (`python -m gunicorn` re-executes badly on USR2 in
# stock Gunicorn; the pack fixes that and a test of its own covers it.)
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "gunicorn")
GUNICORN = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "gunicorn"]
MODULE_GUNICORN = [sys.executable, "-m", "gunicorn"]
_SERVER_NUMBERS = itertools.count(1)


def control_socket_args(workdir):
    """Gunicorn >= 27 opens a control socket in ~/.gunicorn by default: give each server its own."""
    if compat.CONTROL_SOCKET:
        return ["--control-socket", os.path.join(workdir, "ctl.sock")]
    return []


def pid_in(path):
    with open(path) as handle:
        return int(handle.read().strip())


def process_alive(pid):
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open("/proc/%s/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def quick_stop(server, during_drain):
    """Gunicorn's quick stop: SIGQUIT to the master, or (`during_drain`) SIGTERM first and,
    once the drain began, SIGQUIT to its one worker, as Gunicorn >= 27's master sends on
    Ctrl-C during a stop. The seconds from the SIGQUIT to the master's exit (status 0)."""
    if during_drain:
        (worker_pid,) = server.children()
        server.signal(signal.SIGTERM)
        server.wait_log(r"event=drain\.start")
        started = time.monotonic()
        os.kill(worker_pid, signal.SIGQUIT)
    else:
        started = time.monotonic()
        server.signal(signal.SIGQUIT)
    assert server.wait_exit(timeout=30) == 0
    return time.monotonic() - started


def cli(*args, timeout=30):
    """Run `gunicorn-graceful ARGS` to its end; the CompletedProcess. In a session of its own:
    a CLI that signals its own process group (a pidfile holding 0) must not take the test
    run with it."""
    return subprocess.run([sys.executable, "-m", "gunicorn_graceful.cli", *args],
                          capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def upgrade_command(server, timeout=60, verb="upgrade", *args):
    """`gunicorn-graceful upgrade` (or `verb`: reload) started in the background;
    communicate() for its end."""
    return subprocess.Popen([sys.executable, "-m", "gunicorn_graceful.cli", verb,
                             "--pidfile", server.pidfile, "--timeout", str(timeout), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def reload_command(server, timeout=60, *args):
    """`gunicorn-graceful reload` started in the background; communicate() for its end."""
    return upgrade_command(server, timeout, "reload", *args)


def usr2_new_master(server, timeout=20):
    """USR2 to the server's master; the new master's pid, once its `.2` pidfile names it."""
    server.signal(signal.SIGUSR2)
    wait_for(lambda: os.path.exists(server.pidfile + ".2"), timeout, "the new master's pidfile")
    return wait_for(lambda: read_pid(server.pidfile + ".2"), timeout, "the new master's pid")


def read_pid(path):
    """The pid in a pidfile, or None while it is missing or half written."""
    try:
        return pid_in(path)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def unwritable(directory):
    """No entry of `directory` can be created or removed (root too: `chattr +i`, EPERM); a
    file given instead cannot be written."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", directory], check=True, timeout=10)
    else:
        os.chmod(directory, 0o555 if os.path.isdir(directory) else 0o444)
    try:
        yield directory
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", directory], check=True, timeout=10)
        else:
            os.chmod(directory, 0o755 if os.path.isdir(directory) else 0o644)


class Server:
    """One Gunicorn master started by this test, in a process group of its own, with its log
    in a file. It binds port 0 unless told a port (a restart on the same one): the kernel
    picks a free port and `port` reads it from Gunicorn's "Listening at" line."""

    def __init__(self, workdir, config, app="testapp:app", worker=DEFAULT_WORKER, workers=2,
                 extra_args=(), env=None, rundir=None, launcher=GUNICORN, port=0,
                 host="127.0.0.1"):
        self.workdir, self.host = workdir, host  # host: 127.0.0.2 and up for another "host"
        self._port = port or None
        rundir = rundir or workdir  # pidfile and log: outside workdir when it is a symlink
        self.pidfile = os.path.join(rundir, "gunicorn.pid")
        self.logpath = os.path.join(rundir, "gunicorn-%s.log" % next(_SERVER_NUMBERS))
        worker_class = {"gthread": "gunicorn_graceful.workers.GracefulThreadWorker",
                        "sync": "gunicorn_graceful.workers.GracefulSyncWorker"}.get(worker, worker)
        self.args = launcher + ["-c", config, "-b", "%s:%s" % (host, port),
                                "-w", str(workers), "-k", worker_class, "--pid", self.pidfile,
                                "--chdir", workdir, "--pythonpath", ROOT,
                                *control_socket_args(workdir),
                                "--threads", "4" if "thread" in worker.lower() else "1",
                                *extra_args, app]
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.update(env or {})
        self.proc = None

    def settings_in_config(self, **values):
        """Before the start: these settings (bind, pidfile) come from the config file, their
        flags dropped, so that a HUP or an in-place USR2 can change them (`set_in_config`)."""
        for name in values:
            at = self.args.index({"bind": "-b", "pidfile": "--pid"}[name])
            del self.args[at:at + 2]
        self.set_in_config(**values)

    def set_in_config(self, **values):
        """Settings appended to the config file: the last assignment wins at the next read."""
        with open(self.args[self.args.index("-c") + 1], "a") as handle:
            for name, value in values.items():
                handle.write("%s = %r\n" % (name, value))

    def start(self):
        self._log = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.args, cwd=self.workdir, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    @property
    def port(self):
        if self._port is None:
            found = self.wait_log(r"Listening at: http://%s:(\d+)" % re.escape(self.host))
            self._port = int(found.group(1))
        return self._port

    @property
    def url(self):
        return "http://%s:%s" % (self.host, self.port)

    def wait_http(self, timeout=30):
        """Wait until the server answers 200 on / (works for stock Gunicorn too)."""
        def answers():
            try:
                return self.get("/", timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_for(answers, timeout, lambda: "%s to answer:\n%s" % (self.url, self.tail()))
        return self

    def start_serving(self, timeout=30):
        self.start()
        self.wait_log("event=master.serving", timeout)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        with open(self.logpath, "r", errors="replace") as handle:
            return handle.read()

    def count(self, pattern):
        return len(re.findall(pattern, self.log()))

    def wait_log(self, pattern, timeout=30, count=1):
        """Wait until `pattern` is logged `count` times; the last match."""
        def seen():
            found = list(re.finditer(pattern, self.log()))
            return found[-1] if len(found) >= count else None
        return wait_for(seen, timeout, lambda: "%r in %s:\n%s"
                        % (pattern, self.logpath, self.tail()))

    def started(self, path):
        """How many requests to `path` the app has begun (see APP_TEMPLATE)."""
        try:
            with open(os.path.join(self.workdir, "started.log")) as handle:
                return handle.read().splitlines().count(path)
        except OSError:
            return 0

    def wait_started(self, path, count=1, timeout=10):
        """Wait until the app has begun `count` requests to `path` (see APP_TEMPLATE)."""
        wait_for(lambda: self.started(path) >= count, timeout,
                 "%s request(s) to %s to reach the app" % (count, path))

    def tail(self, lines=40):
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, sig):
        os.kill(self.pid, sig)

    def masters(self):
        """The masters this server started: the first one, and the new ones USR2 made."""
        pids = {self.pid}
        for path in (self.pidfile, self.pidfile + ".2"):
            try:
                with open(path) as handle:
                    pids.add(int(handle.read().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def children(self):
        """The master's child processes now (its workers), from /proc."""
        try:
            with open("/proc/%s/task/%s/children" % (self.pid, self.pid)) as handle:
                return sorted(int(pid) for pid in handle.read().split())
        except OSError:
            return []

    def wait_exit(self, timeout=60):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("master %s still running after %ss:\n%s"
                                 % (self.pid, timeout, self.tail()))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def get(self, path="/", timeout=10):
        return requests.get(self.url + path, timeout=timeout)

    def version(self):
        return self.get("/").json()["version"]

    def stop(self):
        """Stop what this test started: its process group (the master, every new master a
        USR2 forked, every worker, orphans included): SIGQUIT to the master, then SIGKILL."""
        if self.proc is None:
            return
        if self.alive():
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # the whole group is gone already
            pass
        self.proc.wait(timeout=10)
        self._log.close()
