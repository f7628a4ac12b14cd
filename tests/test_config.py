"""The config pack at start: bad settings stop it with one clear line, user hooks keep running."""

import os
import re
import subprocess

import pytest
from gunicorn.config import Config

from tests.harness import GUNICORN, ROOT, write_config


def run_gunicorn(workdir, config_body, env=None, timeout=30, pack=True, extra=()):
    config = write_config(workdir, body=config_body, pack=pack)
    args = GUNICORN + ["-c", config, "-b", "127.0.0.1:0", "--chdir", workdir,
                       "--pythonpath", ROOT, *extra, "testapp:app"]
    return subprocess.run(args, cwd=workdir, env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("body, env, needle", [
    ("graceful_drain_log_interval = 'soon'\n", {},
     "invalid setting graceful_drain_log_interval='soon': allowed a number of seconds > 0"),
    ("", {"GRACEFUL_MAX_BOOTING": "-2"},
     "invalid setting GRACEFUL_MAX_BOOTING='-2': allowed a whole number >= 0 (0 means no limit)"),
    ("graceful_readiness_warmup = 5\n", {}, "invalid setting graceful_readiness_warmup=5: "
     "allowed URL paths starting with '/', comma-separated or a list of strings"),
    ("graceful_readiness_warmup = ['/a', 1]\n", {}, "invalid setting "
     "graceful_readiness_warmup=['/a', 1]: allowed URL paths starting with '/', "
     "comma-separated or a list of strings"),
    ("graceful_metrics_buckets = 5\n", {}, "invalid setting graceful_metrics_buckets=5: "
     "allowed increasing numbers of seconds > 0, comma-separated or a list"),
])
def test_a_bad_setting_stops_the_start_with_one_line(workdir, body, env, needle):
    done = run_gunicorn(workdir, body, env)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert errors == ["Error: gunicorn-graceful: " + needle], done.stderr
    assert "Listening at" not in done.stderr


@pytest.mark.parametrize("worker", ["GracefulSyncWorker", "GracefulUvicornWorker"])
def test_a_bad_environment_value_stops_a_class_used_without_the_pack_with_one_line(
        workdir, worker):
    """Before: a traceback in every worker and a respawn loop (sync), a master traceback
    (uvicorn). The class reads GRACEFUL_* at the master's start (`check_config`)."""
    done = run_gunicorn(workdir, "", {"GRACEFUL_DRAIN_LOG_INTERVAL": "soon"}, pack=False,
                        extra=["-k", "gunicorn_graceful.workers." + worker])
    assert done.returncode == 1
    assert done.stderr.count("Error: gunicorn-graceful: invalid setting "
                             "GRACEFUL_DRAIN_LOG_INTERVAL='soon': allowed a number of "
                             "seconds > 0") == 1, done.stderr
    assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr


@pytest.mark.skipif("http_protocols" not in Config().settings,
                    reason="Gunicorn < 27 has no HTTP/2 (no http_protocols setting)")
@pytest.mark.parametrize("worker", ["GracefulSyncWorker", "GracefulThreadWorker"])
def test_http2_is_refused_at_start_with_one_line(workdir, worker):
    """HTTP/2 connections would bypass the drain, lame duck and recycling: refused, before
    any worker boots."""
    done = run_gunicorn(workdir, "worker_class = 'gunicorn_graceful.workers.%s'\n"
                        "http_protocols = 'h2,h1'\n"
                        "http2_cleartext = 'both'\n" % worker)
    assert done.returncode != 0
    assert done.stderr.count("Error: gunicorn-graceful: http_protocols=h2,h1 is not "
                             "supported by the pack's workers (allowed: h1)") == 1, done.stderr
    assert "Booting worker" not in done.stderr


def test_a_readiness_callable_that_cannot_be_found_stops_the_start_with_one_line(workdir):
    done = run_gunicorn(workdir, "graceful_readiness_callable = 'nosuch:thing'\n")
    assert done.returncode == 1
    assert done.stderr.count("Error: gunicorn-graceful: invalid setting "
                             "graceful_readiness_callable='nosuch:thing': allowed 'module:function' "
                             "with an importable module (no module named 'nosuch' on the Python "
                             "path)") == 1, done.stderr
    assert "Traceback" not in done.stderr and "Listening at" not in done.stderr


def test_near_miss_setting_names_are_warned_about_with_the_closest_name(workdir, servers):
    server = servers(workdir, workers=1, env={"GRACEFUL_READINES_PATH": "/healthz"},
                     config_body="gracefull_readiness_timeout = 5\nreadiness_path = '/healthz'\n")
    for line in ("gracefull_readiness_timeout in the config is not a setting: did you mean "
                 "graceful_readiness_timeout?",
                 "readiness_path in the config is not a setting: did you mean "
                 "graceful_readiness_path?",
                 "GRACEFUL_READINES_PATH in the environment is not a setting: did you mean "
                 "GRACEFUL_READINESS_PATH?"):
        assert server.count(r"\[WARNING\] event=settings\.warning problem=\"%s\""
                            % re.escape(line)) == 1, line


def test_user_hooks_chain_after_the_pack_hooks(workdir, servers):
    marker = os.path.join(workdir, "user-hooks.txt")
    body = (
        "def post_fork(server, worker):\n"
        "    open(%r, 'a').write('post_fork %%s\\n' %% worker.pid)\n"
        "def on_exit(server):\n"
        "    open(%r, 'a').write('on_exit\\n')\n" % (marker, marker))
    server = servers(workdir, config_body=body, workers=2)
    assert server.count(r"event=worker\.booting pid=\d+ ppid=%s generation=1" % server.pid) == 2
    server.signal(15)
    assert server.wait_exit(timeout=30) == 0
    with open(marker) as handle:
        lines = handle.read().splitlines()
    assert sorted(l.split()[0] for l in lines) == ["on_exit", "post_fork", "post_fork"]
    assert "event=master.exit pid=%s" % server.pid in server.log()


def test_every_lifecycle_hook_logs_one_line(workdir, servers):
    server = servers(workdir, workers=1)
    server.signal(21)  # SIGTTIN: one more worker
    server.wait_log(r"event=master\.workers wanted=2 previous=1")
    for line in ("event=master.starting", "event=settings graceful_timeout=",
                 "event=master.listening", "event=worker.booting", "event=worker.loaded",
                 "event=worker.ready", "event=master.serving"):
        assert line in server.log(), line
    assert server.log().index("Starting gunicorn") < server.log().index("event=master.")
    server.signal(15)
    server.wait_exit(timeout=30)
    for line in ("event=master.stopping", "event=worker.exiting", "event=worker.exited",
                 "event=master.exit"):
        assert line in server.log(), line


def test_sync_worker_with_threads_stays_graceful(workdir, servers):
    server = servers(workdir, worker="sync", extra_args=["--threads", "3"], workers=1)
    assert "running GracefulThreadWorker" in server.log()
    assert server.get("/").status_code == 200
