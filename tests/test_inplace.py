"""USR2 with graceful_upgrade = "in-place": the master execs the new code itself, same PID."""

import os
import signal
import socket
import subprocess

import pytest
import requests

from tests.harness import (GUNICORN, ROOT, Load, NotifySocket, cli, control_socket_args,
                           free_port, make_release, pid_in, point_link, process_alive,
                           under_load, upgrade_command, wait_for, write_app, write_config)

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
    """What systemd needs without NotifyAccess=all: every message from the main pid, READY
    at start, RELOADING=1 with MONOTONIC_USEC at the USR2, READY=1 once the new generation
    serves (and again after a rolled-back one), never MAINPID."""
    with NotifySocket(workdir) as notify:
        server = servers(workdir, workers=2, config_body=IN_PLACE,
                         env={"NOTIFY_SOCKET": notify.path})
        notify.wait("READY=1")
        write_app(workdir, "2")
        upgrade_in_place(server, 0)
        notify.wait("generation 2 serving")
        write_app(workdir, "3", healthz=503)
        upgrade_in_place(server, 3)
        notify.wait("upgrade rolled back")
    said = [m for m in notify.messages if "READY=1" in m or "RELOADING=1" in m]
    assert [m.split("\n")[0] for m in said] == ["READY=1", "RELOADING=1", "READY=1",
                                                 "RELOADING=1", "READY=1"], notify.messages
    assert all("MONOTONIC_USEC=" in m for m in said if "RELOADING=1" in m)
    assert "generation 2 serving" in said[2] and "upgrade rolled back" in said[4]
    assert not [m for m in notify.messages if "MAINPID" in m or "STOPPING" in m]
    assert set(notify.senders) == {server.pid}, (notify.senders, server.pid)


# The check (--check-config) imports the app too: a release that is slow only in its workers.
SLOW_WORKERS = "import sys\nif '--check-config' not in sys.argv:\n    time.sleep(%s)\n"
SLOW_CHECK = "import sys\nif '--check-config' in sys.argv:\n    time.sleep(2)\n"


def begin_slow_upgrade(server, workdir, seconds=3):
    """`gunicorn-graceful upgrade` to a release whose workers take `seconds` to import; once
    the exec'd code forked its generation (the old workers still serving): (the command,
    the new workers). `upgrade.booting` is written before the forks."""
    old_workers = server.children()
    write_app(workdir, "2", before=SLOW_WORKERS % seconds)
    command = upgrade_command(server)
    server.wait_log("event=upgrade.booting pid=%s generation=2" % server.pid)
    new_workers = wait_for(lambda: [p for p in server.children() if p not in old_workers], 10,
                           lambda: "the new generation's workers:\n" + server.tail())
    return command, new_workers


def test_a_new_release_that_fails_at_start_after_the_exec_goes_back(tmp_path, servers):
    """Its config passes the check but a hook raises at start: the exec'd code has not touched
    the workers, so it execs the kept release back (every path through the link pinned).
    Release 2's config names another pidfile, which Gunicorn's start wrote before the hook
    raised: it goes with the exec back (before, it stayed, naming the master)."""
    root = str(tmp_path)
    link = os.path.join(root, "current")
    point_link(link, make_release(root, "1"))
    body = IN_PLACE + "graceful_release_link = %r\n" % link
    moved = os.path.join(root, "moved.pid")
    write_config(os.path.join(root, "releases", "1"), body=body)
    write_config(make_release(root, "2"), body=body + "pidfile = %r\n" % moved
                 + "def when_ready(server):\n    raise RuntimeError('release 2 hook')\n")
    server = servers(link, workers=2, rundir=root, config_body=body, serve=None)
    server.settings_in_config(pidfile=server.pidfile)  # release 1's config, through the link
    server.start_serving()
    old_workers = server.children()
    point_link(link, os.path.join(root, "releases", "2"))
    load, out, err = upgrade_in_place(server, 3)
    assert load.failures() == [], load.summary()
    assert "before its first tick" in err
    assert server.alive() and set(old_workers) <= set(server.children())
    assert "event=upgrade.adopted pid=%s direction=back" % server.pid in server.log()
    assert server.version() == "1"
    wait_for(lambda: not os.path.exists(moved), 10, "release 2's pidfile to go")
    assert pid_in(server.pidfile) == server.pid


def test_a_check_killed_by_sigkill_refuses_the_upgrade(workdir, servers):
    server = servers(workdir, workers=2, config_body=IN_PLACE)
    write_app(workdir, "2", before="time.sleep(30)")  # the check imports it: it takes long
    command = upgrade_command(server)
    checking = int(server.wait_log(r"event=upgrade.in_place .* checking=(\d+)").group(1))
    os.kill(checking, signal.SIGKILL)
    out, err = command.communicate(timeout=60)
    assert command.returncode == 2 and "check failed: killed by SIGKILL" in err, out + err
    assert server.alive() and server.version() == "1"


@pytest.mark.parametrize("gone", ["before the check", "during the check"])
def test_an_interpreter_gone_refuses_the_upgrade_and_the_old_code_serves_on(workdir, servers,
                                                                           gone):
    """The virtualenv a deploy removed: the check cannot start, or (gone while it ran) the
    exec fails and returns; either way the old code says why and serves on."""
    import sys
    # A symlink beside the venv's interpreter, so that it finds the venv while it exists.
    python = "%s-inplace-test-%s" % (sys.executable, os.getpid())
    os.symlink(sys.executable, python)
    try:
        server = servers(workdir, workers=2, config_body=IN_PLACE,
                         launcher=[python, "-m", "gunicorn"])
        write_app(workdir, "2", before=SLOW_CHECK)
        if gone == "during the check":
            command = upgrade_command(server)
            server.wait_log(r"event=upgrade.in_place")
    finally:
        os.unlink(python)
    if gone == "before the check":
        command = upgrade_command(server)
    out, err = command.communicate(timeout=60)
    expected = "cannot run the new code's check" if gone == "before the check" \
        else "cannot exec %s" % python
    assert command.returncode == 2 and expected in err and "No such file" in err, out + err
    assert server.alive() and server.version() == "1"


def test_a_generation_late_past_the_upgrade_timeout_is_rolled_back(workdir, servers):
    server = servers(workdir, workers=2,
                     config_body=IN_PLACE + "graceful_upgrade_timeout = 3\n")
    write_app(workdir, "2", before=SLOW_WORKERS % 30)
    load, _, err = upgrade_in_place(server, 3)
    assert load.failures() == [], load.summary()
    assert "not ready after" in err and "graceful_upgrade_timeout" in err
    assert server.version() == "1"


@pytest.mark.parametrize("generation", ["old", "new"])
def test_a_worker_sigkilled_during_the_upgrade(workdir, servers, generation):
    """An old worker killed: the upgrade completes. A new one killed while it boots: that is
    the new generation failing: rolled back, the old workers serve on."""
    server = servers(workdir, workers=2, config_body=IN_PLACE)
    old_workers = server.children()
    command, new_workers = begin_slow_upgrade(server, workdir)
    victim = old_workers[0] if generation == "old" else new_workers[0]
    os.kill(victim, signal.SIGKILL)
    out, err = command.communicate(timeout=90)
    if generation == "old":
        assert command.returncode == 0, out + err
        assert server.version() == "2"
    else:
        assert command.returncode == 3 and "SIGKILL" in err, out + err
        assert set(old_workers) <= set(server.children())
        assert server.version() == "1"
    assert server.alive() and pid_in(server.pidfile) == server.pid


@pytest.mark.parametrize("when", ["check", "generation"])
def test_term_during_an_upgrade_stops_everything_gracefully(workdir, servers, when):
    server = servers(workdir, workers=2, config_body=IN_PLACE)
    if when == "check":
        write_app(workdir, "2", before="time.sleep(30)")  # the check itself takes long
        server.signal(signal.SIGUSR2)
        checking = int(server.wait_log(r"event=upgrade.in_place .* checking=(\d+)").group(1))
    else:
        command, _ = begin_slow_upgrade(server, workdir, seconds=30)
    workers = server.children()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    for pid in workers + ([checking] if when == "check" else []):
        wait_for(lambda: not process_alive(pid), 10, "process %s to exit" % pid)
    assert not os.path.exists(server.pidfile)
    if when == "generation":
        out, err = command.communicate(timeout=30)
        assert command.returncode == 4, out + err
        # The status file says why until the stop ends; a command that looks later sees the
        # master gone.
        assert "upgrade interrupted: master %s stopped during the in-place upgrade (step " \
            "booting)" % server.pid in err or "exited during the in-place upgrade" in err, err
    assert server.count(r"\[WARNING\] event=upgrade\.interrupted pid=%s seq=1 step=%s " % (
        server.pid, "checking" if when == "check" else "booting")) == 1


def test_an_upgrade_to_a_config_with_another_pidfile_leaves_only_that_one(workdir, servers):
    """Before, the pidfile the old code kept stayed beside the new one, with its status file,
    and named a dead master after the stop (found by the simulation)."""
    server = servers(workdir, workers=2, serve=None, config_body=IN_PLACE)
    server.settings_in_config(pidfile=server.pidfile)
    server.start().wait_log("event=master.serving")
    moved = os.path.join(workdir, "moved.pid")
    server.set_in_config(pidfile=moved)
    write_app(workdir, "2")
    server.signal(signal.SIGUSR2)
    server.wait_log("event=upgrade.done pid=%s" % server.pid, timeout=60)
    assert pid_in(moved) == server.pid and os.path.exists(moved + ".status")
    assert not os.path.exists(server.pidfile) and not os.path.exists(server.pidfile + ".status")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    assert not os.path.exists(moved) and not os.path.exists(moved + ".status")


def test_metrics_count_on_across_an_upgrade_and_a_rollback(workdir, servers):
    from tests.test_metrics import Scraper, counts_end_at_what_the_load_saw, scrape, value
    port = free_port()
    server = servers(workdir, workers=2, config_body=IN_PLACE
                     + 'graceful_metrics_bind = "127.0.0.1:%d"\n' % port)
    scraper = Scraper(port).start()
    load = Load(server.url, threads=4).start()
    load.wait_count(100)
    write_app(workdir, "2")
    assert cli("upgrade", "--pidfile", server.pidfile, timeout=90).returncode == 0
    write_app(workdir, "3", healthz=503)
    assert cli("upgrade", "--pidfile", server.pidfile, timeout=90).returncode == 3
    counts_end_at_what_the_load_saw(load, scraper, port, 100)
    text = scrape(port).text
    assert value(text, 'gunicorn_reloads_total{kind="usr2",result="ok"}') == 1, text
    assert value(text, 'gunicorn_reloads_total{kind="usr2",result="rolled_back"}') == 1, text
    assert value(text, "gunicorn_generation") == 2


def test_a_new_config_that_adds_then_moves_a_bind_is_served_and_a_taken_one_goes_back(
        workdir, servers):
    from tests.test_config_reload import answers, bind_body, bound_server, refused
    first, second = free_port(), free_port()
    server = bound_server(servers, workdir, ["127.0.0.1:%d" % first], IN_PLACE)
    write_config(workdir, body=bind_body(["127.0.0.1:%d" % first, "127.0.0.1:%d" % second])
                 + IN_PLACE)
    done = cli("upgrade", "--pidfile", server.pidfile, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr + server.tail()
    assert answers("http://127.0.0.1:%d/" % first) and answers("http://127.0.0.1:%d/" % second)
    write_config(workdir, body=bind_body(["127.0.0.1:%d" % second]) + IN_PLACE)
    with under_load("http://127.0.0.1:%d" % second, after=50, threads=2) as load:
        done = cli("upgrade", "--pidfile", server.pidfile, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr + server.tail()
    assert load.failures() == [], load.summary()
    wait_for(lambda: refused(first), 10, "port %d closed once the upgrade moved away" % first)
    with socket.socket() as taken:  # another service holds the next address
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        write_config(workdir, body=bind_body(["127.0.0.1:%d" % second, "127.0.0.1:%d"
                                              % taken.getsockname()[1]]) + IN_PLACE)
        done = cli("upgrade", "--pidfile", server.pidfile, timeout=90)
    assert done.returncode == 3 and "the new config's bind: cannot bind" in done.stderr, \
        done.stdout + done.stderr
    assert answers("http://127.0.0.1:%d/" % second) and server.alive()


SENT_AT_EXEC = {  # a signal right after `upgrade.exec direction=new`: what must come of it
    "TERM": r"event=master\.exit pid=%d",
    "INT": r"event=master\.exit pid=%d",
    "QUIT": r"event=master\.exit pid=%d",
    "HUP": r"event=reload\.done generation=3",
    "USR2": r"event=upgrade\.done pid=%d generation=3",
    "TTIN": r"event=master\.workers wanted=3 previous=2",
}


@pytest.mark.parametrize("name", [  # Gunicorn's signal queue differs between lines: two on each
    pytest.param(name, marks=[pytest.mark.lines] if name in ("TERM", "QUIT") else [])
    for name in sorted(SENT_AT_EXEC)])
def test_a_signal_sent_at_the_exec_is_never_lost(workdir, servers, name):
    """Sent while the old code execs (metrics on: its endpoint's pause makes the moment
    longer), the signal reaches the new code: queued in memory by Gunicorn's handler, it is
    handed over; pending in the kernel, the new code's first tick unblocks it."""
    server = servers(workdir, workers=2, config_body=IN_PLACE + "graceful_timeout = 5\n"
                     + 'graceful_metrics_bind = "127.0.0.1:%d"\n' % free_port())
    write_app(workdir, "2")
    server.signal(signal.SIGUSR2)
    server.wait_log(r"event=upgrade\.exec pid=%d direction=new" % server.pid)
    server.signal(getattr(signal, "SIG" + name))
    server.wait_log(SENT_AT_EXEC[name].replace("%d", str(server.pid)), timeout=60)
    if name in ("TERM", "INT", "QUIT"):
        assert server.wait_exit(timeout=30) == 0


@pytest.mark.parametrize("mold", [False, True], ids=["plain", "mold"])
def test_a_daemonized_master_upgrades_in_place_and_keeps_its_pid(tmp_path, mold):
    """daemon = True: the exec'd code ran Gunicorn's daemonize again, whose fork left the
    master's PID behind (its exit took the service: the upgrade ended with no master); the
    mold's check forked away from the master it must stay a child of. `relaunch` no longer
    daemonizes. (Not the harness's Server: a daemon leaves its process group.)"""
    workdir, port = str(tmp_path), free_port()
    pidfile = os.path.join(workdir, "gunicorn.pid")
    write_app(workdir, "1")
    config = write_config(workdir, body=IN_PLACE + "daemon = True\nworkers = 1\n"
                          "graceful_mold = %r\nbind = '127.0.0.1:%d'\npidfile = %r\n"
                          "errorlog = %r\n" % (mold, port, pidfile,
                                                os.path.join(workdir, "error.log")))
    subprocess.run(GUNICORN + ["-c", config, "--chdir", workdir, "--pythonpath", ROOT,
                               *control_socket_args(workdir), "testapp:app"],
                   timeout=30, check=True)
    master = wait_for(lambda: os.path.exists(pidfile) and pid_in(pidfile), 30, "the pidfile")
    try:
        wait_for(lambda: version_at(port) == "1", 30, "release 1 to answer")
        write_app(workdir, "2")
        done = cli("upgrade", "--pidfile", pidfile, timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr
        assert pid_in(pidfile) == master and version_at(port) == "2"
    finally:  # the daemon this test started (and, had it forked away, what the pidfile names)
        started = {master} | ({pid_in(pidfile)} if os.path.exists(pidfile) else set())
        for pid in started:
            if process_alive(pid):
                os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not any(process_alive(pid) for pid in started), 30, "the daemon to stop")


def version_at(port):
    try:
        return requests.get("http://127.0.0.1:%d/" % port, timeout=5).json()["version"]
    except (requests.RequestException, ValueError):
        return None
