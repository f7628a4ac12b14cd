"""Operations users perform every week that must never take the master down.

Each test is one path an operator takes (a signal without a name, a hand-over with a
shutdown delay, a hook of their own) with real processes, and asserts that the
master is still up and the service still answers.
"""

import json
import os
import signal

import pytest
import requests

from gunicorn_graceful import compat
from tests.harness import (NotifySocket, Watcher, cli, pid_in, upgrade_command,
                           usr2_new_master, wait_for, write_app)

READINESS = "graceful_readiness_path = '/healthz'\n"
HEALTH = "graceful_health_path = '/health'\n"
NAMELESS = signal.SIGRTMIN + 1  # Python has no name for it: signal.Signals(35) raises


@pytest.mark.lines
def test_a_booting_worker_killed_by_a_nameless_signal_is_a_rollback(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(30)")
    server.signal(signal.SIGHUP)
    booting = server.wait_log(r"event=worker\.booting pid=(\d+) ppid=\d+ generation=2")
    os.kill(int(booting.group(1)), NAMELESS)
    server.wait_log(r'event=reload\.rollback generation=2 kept_generation=1 worker=%s after=\S+ '
                    r'reason="killed by signal %s before it was ready"'
                    % (booting.group(1), int(NAMELESS)))
    assert server.alive() and server.version() == "1", server.tail()


def test_a_ready_worker_killed_by_a_nameless_signal_is_replaced(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    ready = server.wait_log(r"event=worker\.ready pid=(\d+)")
    os.kill(int(ready.group(1)), NAMELESS)
    server.wait_log(r"Worker \(pid:%s\) was sent signal %s!" % (ready.group(1), int(NAMELESS)))
    server.wait_log(r"event=worker\.ready pid=\d+", count=3)
    assert server.alive() and server.version() == "1", server.tail()


def test_a_new_master_killed_by_a_nameless_signal_is_a_rollback(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(30)")
    new_master = usr2_new_master(server)
    os.kill(new_master, NAMELESS)
    server.wait_log(r'event=upgrade\.rollback pid=%s new_master=%s after=\S+ '
                    r'reason="new master killed by signal %s before it took over"'
                    % (server.pid, new_master, int(NAMELESS)))
    assert server.alive() and server.version() == "1", server.tail()


@pytest.mark.lines
def test_a_hand_over_with_a_shutdown_delay_never_tells_systemd_it_stops(workdir, servers):
    """The old master drains for its new master: no STOPPING=1 (systemd would stop the unit,
    new master included), no lame duck (its workers' 503s would take the backend out)."""
    with NotifySocket(workdir) as notify:
        server = servers(workdir, workers=2, config_body=READINESS + HEALTH
                         + "graceful_shutdown_delay = 2\n", env={"NOTIFY_SOCKET": notify.path})
        notify.wait("READY=1")
        write_app(workdir, "2")
        command = upgrade_command(server)
        health = HealthProbe(server.url + "/health")
        with health:
            out, err = command.communicate(timeout=60)
            assert command.returncode == 0, out + err
            new = pid_in(server.pidfile)
            notify.wait("MAINPID=%s" % new)
            assert server.wait_exit(timeout=30) == 0
        assert server.version() == "2"
    assert not [m for m in notify.messages if "STOPPING=1" in m], notify.messages
    assert server.count(r'event=upgrade\.handing_over pid=%s new_master=%s'
                        % (server.pid, new)) == 1, server.tail()
    assert "event=master.lame_duck " not in server.log()
    assert "GRACEFUL_UPGRADE_REPORT_FD" not in server.log()  # the pack's own variable
    assert health.answers and set(health.answers) == {200}, health.answers


def test_an_operator_term_with_a_shutdown_delay_still_has_its_lame_duck(workdir, servers):
    with NotifySocket(workdir) as notify:
        server = servers(workdir, workers=1, config_body=READINESS
                         + "graceful_shutdown_delay = 1\n", env={"NOTIFY_SOCKET": notify.path})
        notify.wait("READY=1")
        server.signal(signal.SIGTERM)
        assert server.wait_exit(timeout=30) == 0
        notify.wait("STOPPING=1")
    assert server.count(r"event=master\.lame_duck pid=%s delay=1\.00" % server.pid) == 1


class HealthProbe(Watcher):
    """Asks the health path on a fresh connection every 50 ms; the status of each answer."""

    def __init__(self, url):
        super().__init__()
        self.url, self.answers = url, []

    def step(self):
        try:
            self.answers.append(requests.get(self.url, timeout=2).status_code)
        except requests.RequestException as exc:
            self.answers.append(type(exc).__name__)


def test_status_ignores_a_leftover_status_file_of_another_master(workdir, servers):
    """A SIGKILLed master leaves its status file; the pidfile now names another live process
    (here this test's own, as a reused pid would)."""
    server = servers(workdir, workers=1, config_body=READINESS)
    with open(server.pidfile + ".status") as handle:
        left = json.load(handle)
    server.stop()
    with open(server.pidfile, "w") as handle:
        handle.write("%s\n" % os.getpid())
    with open(server.pidfile + ".status", "w") as handle:
        json.dump(left, handle)
    shown = cli("status", "--pidfile", server.pidfile)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "written by master %s, the pidfile names %s" % (left["pid"], os.getpid()) \
        in shown.stderr


def status_workers(server):
    try:
        with open(server.pidfile + ".status") as handle:
            return json.load(handle)["workers"]
    except (OSError, ValueError):
        return []


def test_a_symlink_planted_beside_the_pidfile_is_never_followed(workdir, servers):
    """A local user cannot make the (root) master truncate or chmod another file through
    the temporary names it writes the pidfile and status file with."""
    server = servers(workdir, workers=1, config_body=READINESS)
    victim = os.path.join(workdir, "victim")
    with open(victim, "w") as handle:
        handle.write("precious\n")
    os.chmod(victim, 0o600)
    for name in (server.pidfile, server.pidfile + ".status"):
        os.symlink(victim, "%s.%s.tmp" % (name, server.pid))
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.done generation=2")
    wait_for(lambda: {w["generation"] for w in status_workers(server)} == {2}, 10,
             "the status file to name generation 2")
    with open(victim) as handle:
        assert handle.read() == "precious\n"
    assert os.stat(victim).st_mode & 0o777 == 0o600


@pytest.mark.skipif(not compat.CONTROL_SOCKET, reason="Gunicorn < 27 has no control socket")
def test_gunicornc_answers_the_promoted_master_after_the_old_one_replaced_a_worker(workdir,
                                                                                  servers):
    """Gunicorn 27's master re-binds the control socket at each fork: a worker the old master
    replaced during the upgrade took the path back from the new master."""
    from gunicorn.ctl.client import ControlClient
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(3)")
    new_master = usr2_new_master(server)
    victim = server.wait_log(r"event=worker\.ready pid=(\d+) generation=1").group(1)
    os.kill(int(victim), signal.SIGKILL)
    server.wait_log(r"event=worker\.ready pid=\d+ generation=1", count=3)  # the replacement
    server.wait_log(r"event=upgrade\.promoted pid=%s" % new_master, timeout=60)
    server.wait_exit(timeout=30)

    def master_answering():
        with ControlClient(os.path.join(workdir, "ctl.sock"), timeout=5) as client:
            return client.send_command("show stats").get("pid")
    assert wait_for(master_answering, 10, "gunicornc to answer") == new_master


@pytest.mark.lines  # Gunicorn 25's control server loses a thread when forks come back to back
@pytest.mark.skipif(not compat.CONTROL_SOCKET, reason="Gunicorn < 25 has no control socket")
def test_forks_in_a_row_leave_the_master_one_control_socket_thread(workdir, servers):
    """Gunicorn stops its control server's thread before each fork and starts it again
    after. On 25, a fork that follows a restart before the new thread listens cannot stop
    it: the fork waits 2 s, and the thread is left running, holding its socket. A HUP forks
    a whole generation in one tick."""
    server = servers(workdir, workers=4)
    for generation in (2, 3):
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.done generation=%s" % generation, timeout=60)
    threads = os.listdir("/proc/%s/task" % server.pid)
    assert len(threads) <= 2, "the master runs %s threads (main, control socket)" % len(threads)
