"""Lame duck and the health answers: serve while telling balancers to go, then drain."""

import signal
import time

import pytest
import requests

from gunicorn_graceful import settings
from gunicorn_graceful.workers import health
from tests.harness import under_load, wait_for

HEALTH = ("graceful_health_path = '/health'\ngraceful_liveness_path = '/live'\n"
          "graceful_shutdown_delay = %s\n")


def answer(server, path):
    response = requests.get(server.url + path, timeout=5, headers={"Connection": "close"})
    return response.status_code, response.text.strip()


@pytest.mark.lines
def test_health_answers_200_while_serving_and_503_in_lame_duck(workdir, servers):
    server = servers(workdir, workers=2, config_body=HEALTH % 3 + "accesslog = '-'\n")
    assert answer(server, "/health") == (200, "serving")
    assert answer(server, "/live") == (200, "serving")
    server.get("/")
    server.wait_started("/")  # started.log lists every path the app was called with
    with open(server.workdir + "/started.log") as handle:
        assert not {"/health", "/live"} & set(handle.read().splitlines())
    server.wait_log(r'"GET / HTTP/1\.1" 200')
    assert '"GET /health' not in server.log() and '"GET /live' not in server.log()
    with under_load(server.url, after=0, threads=4) as load:
        term_at = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_log(r"event=master\.lame_duck pid=\d+ delay=3\.00")
        wait_for(lambda: answer(server, "/health")[0] == 503, 5, "/health to answer 503")
        assert answer(server, "/health") == (503, "lame duck")
        assert answer(server, "/live") == (200, "lame duck")
        with requests.Session() as session:
            kept = session.get(server.url + "/", timeout=5)
        assert kept.status_code == 200 and kept.headers["Connection"] == "close"
        assert server.alive()
        server.wait_log(r"event=master\.lame_duck_over", timeout=10)
        assert time.monotonic() - term_at >= 3
        assert server.wait_exit(timeout=30) == 0
    during = [r for r in load.results if term_at <= r.started < term_at + 2.5]
    assert during and all(r.ok for r in during), load.summary()
    assert load.failures(allow=("refused", "connect_timeout")) == [], load.summary()


@pytest.mark.lines
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_term_or_an_int_skips_the_delay(workdir, servers, second):
    server = servers(workdir, workers=1, config_body=HEALTH % 60)
    server.signal(signal.SIGTERM)
    server.wait_log(r"event=master\.lame_duck pid=")
    stopped_at = time.monotonic()
    server.signal(second)
    server.wait_exit(timeout=15)
    assert time.monotonic() - stopped_at < 15
    if second == signal.SIGTERM:
        assert "event=master.lame_duck_skipped" in server.log()


def test_hup_and_usr2_are_refused_in_lame_duck(workdir, servers):
    server = servers(workdir, workers=1, config_body=HEALTH % 60)
    server.signal(signal.SIGTERM)
    server.wait_log(r"event=master\.lame_duck pid=")
    server.signal(signal.SIGHUP)
    server.signal(signal.SIGUSR2)
    server.wait_log(r"event=reload\.refused .*lame duck")
    server.wait_log(r"event=upgrade\.refused .*lame duck")


def test_health_state_wrapper_answers_each_state():
    current = {"state": health.SERVING}
    app = health.wrap(lambda env, start: (start("200 OK", []), [b"app"])[1],
                      settings.Settings(health_path="/health", liveness_path="/live"),
                      lambda: current["state"])
    statuses = []

    def call(path):
        body = app({"PATH_INFO": path}, lambda status, headers: statuses.append(status))
        return statuses[-1].split()[0], b"".join(body).decode().strip()

    assert call("/health") == ("200", "serving") and call("/other") == ("200", "app")
    for state in (health.LAME_DUCK, health.DRAINING):
        current["state"] = state
        assert call("/health") == ("503", state)
        assert call("/live") == ("200", state)
    current["state"] = health.RETIRING  # replaced while the service serves on
    assert call("/health") == ("200", "retiring") and call("/live") == ("200", "retiring")


def test_health_is_off_unless_configured():
    app = object()
    assert health.wrap(app, settings.Settings(), lambda: health.SERVING) is app


def test_kubernetes_grace_period_that_is_too_short_is_warned_about():
    class Cfg:
        graceful_timeout, timeout, keepalive = 30, 30, 2
    warnings = settings.timing_warnings(
        Cfg(), settings.Settings(shutdown_delay=5, termination_grace_period=30))
    assert any("terminationGracePeriodSeconds=30" in w and "at least 37" in w for w in warnings)
    assert settings.timing_warnings(
        Cfg(), settings.Settings(shutdown_delay=5, termination_grace_period=40)) == []


@pytest.mark.parametrize("logged", [False, True])
def test_probes_reach_the_access_log_only_when_asked(logged):
    class Log:
        def __init__(self):
            self.paths = []

        def access(self, resp, req, environ, request_time):
            self.paths.append(environ["PATH_INFO"])
    log = Log()
    health.quiet(log, settings.Settings(health_path="/health", liveness_path="/live",
                                        health_access_log=logged))
    for path in ("/health", "/live", "/"):
        log.access(None, None, {"PATH_INFO": path}, 0)
    assert log.paths == (["/health", "/live", "/"] if logged else ["/"])
