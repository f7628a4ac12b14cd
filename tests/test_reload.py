"""HUP under load: the service never goes down, broken code is rolled back, the master survives."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.harness import WORKERS, under_load, wait_for, write_app

READINESS = "graceful_readiness_path = '/healthz'\n"


def hup_under_load(server, done_pattern, extra=100):
    """HUP while a load runs; returns the load once `done_pattern` is logged and more has run."""
    with under_load(server.url, after=extra, threads=4) as load:
        server.signal(signal.SIGHUP)
        server.wait_log(done_pattern, timeout=40)
    return load


def assert_no_failures(load):
    assert load.failures() == [], load.summary()


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_hup_with_code_that_raises_at_import_rolls_back_and_keeps_serving(workdir, servers,
                                                                          worker):
    server = servers(workdir, worker=worker, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="raise RuntimeError('database url missing')")
    load = hup_under_load(server, r"event=reload\.rollback")
    assert_no_failures(load)
    assert server.alive() and server.version() == "1"
    assert server.count(
        r"\[ERROR\] event=reload\.rollback generation=2 kept_generation=1 worker=\d+ after=\S+ "
        r"reason=\"RuntimeError: database url missing\"") == 1
    # Fixed code on a later HUP goes through, as generation 3: numbers are never reused.
    write_app(workdir, "3")
    load = hup_under_load(server, r"event=reload\.done generation=3")
    assert_no_failures(load)
    assert server.version() == "3"


@pytest.mark.parametrize("worker", WORKERS)
def test_hup_with_code_that_imports_for_3s_serves_throughout(workdir, servers, worker):
    server = servers(workdir, worker=worker, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(3)")
    load = hup_under_load(server, r"event=reload\.done generation=2")
    assert_no_failures(load)
    assert server.version() == "2"
    served = [r.version for r in load.results]
    assert "1" in served and "2" in served


@pytest.mark.parametrize("worker", WORKERS)
def test_hup_with_failing_readiness_path_rolls_back(workdir, servers, worker):
    server = servers(workdir, worker=worker, workers=2, config_body=READINESS)
    write_app(workdir, "2", healthz=503)
    load = hup_under_load(server, r"event=reload\.rollback")
    assert_no_failures(load)
    assert server.version() == "1"
    assert 'reason="NotReady: readiness path /healthz answered 503"' in server.log()
    assert not [r for r in load.results if r.version == "2"]
    # An expected outcome, said once per worker: no traceback, nothing printed twice.
    log = server.log()
    assert server.count(r"\[ERROR\] event=worker\.not_ready pid=\d+ reason=\"NotReady: "
                        r"readiness path /healthz answered 503\"") >= 1
    assert "Traceback" not in log and "Exception in worker process" not in log


def test_worker_hanging_at_import_is_stopped_at_the_readiness_timeout(workdir, servers):
    server = servers(workdir, workers=2,
                     config_body=READINESS + "graceful_readiness_timeout = 2\n")
    write_app(workdir, "2", before="time.sleep(600)")
    load = hup_under_load(server, r"event=reload\.rollback")
    assert_no_failures(load)
    assert "not ready after" in server.log() and "graceful_readiness_timeout" in server.log()
    assert server.version() == "1"


def test_config_that_fails_on_hup_keeps_the_running_configuration(workdir, servers):
    server = servers(workdir, workers=2)
    with open(server.args[server.args.index("-c") + 1], "a") as handle:
        handle.write("\nraise ValueError('typo in config')\n")
    load = hup_under_load(server, r"event=reload\.config_failed")
    assert_no_failures(load)
    assert server.alive() and server.version() == "1"
    assert server.count(r"\[ERROR\] event=reload\.config_failed .*kept_generation=1") == 1


def test_bad_pack_setting_on_hup_is_refused_with_its_name(workdir, servers):
    server = servers(workdir, workers=1)
    with open(server.args[server.args.index("-c") + 1], "a") as handle:
        handle.write("\ngraceful_max_booting = 'many'\ninstall(globals())\n")
    load = hup_under_load(server, r"event=reload\.config_failed")
    assert_no_failures(load)
    assert "invalid setting graceful_max_booting='many'" in server.log()


def test_hup_with_preload_app_warns_that_code_is_not_reloaded(workdir, servers):
    server = servers(workdir, workers=1, extra_args=["--preload"])
    load = hup_under_load(server, r"event=reload\.done generation=2")
    assert_no_failures(load)
    assert server.count(r"\[WARNING\] event=reload\.preload") == 1


def test_max_booting_bounds_new_workers_booting_at_once(workdir, servers):
    server = servers(workdir, workers=3, config_body="graceful_max_booting = 1\n")
    write_app(workdir, "2", before="time.sleep(0.5)")
    load = hup_under_load(server, r"event=reload\.done generation=2")
    assert_no_failures(load)
    lines = [l for l in server.log().splitlines()
             if "generation=2" in l and ("worker.booting" in l or "worker.ready" in l)]
    assert sum("worker.booting" in l for l in lines) == 3, lines
    booting = 0
    for line in lines:
        booting += 1 if "worker.booting" in line else -1
        assert booting <= 1, lines


def test_status_command_shows_each_worker_state(workdir, servers):
    server = servers(workdir, workers=2)
    wait_for(lambda: os.path.exists(server.pidfile + ".status"), 10, "the status file")
    run = [sys.executable, "-m", "gunicorn_graceful.cli", "status", "--pidfile", server.pidfile]
    shown = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert ("master pid=%s generation=1 state=serving workers_ready=2 workers_wanted=2 "
            "serving=True" % server.pid) in shown.stdout
    assert shown.stdout.count("state=ready") == 2
    raw = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True,
                                    timeout=30).stdout)
    assert {w["state"] for w in raw["workers"]} == {"ready"}
    server.signal(signal.SIGTERM)
    server.wait_exit(timeout=30)
    gone = subprocess.run(run, capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and "not running" in gone.stderr


def test_systemd_hears_ready_only_when_workers_serve_and_reloading_around_hup(workdir, servers):
    path = os.path.join(workdir, "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(30)
    messages = []

    def receive():
        while len(messages) < 4:
            try:
                messages.append(listener.recv(4096).decode())
            except OSError:
                return
    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        server = servers(workdir, workers=2, config_body=READINESS, serve=False,
                         env={"NOTIFY_SOCKET": path})
        server.wait_log("event=master.serving")
        wait_for(lambda: messages, 10, "READY=1")
        assert messages[0].startswith("READY=1\n") and "generation 1 serving" in messages[0]
        serving_line = [l for l in server.log().splitlines() if "master.serving" in l]
        assert serving_line, "READY=1 must follow the first ready generation"
        write_app(workdir, "2")
        load = hup_under_load(server, r"event=reload\.done generation=2")
        assert_no_failures(load)
        server.signal(signal.SIGTERM)
        server.wait_exit(timeout=30)
        thread.join(timeout=10)
    finally:
        listener.close()
    assert messages[1].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(messages[1].split("\n")[1].split("=")[1]) > 0
    assert messages[2].startswith("READY=1\n") and "generation 2 serving" in messages[2]
    assert messages[3].startswith("STOPPING=1\n")


