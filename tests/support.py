"""Real Gunicorn servers and real HTTP load for the tests.

Every wait polls a condition against a deadline; every load loop is bounded in
time and count; traffic goes to 127.0.0.1 only; a server is stopped by the
pids this code started, even when a test fails.
"""

import asyncio
import collections
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import requests

from gunicorn_graceful import compat

# The graceful thread worker drains gracefully only where Gunicorn's gthread worker has the
# stop path it builds on (compat.THREAD_WORKER_STOP_HOOK); elsewhere the tests cover sync.
WORKERS = ["sync", "gthread"] if compat.THREAD_WORKER_STOP_HOOK else ["sync"]
DEFAULT_WORKER = WORKERS[-1]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The console script, as users start it. (`python -m gunicorn` re-executes badly on USR2 in
# stock Gunicorn; the pack fixes that and a test of its own covers it.)
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "gunicorn")
GUNICORN = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "gunicorn"]
MODULE_GUNICORN = [sys.executable, "-m", "gunicorn"]
POLL = 0.05
_SERVER_NUMBERS = itertools.count(1)

APP_TEMPLATE = '''\
import os
import time
{before}
from examples.flask_app import create_app

_app = create_app({version!r})
_started = os.path.join(os.path.dirname(os.path.abspath(__file__)), "started.log")
_grown = []  # /grow?mib=N keeps N MiB, written so that they are resident


def app(environ, start_response):
    # Tests poll this file to know a request reached the app, instead of sleeping.
    if {record}:
        with open(_started, "a") as handle:
            handle.write(environ["PATH_INFO"] + "\\n")
    if environ["PATH_INFO"] == "/grow":
        _grown.append(b"x" * (int(environ["QUERY_STRING"].partition("=")[2]) << 20))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"grown\\n"]
    if environ["PATH_INFO"] == "/healthz" and {healthz} != 200:
        start_response("{healthz} Not Ready", [("Content-Type", "text/plain")])
        return [b"not ready\\n"]
    return _app(environ, start_response)
'''


ASGI_APP = '''\
import os
import time
{before}
os.environ["APP_VERSION"] = {version!r}
from examples.asgi_app import app as _app

_started = os.path.join(os.path.dirname(os.path.abspath(__file__)), "started.log")


async def app(scope, receive, send):
    # Tests poll this file to know a request reached the app, instead of sleeping.
    if {record} and scope["type"] != "lifespan":
        with open(_started, "a") as handle:
            handle.write(scope["path"] + "\\n")
    if scope["type"] == "http" and scope["path"] == "/block":
        time.sleep(2)  # blocks the event loop: new connections wait in the listen queue
    await _app(scope, receive, send)
'''


def make_release(root, name, **app):
    """releases/<name> under `root`, holding the test app as release `name`."""
    path = os.path.join(root, "releases", name)
    os.makedirs(path)
    write_app(path, name, **app)
    return path


def point_link(link, target):
    """Switch the deploy symlink atomically, as deploy tools do."""
    tmp = link + ".new"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def write_asgi_app(directory, version, before="", record=True):
    """The example Starlette app as release `version` (APP_VERSION), recording what starts."""
    with open(os.path.join(directory, "asgiapp.py"), "w") as handle:
        handle.write(ASGI_APP.format(version=version, before=before, record=record))


def control_socket_args(workdir):
    """Gunicorn >= 27 opens a control socket in ~/.gunicorn by default: give each server its own."""
    if compat.CONTROL_SOCKET:
        return ["--control-socket", os.path.join(workdir, "ctl.sock")]
    return []


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout, what):
    """Poll `condition` until it returns a true value; fail the test with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL)
    raise AssertionError("timed out after %ss waiting for %s" % (
        timeout, what() if callable(what) else what))


def write_app(directory, version, before="", healthz=200, record=True):
    """A test app module (`testapp:app`) serving `version`; `before` runs at import.

    `record` appends each request's path to started.log (see `Server.wait_started`).
    """
    with open(os.path.join(directory, "testapp.py"), "w") as handle:
        handle.write(APP_TEMPLATE.format(before=before, version=version, healthz=healthz,
                                         record=record))


def write_config(directory, name="gunicorn_conf.py", body=""):
    path = os.path.join(directory, name)
    with open(path, "w") as handle:
        handle.write("from gunicorn_graceful.conf import *  # noqa\n")
        handle.write(body)
        handle.write("\ninstall(globals())\n")
    return path


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
    """Run `gunicorn-graceful ARGS` to its end; the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "gunicorn_graceful.cli", *args],
                          capture_output=True, text=True, timeout=timeout)


def upgrade_command(server, timeout=60):
    """`gunicorn-graceful upgrade` started in the background; communicate() for its end."""
    return subprocess.Popen([sys.executable, "-m", "gunicorn_graceful.cli", "upgrade",
                             "--pidfile", server.pidfile, "--timeout", str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


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
    """No entry of `directory` can be created or removed (root too: `chattr +i`, EPERM)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", directory], check=True, timeout=10)
    else:
        os.chmod(directory, 0o555)
    try:
        yield directory
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", directory], check=True, timeout=10)
        else:
            os.chmod(directory, 0o755)


class Watcher:
    """A bounded background loop, run as a context manager: `step()` every `period` seconds
    for at most `limit` seconds, until the block ends or `step()` returns False."""

    period, limit = 0.05, 300

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.step() is False:
                return
            self._stop.wait(self.period)

    def step(self):
        raise NotImplementedError

    def close(self):
        """After the loop stopped."""

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.close()


class NotifySocket(Watcher):
    """A fake systemd notify socket that collects every message a master sends."""

    period = 0  # recv waits by itself

    def __init__(self, directory):
        super().__init__()
        self.path = os.path.join(directory, "notify.sock")
        self.messages = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)

    def step(self):
        try:
            self.messages.append(self._sock.recv(4096).decode())
        except socket.timeout:
            return True
        except OSError:
            return False
        return True

    def close(self):
        self._sock.close()

    def wait(self, text, timeout=30):
        """The first message containing `text`."""
        def found():
            return next((m for m in list(self.messages) if text in m), None)
        return wait_for(found, timeout, lambda: "%r among systemd messages %s"
                        % (text, self.messages))


class Server:
    """One Gunicorn master started by this test, in a process group of its own, with its log
    in a file. It binds port 0 unless told a port (a restart on the same one): the kernel
    picks a free port and `port` reads it from Gunicorn's "Listening at" line."""

    def __init__(self, workdir, config, app="testapp:app", worker=DEFAULT_WORKER, workers=2,
                 extra_args=(), env=None, rundir=None, launcher=GUNICORN, port=0):
        self.workdir = workdir
        self._port = port or None
        rundir = rundir or workdir  # pidfile and log: outside workdir when it is a symlink
        self.pidfile = os.path.join(rundir, "gunicorn.pid")
        self.logpath = os.path.join(rundir, "gunicorn-%s.log" % next(_SERVER_NUMBERS))
        worker_class = {"gthread": "gunicorn_graceful.workers.GracefulThreadWorker",
                        "sync": "gunicorn_graceful.workers.GracefulSyncWorker"}.get(worker, worker)
        self.args = launcher + ["-c", config, "-b", "127.0.0.1:%s" % port,
                                "-w", str(workers), "-k", worker_class, "--pid", self.pidfile,
                                "--chdir", workdir, "--pythonpath", ROOT,
                                *control_socket_args(workdir),
                                "--threads", "4" if "thread" in worker.lower() else "1",
                                *extra_args, app]
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.update(env or {})
        self.proc = None

    def start(self):
        self._log = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.args, cwd=self.workdir, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    @property
    def port(self):
        if self._port is None:
            found = self.wait_log(r"Listening at: http://127\.0\.0\.1:(\d+)")
            self._port = int(found.group(1))
        return self._port

    @property
    def url(self):
        return "http://127.0.0.1:%s" % self.port

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


def terminate(proc):
    """Stop a helper process this test started (HAProxy, Prometheus): SIGTERM, then SIGKILL
    after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


HAPROXY_CONFIG = """\
global
    maxconn 2000
    stats socket {stats} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
    option http-keep-alive
frontend web
    bind 127.0.0.1:{port}
    default_backend app
backend app
    balance roundrobin
    option httpchk GET {health}
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}
"""


HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
# tests/run.sh installs HAProxy when it runs as root; otherwise its tests skip, saying so.
HAPROXY_MISSING = None if os.path.exists(HAPROXY) or os.geteuid() == 0 else (
    "haproxy is not installed and tests/run.sh needs root to install it (apt-get install haproxy)")


class HAProxy:
    """A real HAProxy on 127.0.0.1 in front of `backends` ({name: port}), with active checks.

    Its frontend port comes from `free_port` (HAProxy does not report a port it picked).
    """

    def __init__(self, workdir, backends, health="/health"):
        self.binary = HAPROXY
        self.port = free_port()
        self.url = "http://127.0.0.1:%s" % self.port
        self.stats = os.path.join(workdir, "haproxy.sock")
        self.config = os.path.join(workdir, "haproxy.cfg")
        self.logpath = os.path.join(workdir, "haproxy.log")
        servers = "\n".join("    server %s 127.0.0.1:%s check" % item for item in backends.items())
        with open(self.config, "w") as handle:
            handle.write(HAPROXY_CONFIG.format(stats=self.stats, port=self.port, health=health,
                                               servers=servers))
        self.proc = None

    def start(self):
        if not os.path.exists(self.binary):
            raise AssertionError("haproxy is not installed: run the README test command "
                                 "(bash tests/run.sh), which installs it")
        self._log = open(self.logpath, "ab")
        self.proc = subprocess.Popen([self.binary, "-f", self.config, "-db"],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def status(self, name):
        """The check status HAProxy gives backend server `name` (UP, DOWN, ...), or None."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(self.stats)
                sock.sendall(b"show stat\n")
                data = b""
                for _ in range(64):  # the stats of two servers fit in one or two reads
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return None
        for line in data.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "app" and fields[1] == name:
                return fields[17].split()[0]
        return None

    def wait_status(self, name, status, timeout=20):
        wait_for(lambda: self.status(name) == status, timeout,
                 lambda: "haproxy to see %s %s (it says %s)" % (name, status, self.status(name)))

    def stop(self):
        terminate(self.proc)
        if self.proc is not None:
            self._log.close()


PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
# tests/run.sh installs Prometheus when it runs as root; otherwise its test skips, saying so.
PROMETHEUS_MISSING = None if os.path.exists(PROMETHEUS) or os.geteuid() == 0 else (
    "prometheus is not installed and tests/run.sh needs root to install it "
    "(apt-get install prometheus)")
PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: gunicorn
    static_configs:
      - targets: ['{target}']
"""


class Prometheus:
    """A real Prometheus on 127.0.0.1 scraping `target` ("host:port") every second, with
    its storage in `workdir`; `query` asks its HTTP API."""

    def __init__(self, workdir, target):
        self.port = free_port()
        self.config = os.path.join(workdir, "prometheus.yml")
        self.logpath = os.path.join(workdir, "prometheus.log")
        with open(self.config, "w") as handle:
            handle.write(PROMETHEUS_CONFIG.format(target=target))
        self.args = [PROMETHEUS, "--config.file=" + self.config,
                     "--storage.tsdb.path=" + os.path.join(workdir, "prometheus-data"),
                     "--web.listen-address=127.0.0.1:%d" % self.port]
        self.proc = None

    def start(self):
        if not os.path.exists(PROMETHEUS):
            raise AssertionError("prometheus is not installed: run the README test command "
                                 "(bash tests/run.sh), which installs it")
        self._log = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._ready, 30, lambda: "prometheus ready:\n" + self.tail())
        return self

    def _ready(self):
        try:
            return requests.get("http://127.0.0.1:%d/-/ready" % self.port,
                                timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def query(self, promql):
        """The instant query's result: a list of (labels, value) pairs."""
        answer = requests.get("http://127.0.0.1:%d/api/v1/query" % self.port,
                              params={"query": promql}, timeout=5).json()
        assert answer["status"] == "success", answer
        return [(item["metric"], float(item["value"][1])) for item in answer["data"]["result"]]

    def tail(self, lines=20):
        with open(self.logpath, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])

    def stop(self):
        terminate(self.proc)
        if self.proc is not None:
            self._log.close()


Result = collections.namedtuple("Result", "started ended ok kind status version path")


def classify(exc):
    """Name a client failure: refused and connect timeouts happen before a request was sent."""
    text = repr(exc)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect_timeout"
    if "ConnectionRefusedError" in text or "Connection refused" in text:
        return "refused"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout"
    if "ConnectionResetError" in text or "Connection reset" in text:
        return "reset"
    if "RemoteDisconnected" in text or "BadStatusLine" in text:
        return "disconnected"
    return "other:" + type(exc).__name__


class Load:
    """A closed-loop load: half the threads on keep-alive sessions, half on new connections.

    No retries anywhere (requests' default adapter retries nothing). Bounded:
    it stops at `stop()`, after `max_seconds`, or after `max_requests`.
    """

    def __init__(self, url, threads=4, path="/", max_seconds=60, max_requests=200000,
                 timeout=30, slow_threads=0, slow_path="/slow?seconds=0.5"):
        self.url, self.path, self.timeout = url, path, timeout
        self.slow_path = slow_path
        self.results = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.max_requests = max_requests
        self.threads = [threading.Thread(target=self._run, args=(i, i >= threads), daemon=True)
                        for i in range(threads + slow_threads)]

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def _one(self, session, path):
        started = time.monotonic()
        try:
            if session is not None:
                response = session.get(self.url + path, timeout=(5, self.timeout))
            else:
                response = requests.get(self.url + path, timeout=(5, self.timeout),
                                        headers={"Connection": "close"})
            version = None
            if response.status_code == 200 and response.headers.get(
                    "Content-Type", "").startswith("application/json"):
                version = response.json().get("version")
            ok = response.status_code < 500
            return Result(started, time.monotonic(), ok, "ok" if ok else "5xx",
                          response.status_code, version, path)
        except requests.RequestException as exc:
            return Result(started, time.monotonic(), False, classify(exc), None, None, path)

    def _run(self, index, slow):
        """Even threads keep a session alive, odd ones open a connection per request.

        Slow threads only ask for `slow_path`: slow requests are always in
        flight, and the fast threads still show every gap in service.
        """
        session = requests.Session() if index % 2 == 0 else None
        path = self.slow_path if slow else self.path
        try:
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                result = self._one(session, path)
                with self._lock:
                    self.results.append(result)
                    if len(self.results) >= self.max_requests:
                        return
        finally:
            if session is not None:
                session.close()

    def wait_count(self, count, timeout=30):
        wait_for(lambda: len(self.results) >= count, timeout, "%s load requests" % count)

    def stop(self):
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout=self.timeout + 10)
        return self.results

    def failures(self, allow=()):
        return [r for r in self.results if not r.ok and r.kind not in allow]

    def summary(self):
        kinds = collections.Counter(r.kind for r in self.results)
        versions = collections.Counter(r.version for r in self.results if r.ok)
        return "requests=%s %s versions=%s" % (len(self.results), dict(kinds), dict(versions))


class Sockets:
    """WebSocket clients in a thread of their own: open, echo once, record the close code."""

    def __init__(self, url, count):
        self.url, self.count = url.replace("http://", "ws://") + "/ws", count
        self.echoes, self.codes = [], []
        self.opened = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._all()), daemon=True)

    def start(self):
        self.thread.start()
        assert self.opened.wait(15), "WebSockets did not open"
        return self

    async def _all(self):
        await asyncio.gather(*(self._one() for _ in range(self.count)))

    async def _one(self):
        # Imported here: this module is also the deploy demo's load generator, and the
        # [examples] install it runs under has no websockets.
        import websockets
        async with websockets.connect(self.url, open_timeout=10, close_timeout=5) as ws:
            await ws.send("hello")
            self.echoes.append(await asyncio.wait_for(ws.recv(), 10))
            if len(self.echoes) == self.count:
                self.opened.set()
            try:
                await asyncio.wait_for(ws.recv(), 60)
            except websockets.ConnectionClosed as closed:
                self.codes.append((closed.rcvd.code if closed.rcvd else None, time.monotonic()))

    def join(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "WebSocket clients still open"
        return [code for code, _ in self.codes]
