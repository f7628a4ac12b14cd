"""USR2 with graceful_upgrade = "in-place": the master execs the new code itself, same PID."""

import os
import signal

import pytest

from tests.harness import (NotifySocket, pid_in, under_load, upgrade_command, wait_for,
                           write_app)

IN_PLACE = "graceful_readiness_path = '/healthz'\ngraceful_upgrade = 'in-place'\n"


def upgrade_in_place(server, expect_code, extra=100, threads=4):
    """`gunicorn-graceful upgrade` under load; the load, and what the command printed."""
    with under_load(server.url, after=extra, threads=threads) as load:
        command = upgrade_command(server)
        out, err = command.communicate(timeout=90)
    assert command.returncode == expect_code, out + err + server.tail()
    return load, out, err


def workers_of(server, generation):
    status = server_status(server)
    return sorted(w["pid"] for w in status["workers"] if w["generation"] == generation)


def server_status(server):
    import json
    with open(server.pidfile + ".status") as handle:
        return json.load(handle)


@pytest.mark.lines
def test_in_place_upgrade_keeps_the_pid_and_loses_nothing(workdir, servers):
    server = servers(workdir, workers=2, config_body=IN_PLACE)
    old_workers = server.children()
    write_app(workdir, "2")
    load, out, _ = upgrade_in_place(server, 0)
    assert load.failures() == [], load.summary()
    assert "done: master %s, generation 2 serving" % server.pid in out
    assert pid_in(server.pidfile) == server.pid and server.alive()
    assert server.version() == "2"
    wait_for(lambda: not set(old_workers) & set(server.children()), 30, "old workers to exit")
    log = server.log()
    for line in ("event=upgrade.in_place pid=%s" % server.pid,
                 "event=upgrade.exec pid=%s direction=new workers=2" % server.pid,
                 "event=upgrade.adopted pid=%s direction=new workers=2 generation=1" % server.pid,
                 "event=upgrade.booting pid=%s generation=2 previous_generation=1" % server.pid,
                 "event=upgrade.done pid=%s generation=2" % server.pid):
        assert line in log, line
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    assert not os.path.exists(server.pidfile)


@pytest.mark.lines
def test_a_broken_release_is_rolled_back_in_place(workdir, servers):
    server = servers(workdir, workers=2, config_body=IN_PLACE)
    old_workers = server.children()
    write_app(workdir, "2", healthz=503)
    load, out, err = upgrade_in_place(server, 3)
    assert load.failures() == [], load.summary()
    assert "upgrade rolled back" in err
    assert server.alive() and pid_in(server.pidfile) == server.pid
    assert set(old_workers) <= set(server.children())
    assert server.version() == "1"
    log = server.log()
    assert "event=upgrade.rollback pid=%s generation=2 kept_generation=1" % server.pid in log
    assert "event=upgrade.exec pid=%s direction=back" % server.pid in log
    assert "event=upgrade.adopted pid=%s direction=back workers=2" % server.pid in log


def test_a_release_whose_config_fails_is_refused_before_the_exec(workdir, servers):
    server = servers(workdir, workers=2, config_body=IN_PLACE)
    with open(os.path.join(workdir, "gunicorn_conf.py"), "a") as handle:
        handle.write("raise RuntimeError('config of release 2 is broken')\n")
    load, out, err = upgrade_in_place(server, 2)
    assert load.failures() == [], load.summary()
    assert "config of release 2 is broken" in err
    assert "direction=new" not in server.log()


def test_notify_socket_hears_reloading_then_ready_from_the_same_pid(workdir, servers):
    with NotifySocket(workdir) as notify:
        server = servers(workdir, workers=2, config_body=IN_PLACE,
                         env={"NOTIFY_SOCKET": notify.path})
        notify.wait("READY=1")
        write_app(workdir, "2")
        upgrade_in_place(server, 0)
        notify.wait("generation 2 serving")
    print(notify.messages)
