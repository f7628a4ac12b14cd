"""The in-place upgrade under what follows a PID: supervisord, tini, and PID 1 of a namespace.

Each runs the real tool (Debian's packages, installed by tests/run.sh): the master
keeps its PID across an upgrade and a rollback, nothing starts a second copy, and
no child of the master is left a zombie once the old generation drained (supervisord and
tini with graceful_mold on: the molds cross the execs too).
"""

import os
import signal

import pytest

from tests.harness import (GUNICORN, SUPERVISORD_MISSING, TINI_MISSING, Supervisord, cli,
                           free_port, pid_in, process_alive, under_load, wait_for, write_app)

IN_PLACE = "graceful_readiness_path = '/healthz'\ngraceful_upgrade = 'in-place'\n"
# With the mold: its molds are the master's children too, and cross the execs.
IN_PLACE_MOLD = IN_PLACE + "graceful_mold = True\n"
# Each worker of release 1 leaves a child behind: orphaned when the worker exits, it is
# reparented to the nearest reaper (the master as PID 1), which must reap it.
ORPHAN = "import subprocess\nsubprocess.Popen(['sleep', '4'])\n"


def zombies_and_orphans(master):
    """The master's children that are zombies or leftover `sleep`s (see ORPHAN)."""
    try:
        with open("/proc/%s/task/%s/children" % (master, master)) as handle:
            children = [int(pid) for pid in handle.read().split()]
    except OSError:
        return ["master %s gone" % master]
    found = []
    for pid in children:
        try:
            with open("/proc/%s/stat" % pid) as handle:
                stat = handle.read()
        except OSError:
            continue
        name, state = stat.split("(", 1)[1].rsplit(")", 1)[0], stat.rsplit(")", 1)[1].split()[0]
        if state == "Z" or name == "sleep":
            found.append("%s %s %s" % (pid, name, state))
    return found


@pytest.mark.skipif(SUPERVISORD_MISSING is not None, reason=str(SUPERVISORD_MISSING))
def test_supervisord_follows_the_same_pid_across_an_upgrade_and_a_rollback(workdir, servers):
    server = servers(workdir, workers=2, config_body=IN_PLACE_MOLD, serve=None, port=free_port())
    supervisor = Supervisord(workdir, server)
    try:
        supervisor.start()
        server.wait_log("event=master.serving")
        _, pid = supervisor.status()
        write_app(workdir, "2")
        with under_load(server.url, after=100, threads=4) as load:
            done = cli("upgrade", "--pidfile", server.pidfile, timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr + server.tail()
        assert load.failures() == [], load.summary()
        assert supervisor.status() == ("RUNNING", pid) and pid_in(server.pidfile) == pid
        assert server.version() == "2"
        write_app(workdir, "3", healthz=503)
        with under_load(server.url, after=100, threads=4) as load:
            done = cli("upgrade", "--pidfile", server.pidfile, timeout=90)
        assert done.returncode == 3, done.stdout + done.stderr
        assert load.failures() == [], load.summary()
        assert supervisor.status() == ("RUNNING", pid) and server.version() == "2"
        assert supervisor.spawned() == 1  # never a second copy
    finally:
        supervisor.stop()
        master = pid_in(server.pidfile) if os.path.exists(server.pidfile) else None
        if master and process_alive(master):  # supervisord could not stop it
            os.kill(master, signal.SIGKILL)


@pytest.mark.skipif(TINI_MISSING is not None, reason=str(TINI_MISSING))
def test_under_tini_an_upgrade_completes_and_leaves_no_zombie(workdir, servers):
    server = servers(workdir, workers=2, config_body=IN_PLACE_MOLD,
                     launcher=["tini", "--"] + GUNICORN)
    master = pid_in(server.pidfile)
    write_app(workdir, "2")
    with under_load(server.url, after=100, threads=4) as load:
        done = cli("upgrade", "--pidfile", server.pidfile, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr + server.tail()
    assert load.failures() == [], load.summary()
    assert server.alive() and pid_in(server.pidfile) == master  # tini and its one child
    wait_for(lambda: server.count(r"event=worker\.exited pid=\d+ generation=1") == 2, 30,
             "the old generation to drain")
    wait_for(lambda: not zombies_and_orphans(master), 15,
             lambda: "no zombie left: %s" % zombies_and_orphans(master))
    server.signal(signal.SIGTERM)  # tini forwards it
    assert server.wait_exit(timeout=30) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a new PID namespace needs root (CI runs as root)")
def test_as_pid_1_of_a_namespace_an_upgrade_completes_and_orphans_are_reaped(workdir, servers):
    write_app(workdir, "1", before=ORPHAN)
    server = servers(workdir, workers=2, config_body=IN_PLACE,
                     launcher=["unshare", "--pid", "--fork", "--mount-proc"] + GUNICORN)
    master, = server.children()  # unshare's child: PID 1 inside, this pid outside
    with open("/proc/%s/status" % master) as handle:
        assert "NSpid:\t%s\t1\n" % master in handle.read()
    write_app(workdir, "2")
    with under_load(server.url, after=100, threads=4) as load:
        os.kill(master, signal.SIGUSR2)  # the pidfile says 1: the namespace's own number
        server.wait_log("event=upgrade.done pid=1 generation=2", timeout=60)
    assert load.failures() == [], load.summary()
    assert server.version() == "2" and server.children() == [master]
    wait_for(lambda: server.count(r"event=worker\.exited pid=\d+ generation=1") == 2, 30,
             "the old generation to drain")
    wait_for(lambda: any("sleep" in found for found in zombies_and_orphans(master)), 10,
             "the old workers' children reparented to the master (PID 1)")
    wait_for(lambda: not zombies_and_orphans(master), 15,
             lambda: "no zombie left: %s" % zombies_and_orphans(master))
    os.kill(master, signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
