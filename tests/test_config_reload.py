"""HUP with a changed configuration: what can be applied is, what cannot is one logged refusal.

Whatever the new config says (another bind address, a missing certificate, a user's
own hook, no pack at all), the master stays up and the serving generation keeps
serving; the master never holds the application's code.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from gunicorn.config import Config

from gunicorn_graceful import compat
from tests.harness import ROOT, Load, cli, free_port, wait_for, write_app, write_config

PACKAGE_APP = '''\
from myapp.version import VERSION


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [VERSION.encode()]
'''


def write_package_app(root, version):
    """`myapp:app`, a package whose answer is `version` (in `myapp/version.py`), with a
    readiness check in `myapp/checks.py`."""
    package = os.path.join(root, "myapp")
    os.makedirs(package, exist_ok=True)
    with open(os.path.join(package, "__init__.py"), "w") as handle:
        handle.write(PACKAGE_APP)
    with open(os.path.join(package, "version.py"), "w") as handle:
        handle.write("VERSION = %r\n" % version)
    with open(os.path.join(package, "checks.py"), "w") as handle:
        handle.write("def ready(app):\n    return True\n")


def test_hup_with_a_dotted_readiness_callable_serves_the_new_code(tmp_path, servers):
    root = str(tmp_path)
    write_package_app(root, "v1")
    server = servers(root, app="myapp:app", workers=2,
                     config_body="graceful_readiness_callable = 'myapp.checks:ready'\n")
    assert server.get("/").text == "v1"
    write_package_app(root, "v2")
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.done generation=2")
    answers = {server.get("/").text for _ in range(20)}
    assert answers == {"v2"}, server.tail()


def test_checking_a_dotted_readiness_callable_imports_nothing_of_the_app(tmp_path):
    """The master's start check: `myapp` raises at import, so importing it would show."""
    root = str(tmp_path)
    write_package_app(root, "v1")
    with open(os.path.join(root, "myapp", "__init__.py"), "a") as handle:
        handle.write("raise SystemExit('the master imported the app')\n")
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from gunicorn_graceful import settings\n"
              "before = set(sys.modules)\n"
              "good = settings.Settings(readiness_callable='myapp.checks:ready')\n"
              "bad = settings.Settings(readiness_callable='myapp.nothing:ready')\n"
              "print(settings.callable_problem(good))\n"
              "print(settings.callable_problem(bad))\n"
              "print(sorted(m for m in set(sys.modules) - before if m.startswith('myapp')))\n"
              % root)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    good, bad, imported = out.stdout.splitlines()
    assert good == "None"
    assert "graceful_readiness_callable" in bad and "no module named 'myapp.nothing'" in bad
    assert imported == "[]"


def most_children(server, seconds):
    """The most workers the master ran at once, sampled every 50 ms for `seconds`."""
    most, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        most = max(most, len(server.children()))
        time.sleep(0.05)
    return most


def append_to_config(server, text):
    with open(server.args[server.args.index("-c") + 1], "a") as handle:
        handle.write(text)


def test_a_user_pre_fork_after_install_is_chained_and_the_pool_stays_bounded(workdir, servers):
    server = servers(workdir, workers=2, serve=None)
    append_to_config(server, "def pre_fork(server, worker):\n"
                             "    server.log.info('user pre_fork %s', worker.age)\n")
    server.start_serving()
    assert most_children(server, 2) == 2, server.tail()
    assert server.count(r"event=settings\.warning problem=\"pre_fork is defined after "
                        r"install\(globals\(\)\)") == 1
    assert server.count(r"user pre_fork \d+") == 2
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=worker\.exited pid=\d+ generation=1", count=2)
    assert most_children(server, 1) == 2, server.tail()
    assert server.count(r"user pre_fork \d+") == 4


def test_a_user_on_starting_after_install_stops_the_start_with_one_line(workdir, servers):
    server = servers(workdir, workers=2, serve=None)
    append_to_config(server, "def on_starting(server):\n    pass\n")
    server.start()
    assert server.wait_exit(timeout=30) != 0
    assert server.count(r"event=worker\.not_ready pid=\d+ reason=\"on_starting is defined after "
                        r"install\(globals\(\)\)") >= 1, server.tail()


PACK = ("from gunicorn_graceful.conf import *\n"
        "worker_class = 'gunicorn_graceful.workers.GracefulSyncWorker'\n")


@pytest.mark.parametrize("config, reason", [
    ("workers = 2\n", r"the config does not install gunicorn-graceful"),
    ("from gunicorn_graceful.conf import *\nworker_class = 'sync'\ninstall(globals())\n",
     r"worker_class=sync is not a gunicorn-graceful worker; use one of "
     r"gunicorn_graceful\.workers\.GracefulThreadWorker, GracefulSyncWorker, "
     r"GracefulUvicornWorker, GracefulASGIWorker"),
    # The worker classes' own checks, which Gunicorn runs at start only (Arbiter.start).
    pytest.param(PACK + "http_protocols = 'h2,h1'\ninstall(globals())\n",
                 r"http_protocols=h2,h1 is not supported by the pack's workers \(allowed: h1\)",
                 marks=pytest.mark.skipif("http_protocols" not in Config().settings,
                                          reason="Gunicorn < 27 has no http_protocols")),
    pytest.param(PACK.replace("GracefulSyncWorker", "GracefulASGIWorker")
                 + "asgi_lifespan = 'off'\ninstall(globals())\n",
                 r"asgi_lifespan=off leaves no place for the readiness check \(allowed: auto, on\)",
                 marks=pytest.mark.skipif(not compat.NATIVE_ASGI,
                                          reason="Gunicorn < 24 has no native asgi worker")),
])
def test_hup_to_a_config_the_pack_cannot_run_is_refused_and_nothing_changes(
        workdir, servers, config, reason):
    server = servers(workdir, workers=2, worker="sync", serve=None, config_body="worker_class = "
                     "'gunicorn_graceful.workers.GracefulSyncWorker'\n")
    at = server.args.index("-k")
    del server.args[at:at + 2]  # the worker class comes from the config
    server.start_serving()
    with open(server.args[server.args.index("-c") + 1], "w") as handle:
        handle.write(config)
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.config_failed config=\S+ reason=\"%s" % reason)
    assert most_children(server, 1) == 2, server.tail()
    assert server.alive() and server.version() == "1"
    assert "event=reload.start" not in server.log()


# -- bind: addresses that stay keep their listener; a bind that fails is one refusal -----------

def bound_server(servers, workdir, bind, extra=""):
    """A server whose listeners come from the config's `bind` (not from the command line)."""
    server = servers(workdir, workers=2, serve=None, config_body=bind_body(bind) + extra)
    at = server.args.index("-b")
    del server.args[at:at + 2]
    server._port = next(int(b.rsplit(":", 1)[1]) for b in bind if not b.startswith("unix:"))
    return server.start_serving()


def bind_body(bind):
    return "bind = %r\ngraceful_readiness_path = '/healthz'\n" % (bind,)


def rebind(server, workdir, bind, extra=""):
    write_config(workdir, body=bind_body(bind) + extra)
    server.signal(signal.SIGHUP)


def answers(url):
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def refused(port):
    """Whether a connection to `port` is refused at once (nothing listens on it any more)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def unix_answers(path):
    """Whether an HTTP GET / over the unix socket `path` gets a 200."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@pytest.mark.lines
@pytest.mark.parametrize("extra", ["", "graceful_mold = True\n"], ids=["fork", "mold"])
def test_hup_that_adds_a_bind_address_serves_both_and_the_first_never_stops(workdir, servers,
                                                                            extra):
    one, two = free_port(), free_port()
    server = bound_server(servers, workdir, ["127.0.0.1:%s" % one], extra)
    load = Load("http://127.0.0.1:%s" % one, threads=4).start()
    try:
        load.wait_count(50)
        rebind(server, workdir, ["127.0.0.1:%s" % one, "127.0.0.1:%s" % two], extra)
        server.wait_log(r"event=reload\.done generation=2")
        load.wait_count(len(load.results) + 50)
    finally:
        load.stop()
    assert load.failures() == [], load.summary()
    assert answers("http://127.0.0.1:%s/" % two) and answers("http://127.0.0.1:%s/" % one)
    assert "Connection in use" not in server.log() and "Retrying" not in server.log()
    rebind(server, workdir, ["127.0.0.1:%s" % two], extra)  # and away from the first
    server.wait_log(r"event=reload\.done generation=3")
    wait_for(lambda: refused(one), 10, "the first port to refuse connections")
    assert answers("http://127.0.0.1:%s/" % two) and server.alive()


@pytest.mark.parametrize("move, reason", [
    ("0.0.0.0:{port}", r"cannot bind 0\.0\.0\.0:{port}: EADDRINUSE \(Address already in use\)"),
    ("192.0.2.1:{port}", r"cannot bind 192\.0\.2\.1:{port}: EADDRNOTAVAIL"),
    ("127.0.0.1:{busy}", r"cannot bind 127\.0\.0\.1:{busy}: EADDRINUSE"),
])
def test_hup_to_a_bind_that_fails_is_one_refusal_and_everything_is_kept(workdir, servers, move,
                                                                       reason):
    port = free_port()
    with socket.socket() as busy:  # another service holds this one
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {"port": port, "busy": busy.getsockname()[1]}
        server = bound_server(servers, workdir, ["127.0.0.1:%s" % port])
        started = time.monotonic()
        rebind(server, workdir, ["127.0.0.1:%s" % port, move.format(**values)])
        server.wait_log(r"\[ERROR\] event=reload\.config_failed config=\S+ reason=\"%s"
                        % reason.format(**values))
        assert time.monotonic() - started < 4  # no five retries a second apart
    assert server.alive() and answers("http://127.0.0.1:%s/" % port)
    assert "event=reload.start" not in server.log() and "Retrying" not in server.log()
    rebind(server, workdir, ["127.0.0.1:%s" % port])  # the next good HUP goes through
    server.wait_log(r"event=reload\.done generation=2")


def test_hup_with_a_missing_certificate_is_one_refusal(workdir, servers):
    port = free_port()
    server = bound_server(servers, workdir, ["127.0.0.1:%s" % port])
    missing = os.path.join(workdir, "missing.pem")
    rebind(server, workdir, ["127.0.0.1:%s" % port], "certfile = %r\nkeyfile = %r\n"
           % (missing, missing))
    server.wait_log(r"\[ERROR\] event=reload\.config_failed config=\S+ reason=\"certfile %s "
                    r"does not exist\"" % missing)
    assert server.alive() and answers("http://127.0.0.1:%s/" % port)
    assert "Unhandled exception" not in server.log()


@pytest.mark.lines
def test_a_unix_socket_kept_across_hups_and_a_rollback_always_accepts(workdir, servers):
    port, path = free_port(), os.path.join(workdir, "app.sock")
    extra = os.path.join(workdir, "extra.sock")
    server = bound_server(servers, workdir, ["127.0.0.1:%s" % port, "unix:" + path])
    assert unix_answers(path)
    inode = os.stat(path).st_ino
    # A HUP that adds a unix path, with code that cannot boot: rolled back.
    write_app(workdir, "2", before="raise RuntimeError('broken')")
    rebind(server, workdir, ["127.0.0.1:%s" % port, "unix:" + path, "unix:" + extra])
    server.wait_log(r"event=reload\.rollback generation=2")
    assert unix_answers(path) and os.stat(path).st_ino == inode
    assert not os.path.exists(extra)  # what the rolled-back config opened is gone
    # Fixed code, and the tcp address moves to the unix path only: still one socket inode.
    write_app(workdir, "3")
    rebind(server, workdir, ["unix:" + path])
    server.wait_log(r"event=reload\.done generation=3")
    assert unix_answers(path) and os.stat(path).st_ino == inode
    wait_for(lambda: refused(port), 10, "the tcp port to refuse connections")
    # And back from unix to tcp.
    rebind(server, workdir, ["127.0.0.1:%s" % port])
    server.wait_log(r"event=reload\.done generation=4")
    assert answers("http://127.0.0.1:%s/" % port) and not os.path.exists(path)


def test_hup_that_changes_workers_threads_timeouts_and_pack_settings_applies_them(workdir,
                                                                                servers):
    server = servers(workdir, worker="gthread", workers=2, serve=None,
                     config_body="threads = 4\ngraceful_readiness_timeout = 30\n")
    for flag in ("-w", "--threads"):  # from the config file, so that a HUP can change them
        at = server.args.index(flag)
        del server.args[at:at + 2]
    server.start_serving()
    write_config(workdir, body="workers = 3\nthreads = 2\ntimeout = 20\ngraceful_timeout = 15\n"
                               "graceful_readiness_timeout = 12\ngraceful_max_booting = 1\n")
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.done generation=2 duration=\S+ workers=3")
    assert server.count(r"event=reload\.start generation=2 previous_generation=1 workers=3 "
                        r"max_booting=1") == 1
    assert server.count(r"event=master\.workers wanted=3 previous=2") == 1
    shown = cli("status", "--pidfile", server.pidfile)
    assert shown.stdout.count("generation=2 state=ready") == 3, shown.stdout
    server.signal(signal.SIGTERM)
    server.wait_log(r"event=master\.stopping .*graceful_timeout=15")


def test_hup_to_a_config_that_calls_sys_exit_keeps_everything(workdir, servers):
    server = servers(workdir, workers=2)
    write_config(workdir, body="import sys\nsys.exit(3)\n")
    server.signal(signal.SIGHUP)
    server.wait_log(r"\[ERROR\] event=reload\.config_failed config=\S+ reason=\"the config "
                    r"failed to load \(exit 3\)")
    assert server.alive() and answers(server.url + "/")
    assert "event=reload.start" not in server.log()
