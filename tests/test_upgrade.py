"""USR2 under load: the new master takes over only when ready, a failed one is rolled back."""

import os
import signal
import socket

import pytest

from gunicorn_graceful import compat
from tests.harness import (MODULE_GUNICORN, Load, Watcher, pid_in, under_load, upgrade_command,
                           usr2_new_master, write_app)

READINESS = "graceful_readiness_path = '/healthz'\n"


class PidfileWatch(Watcher):
    """Reads the pidfile in a loop: it must always exist and name a live master."""

    period, limit = 0.005, 120

    def __init__(self, path):
        super().__init__()
        self.path, self.problems, self.seen = path, [], set()

    def step(self):
        try:
            with open(self.path) as handle:
                self.seen.add(int(handle.read().strip()))
        except (OSError, ValueError) as exc:
            self.problems.append(repr(exc))


def upgrade_under_load(server, expect_code, extra=100):
    with under_load(server.url, after=extra, threads=4) as load:
        with PidfileWatch(server.pidfile) as watch:
            command = upgrade_command(server)
            out, err = command.communicate(timeout=90)
    print(out, err)
    assert command.returncode == expect_code, out + err
    assert watch.problems == [], watch.problems[:5]
    return load, out, err


@pytest.mark.lines
def test_usr2_to_a_good_release_hands_over_with_zero_failures(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    old = server.pid
    write_app(workdir, "2")
    load, out, _ = upgrade_under_load(server, 0)
    assert load.failures() == [], load.summary()
    new = pid_in(server.pidfile)
    assert new != old and not os.path.exists(server.pidfile + ".2")
    assert "workers ready 2/2" in out and "promoted: master %s" % new in out
    assert server.wait_exit(timeout=30) == 0
    assert server.version() == "2"
    log = server.log()
    for line in ("event=upgrade.start pid=%s new_master=%s" % (old, new),
                 "event=upgrade.handover pid=%s old_master=%s" % (new, old),
                 "event=upgrade.retiring pid=%s" % old,
                 "event=upgrade.promoted pid=%s old_master=%s" % (new, old)):
        assert line in log, line
    if compat.CONTROL_SOCKET:
        with socket.socket(socket.AF_UNIX) as ctl:
            ctl.connect(os.path.join(workdir, "ctl.sock"))  # gunicornc keeps working


@pytest.mark.lines
def test_usr2_works_when_started_as_python_m_gunicorn(workdir, servers):
    # Stock Gunicorn re-executes .../gunicorn/__main__.py as a script, and the new master
    # then imports gunicorn/http as the stdlib's http: every worker fails to boot.
    server = servers(workdir, workers=2, config_body=READINESS, launcher=MODULE_GUNICORN)
    write_app(workdir, "2")
    load, out, _ = upgrade_under_load(server, 0)
    assert load.failures() == [], load.summary()
    assert server.version() == "2"
    assert "-m gunicorn" in open("/proc/%s/cmdline" % pid_in(server.pidfile)).read().replace(
        "\0", " ")


@pytest.mark.parametrize("release, reason", [
    pytest.param({"before": "raise RuntimeError('no database url')"},
                 "RuntimeError: no database url", marks=pytest.mark.lines),
    ({"healthz": 503}, "readiness path /healthz answered 503"),
])
def test_usr2_to_a_failing_release_rolls_back_and_keeps_serving(workdir, servers, release,
                                                               reason):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", **release)
    load, _, err = upgrade_under_load(server, 3)
    assert load.failures() == [], load.summary()
    assert "upgrade rolled back: " in err and reason in err
    assert server.alive() and pid_in(server.pidfile) == server.pid
    assert server.version() == "1"
    assert reason in server.log()
    assert server.count(r"\[ERROR\] event=upgrade\.rollback pid=%s" % server.pid) == 1


def test_usr2_to_a_release_booting_for_3s_serves_throughout(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(3)")
    load, _, _ = upgrade_under_load(server, 0)
    assert load.failures() == [], load.summary()
    assert server.version() == "2"


@pytest.mark.lines
def test_new_master_killed_mid_upgrade_is_rolled_back(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(30)")
    load = Load(server.url, threads=4).start()
    try:
        load.wait_count(50)
        new = usr2_new_master(server)
        os.kill(new, signal.SIGKILL)
        server.wait_log(r"event=upgrade\.rollback", timeout=20)
        load.wait_count(len(load.results) + 100)
    finally:
        load.stop()
    assert load.failures() == [], load.summary()
    assert 'reason="new master killed by SIGKILL before it took over"' in server.log()
    assert server.version() == "1" and pid_in(server.pidfile) == server.pid


def test_usr2_with_preflight_refuses_a_release_that_cannot_import(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS + "graceful_preflight = True\n")
    write_app(workdir, "2", before="import no_such_module")
    command = upgrade_command(server)
    out, err = command.communicate(timeout=60)
    assert command.returncode == 2, out + err  # refused: no new master ever ran
    assert "upgrade refused: pre-flight import failed: ModuleNotFoundError" in err
    log = server.log()
    assert "event=upgrade.refused" in log and "No module named 'no_such_module'" in log
    assert "Booting worker" not in log.split("event=upgrade.start")[1]
    assert server.alive() and server.version() == "1"


def test_systemd_hears_mainpid_then_ready_from_the_new_master(workdir, servers):
    path = os.path.join(workdir, "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(30)
    try:
        server = servers(workdir, workers=1, config_body=READINESS, serve=False,
                         env={"NOTIFY_SOCKET": path})
        server.wait_log("event=master.serving")
        assert listener.recv(4096).decode().startswith("READY=1")
        write_app(workdir, "2")
        command = upgrade_command(server)
        out, err = command.communicate(timeout=60)
        assert command.returncode == 0, out + err
        new = pid_in(server.pidfile)
        messages = [listener.recv(4096).decode() for _ in range(4)]
    finally:
        listener.close()
    assert messages[0].startswith("STATUS=upgrading: new master %s" % new)
    # The old master names its successor before it answers the hand-over (systemd takes
    # MAINPID from the main process), then the new master says it serves.
    assert messages[1] == "MAINPID=%s\nSTATUS=handing over to new master %s" % (new, new)
    assert messages[2] == "MAINPID=%s" % new
    assert messages[3].startswith("READY=1\n")
