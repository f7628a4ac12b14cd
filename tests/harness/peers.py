"""Real peers run beside a server: HAProxy in front of it, Prometheus scraping it."""

import os
import shutil
import socket
import subprocess

import requests

from tests.harness.waits import free_port, wait_for


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
    """A real HAProxy on 127.0.0.1 in front of `backends` ({name: port, or "host:port"}), with
    active checks.

    Its frontend port comes from `free_port` (HAProxy does not report a port it picked).
    """

    def __init__(self, workdir, backends, health="/health"):
        self.binary = HAPROXY
        self.port = free_port()
        self.url = "http://127.0.0.1:%s" % self.port
        self.stats = os.path.join(workdir, "haproxy.sock")
        self.config = os.path.join(workdir, "haproxy.cfg")
        self.logpath = os.path.join(workdir, "haproxy.log")
        servers = "\n".join("    server %s %s check" % (name, address if ":" in str(address)
                                                        else "127.0.0.1:%s" % address)
                             for name, address in backends.items())
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


SUPERVISORD_CONFIG = """\
[unix_http_server]
file={here}/supervisor.sock
[supervisord]
nodaemon=true
logfile={here}/supervisord.log
pidfile={here}/supervisord.pid
childlogdir={here}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{here}/supervisor.sock
[program:app]
command={command}
directory={directory}
environment={environment}
stopsignal=TERM
stopwaitsecs=40
startsecs=1
autorestart=true
redirect_stderr=true
stdout_logfile={log}
"""

# tests/run.sh installs supervisor and tini as it does HAProxy (Debian's packages).
SUPERVISORD_MISSING = None if shutil.which("supervisord") or os.geteuid() == 0 else (
    "supervisord is not installed and tests/run.sh needs root to install it "
    "(apt-get install supervisor)")
TINI_MISSING = None if shutil.which("tini") or os.geteuid() == 0 else (
    "tini is not installed and tests/run.sh needs root to install it (apt-get install tini)")


class Supervisord:
    """supervisord (no daemon) running one program, `app`: a server's command line."""

    def __init__(self, workdir, server):
        self.here = os.path.join(workdir, "supervisor")
        os.makedirs(self.here, exist_ok=True)
        self.config = os.path.join(self.here, "supervisord.conf")
        environment = ",".join('%s="%s"' % (key, value.replace('"', ""))
                               for key, value in server.env.items()
                               if key in ("PATH", "PYTHONUNBUFFERED", "HOME"))
        with open(self.config, "w") as handle:
            handle.write(SUPERVISORD_CONFIG.format(
                here=self.here, command=" ".join(server.args), directory=server.workdir,
                environment=environment, log=server.logpath))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["supervisord", "-c", self.config], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: self.status()[0] == "RUNNING", 30,
                 lambda: "supervisord to run the app: %s" % (self.status(),))
        return self

    def status(self):
        """(state, pid) of the program as `supervisorctl status` says it."""
        done = subprocess.run(["supervisorctl", "-c", self.config, "status", "app"],
                              capture_output=True, text=True, timeout=30)
        words = done.stdout.split()
        pid = int(words[3].rstrip(",")) if len(words) > 3 and words[2] == "pid" else None
        return (words[1] if len(words) > 1 else done.stdout + done.stderr), pid

    def spawned(self):
        """How many times supervisord started the program."""
        with open(os.path.join(self.here, "supervisord.log")) as handle:
            return handle.read().count("spawned: 'app'")

    def stop(self):
        terminate(self.proc)
