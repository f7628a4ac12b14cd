"""A rolling restart of two backends behind a real HAProxy: no client request fails.

HAProxy (Debian's package, installed by the README test command) runs on
127.0.0.1 with active health checks on the pack's health path. Each backend is
restarted in turn, first with TERM and a new start, then with a USR2 upgrade,
while a load runs through HAProxy with keep-alive and new connections and no
client retries.
"""

import os
import signal
import subprocess
import sys

import pytest

from tests.harness import HAPROXY_MISSING, HAProxy, Load, write_app

pytestmark = pytest.mark.skipif(HAPROXY_MISSING is not None, reason=str(HAPROXY_MISSING))

CONFIG = ("graceful_health_path = '/health'\ngraceful_shutdown_delay = 1.5\n"
          "graceful_readiness_path = '/healthz'\n")


@pytest.fixture
def haproxies():
    started = []
    yield lambda *args, **kwargs: started.append(HAProxy(*args, **kwargs)) or started[-1]
    for proxy in started:
        proxy.stop()


@pytest.fixture
def cpu_hog():
    """A process that keeps one core busy for the test (at most 240 s): the machine is busy
    with other work, as it was when this test once lost a request."""
    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.monotonic() + 240\n"
                            "while time.monotonic() < end:\n    pass\n"])
    yield hog
    hog.kill()
    hog.wait(timeout=10)


def test_rolling_restart_behind_haproxy_loses_no_request(tmp_path, servers, haproxies, cpu_hog):
    dirs = {name: str(tmp_path / name) for name in ("a", "b")}
    backends = {}
    for name, directory in dirs.items():
        os.makedirs(directory)
        write_app(directory, "1")
        backends[name] = servers(directory, config_body=CONFIG, workers=2)
    proxy = haproxies(str(tmp_path), {n: s.port for n, s in backends.items()}).start()
    for name in backends:
        proxy.wait_status(name, "UP")
    load = Load(proxy.url, threads=6, slow_threads=1, max_seconds=240).start()
    try:
        load.wait_count(100)
        for name in ("a", "b"):  # TERM, then start again on the same port
            old = backends[name]
            old.signal(signal.SIGTERM)
            proxy.wait_status(name, "DOWN", timeout=10)
            assert old.wait_exit(timeout=40) == 0
            backends[name] = servers(dirs[name], config_body=CONFIG, workers=2, port=old.port)
            proxy.wait_status(name, "UP")
            load.wait_count(len(load.results) + 100)
        for name in ("a", "b"):  # USR2 to release 2
            write_app(dirs[name], "2")
            upgrade = subprocess.run(
                [sys.executable, "-m", "gunicorn_graceful.cli", "upgrade",
                 "--pidfile", backends[name].pidfile, "--timeout", "60"],
                capture_output=True, text=True, timeout=90)
            assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
            proxy.wait_status(name, "UP")
            load.wait_count(len(load.results) + 100)
    finally:
        load.stop()
    print("through haproxy:", load.summary())
    assert load.failures() == [], load.summary()
    assert {r.version for r in load.results if r.ok} >= {"1", "2"}
    assert len(load.results) > 500
