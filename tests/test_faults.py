"""Fault paths: no fault loses an accepted request, crashes the master, or leaves the state lying.

Each test is one fault an operator meets (kill -9 at a bad moment, a HUP storm, an
unwritable pidfile directory, a crash after a rollback) with real processes.
"""

import contextlib
import http.client
import json
import os
import re
import signal
import threading
import time

import pytest
import requests

from gunicorn_graceful import compat
from tests.harness import (WORKERS, Load, NotifySocket, cli, make_release, pid_in, point_link,
                           process_alive, read_pid, under_load, unwritable, upgrade_command,
                           usr2_new_master, wait_for, write_app)

READINESS = "graceful_readiness_path = '/healthz'\n"
BROKEN = {"before": "raise RuntimeError('database url missing')"}
BEFORE_SEND = ("refused", "connect_timeout")


def ready_workers(server, count):
    """Wait until the master runs exactly `count` workers, all ready; their pids."""
    def listed():
        try:
            with open(server.pidfile + ".status") as handle:
                workers = json.load(handle)["workers"]
        except (OSError, ValueError):
            return None
        if len(workers) == count and all(w["state"] == "ready" for w in workers):
            return [w["pid"] for w in workers]
        return None
    return wait_for(listed, 20, lambda: "%s ready workers:\n%s" % (count, server.tail()))


# -- 1. a rollback lasts as long as the master ---------------------------------------------

@pytest.mark.parametrize("worker", WORKERS)
def test_after_a_rollback_recycled_workers_load_the_pinned_release(tmp_path, servers, worker):
    root = str(tmp_path)
    link = os.path.join(root, "current")
    point_link(link, make_release(root, "1"))
    make_release(root, "2", **BROKEN)
    server = servers(link, worker=worker, workers=2, rundir=root, config_dir=root,
                     config_body=READINESS + "graceful_release_link = %r\nmax_requests = 20\n"
                     % link)
    point_link(link, os.path.join(root, "releases", "2"))
    with under_load(server.url, warmup=20, after=0, threads=4) as load:
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.rollback generation=2")
        rolled_back = server.count(r"event=worker\.ready pid=\d+ generation=1")
        # Every worker serves 20 requests, then a replacement of the kept generation boots.
        server.wait_log(r"event=worker\.ready pid=\d+ generation=1", count=rolled_back + 4,
                        timeout=60)
    assert load.failures() == [], load.summary()
    assert {r.version for r in load.results} == {"1"}
    assert "worker.boot_failed" not in server.log()
    assert server.count(r"event=worker\.booting pid=\d+ ppid=\d+ generation=1 release=%s"
                        % re.escape(os.path.join(root, "releases", "1"))) >= 4


def test_kept_worker_that_cannot_be_replaced_reports_degraded_until_a_good_hup(workdir, servers):
    with NotifySocket(workdir) as notify:
        server = servers(workdir, workers=2, config_body=READINESS,
                         env={"NOTIFY_SOCKET": notify.path})
        write_app(workdir, "2", **BROKEN)  # the code changes in place: nothing to pin
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.rollback generation=2")
        victim, survivor = ready_workers(server, 2)
        os.kill(victim, signal.SIGKILL)
        server.wait_log(r"\[ERROR\] event=worker\.boot_failed .*generation=1 .*retry_in=1\.00 "
                        r"reason=\"RuntimeError: database url missing\"")
        server.wait_log(r"\[ERROR\] event=worker\.boot_failed .*retry_in=2\.00")
        shown = cli("status", "--pidfile", server.pidfile)
        notify.wait("STATUS=degraded")
        # The surviving worker keeps serving meanwhile.
        load = Load(server.url, threads=4, max_requests=200).start()
        load.wait_count(200)
        load.stop()
        assert load.failures() == [], load.summary()
        assert shown.returncode == 3, shown.stdout + shown.stderr
        assert "state=degraded" in shown.stdout and "database url missing" in shown.stdout
        assert "workers_ready=1" in shown.stdout
        write_app(workdir, "3")
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.done generation=3")
        shown = cli("status", "--pidfile", server.pidfile)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "state=serving" in shown.stdout and "workers_ready=2" in shown.stdout
        assert server.version() == "3"
        wait_for(lambda: not process_alive(survivor), 30, "the kept worker to drain and exit")
        notify.wait("READY=1\nSTATUS=generation 3 serving")


# -- 2. a reload decision never SIGKILLs a worker that may hold connections -------------------

@pytest.mark.parametrize("worker", WORKERS)
def test_hup_storm_under_load_loses_no_request(workdir, servers, worker):
    server = servers(workdir, worker=worker, workers=2, config_body=READINESS)
    load = Load(server.url, threads=4, slow_threads=2, slow_path="/slow?seconds=0.2").start()
    try:
        load.wait_count(50)
        for storm in range(1, 4):
            for _ in range(10):  # ten HUPs in one second: the storm is the stimulus
                server.signal(signal.SIGHUP)
                time.sleep(0.1)
            server.wait_log(r"event=reload\.done", count=storm, timeout=60)
        load.wait_count(len(load.results) + 100)
    finally:
        load.stop()
    print(load.summary())
    assert load.failures() == [], load.summary()
    assert server.alive()
    killed_ready = re.findall(r"event=worker\.exited pid=\d+ generation=\d+ state=(?:ready|draining) "
                              r"signal=9", server.log())
    assert killed_ready == []
    assert "Traceback" not in server.log()


# -- 3. file-system errors never crash the master ----------------------------------------------

@pytest.mark.parametrize("worker", WORKERS)
def test_term_with_an_unwritable_pidfile_directory_still_drains(workdir, servers, worker):
    rundir = os.path.join(workdir, "run")
    os.makedirs(rundir)
    server = servers(workdir, worker=worker, workers=2, rundir=rundir)
    slow = Load(server.url, threads=2, path="/slow?seconds=1.5").start()
    try:
        server.wait_started("/slow", count=2)
        with unwritable(rundir):
            server.signal(signal.SIGTERM)
            code = server.wait_exit(timeout=40)
    finally:
        slow.stop()
    print(slow.summary())
    assert code == 0, server.tail()
    assert slow.failures(allow=BEFORE_SEND) == [], slow.summary()
    assert [r for r in slow.results if r.ok], slow.summary()
    log = server.log()
    assert "Traceback" not in log
    assert server.count(r"\[WARNING\] event=master\.file_failed .*action=remove "
                        r"path=\S+gunicorn\.pid\.status") == 1
    assert server.count(r"event=drain\.done") == 2


def test_usr2_hands_over_when_the_pidfile_directory_turns_unwritable(workdir, servers):
    rundir = os.path.join(workdir, "run")
    os.makedirs(rundir)
    server = servers(workdir, workers=2, rundir=rundir, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(2)")
    with under_load(server.url, threads=4) as load:
        new = usr2_new_master(server)
        with unwritable(rundir):
            server.wait_log(r"event=upgrade\.promoted pid=%s" % new, timeout=40)
            assert server.wait_exit(timeout=40) == 0
    assert load.failures() == [], load.summary()
    assert process_alive(new) and server.version() == "2"
    log = server.log()
    assert "Traceback" not in log
    assert server.count(r"\[WARNING\] event=master\.file_failed pid=%s action=write "
                        r"path=\S+gunicorn\.pid " % new) == 1


def test_status_tells_the_truth_when_the_pidfile_directory_is_immutable(workdir, servers):
    """Before, a HUP under an immutable pidfile directory left the status file naming the
    gone first generation: `status` said serving=False (exit 3) while two v2 workers
    served, and after the exit both files named dead processes. Now the file is written
    in place; when even that fails, `status` sees live workers the file does not list
    and says it does not know (exit 4), never "not serving"."""
    rundir = os.path.join(workdir, "run")
    os.makedirs(rundir)
    server = servers(workdir, workers=2, rundir=rundir)
    status_path = server.pidfile + ".status"
    with unwritable(rundir), contextlib.ExitStack() as later:
        for version in ("2", "3"):
            if version == "3":  # the file itself refuses writes too now
                refused = later.enter_context(unwritable(status_path))
            write_app(workdir, version)
            server.signal(signal.SIGHUP)
            server.wait_log(r"event=reload\.done generation=%s " % version, timeout=40)
            wait_for(lambda: len(server.children()) == 2, 20, "the old workers gone")
            answer = cli("status", "--pidfile", server.pidfile)
            if version == "2":
                assert answer.returncode == 0, (answer.stdout, answer.stderr)
                assert "serving=True" in answer.stdout and "generation=2" in answer.stdout
            else:
                assert answer.returncode == 4, (answer.stdout, answer.stderr)
                assert "state=unknown workers_ready=unknown" in answer.stdout
                assert "serving=unknown" in answer.stdout and "unlisted" in answer.stdout
                later.close()  # writable again: the next write lands, and tells the truth
                assert refused == status_path
                wait_for(lambda: cli("status", "--pidfile", server.pidfile).returncode == 0,
                         10, "the status file to name generation 3")
        server.signal(signal.SIGTERM)
        assert server.wait_exit(timeout=40) == 0
        with open(server.pidfile) as pidfile, open(status_path) as status_file:
            assert (pidfile.read(), status_file.read()) == ("", "")  # emptied: not removable
    answer = cli("status", "--pidfile", server.pidfile)
    assert answer.returncode == 1 and "not running" in answer.stderr, answer.stderr
    assert "Traceback" not in server.log()


# -- 4. orphaned workers drain ------------------------------------------------------------------

def slow_request_in_background(server, seconds):
    """One slow request in a thread; the list gets its response or its exception."""
    outcome = []

    def run():
        try:
            outcome.append(requests.get(server.url + "/slow?seconds=%s" % seconds, timeout=30))
        except requests.RequestException as exc:
            outcome.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server.wait_started("/slow")
    return thread, outcome


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_workers_of_a_killed_master_finish_in_flight_requests_and_exit(workdir, servers, worker):
    # timeout paces the sync worker's wait, after which it checks its master
    server = servers(workdir, worker=worker, workers=2, config_body="timeout = 4\n")
    workers = ready_workers(server, 2)
    thread, outcome = slow_request_in_background(server, 2)
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)
    thread.join(timeout=30)
    assert outcome and not isinstance(outcome[0], Exception), outcome
    assert outcome[0].status_code == 200
    wait_for(lambda: not any(process_alive(pid) for pid in workers), 30,
             lambda: "the orphaned workers to exit:\n" + server.tail())
    assert server.count(r"\[WARNING\] event=worker\.orphaned pid=\d+ ppid=%s" % server.pid) == 2


def test_an_orphaned_sync_worker_whose_queue_never_runs_dry_stops_taking_clients(workdir,
                                                                                 servers):
    """Gunicorn's sync worker checks its master only once its accept queue runs dry: under
    steady load, an orphan would serve new clients with the old code for as long as they
    come. The pack's accept checks first, so it drains and exits while the load goes on."""
    server = servers(workdir, worker="sync", workers=1)
    (worker,) = ready_workers(server, 1)
    load = Load(server.url, threads=6).start()  # more clients than the worker: a queue
    try:
        load.wait_count(200)
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        wait_for(lambda: not process_alive(worker), 10,
                 lambda: "the orphan to stop while %d requests were answered:\n%s"
                 % (len(load.results), server.tail()))
    finally:
        load.stop()
    assert server.count(r"\[WARNING\] event=worker\.orphaned pid=%d" % worker) == 1


@pytest.mark.skipif("gthread" not in WORKERS, reason="the sync worker keeps no connection alive")
def test_orphaned_thread_worker_tells_kept_alive_clients_to_close(workdir, servers):
    server = servers(workdir, worker="gthread", workers=2, config_body="keepalive = 30\n")
    workers = ready_workers(server, 2)
    connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                   for _ in range(4)]
    try:
        for conn in connections:  # kept-alive connections, spread over both workers
            conn.request("GET", "/")
            conn.getresponse().read()
        thread, outcome = slow_request_in_background(server, 3)
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        server.wait_log(r"event=worker\.orphaned pid=\d+ ppid=%s" % server.pid, count=2)
        answers = []
        for conn in connections:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            answers.append((response.status, response.getheader("Connection")))
        thread.join(timeout=30)
        wait_for(lambda: not any(process_alive(pid) for pid in workers), 15,
                 lambda: "the orphaned workers to exit:\n" + server.tail())
    finally:
        for conn in connections:
            conn.close()
    # Answered, and told to go: not served on as if nothing happened, and not reset.
    assert answers == [(200, "close")] * 4, answers
    assert outcome and not isinstance(outcome[0], Exception) and outcome[0].status_code == 200


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_new_master_promotes_itself_only_when_ready_after_the_old_master_died(workdir, servers,
                                                                             worker):
    """The old master SIGKILLed while its new master's workers import (3 s): the pidfile
    names the new master within a tick, not the dead one until it serves (it did for ~3 s);
    it promotes itself only once serving, and what the load sent meanwhile waited for it."""
    server = servers(workdir, worker=worker, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(3)")
    with under_load(server.url, threads=2, after=50) as load:
        new = usr2_new_master(server)
        os.kill(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        server.proc.wait(timeout=10)
        wait_for(lambda: read_pid(server.pidfile) == new, 40,
                 lambda: "the pidfile to name %s:\n%s" % (new, server.tail()))
        named = time.monotonic() - killed
        server.wait_log(r"event=upgrade\.promoted pid=%s" % new)
    assert load.failures() == [], load.summary()
    gap = max(r.ended - r.started for r in load.results)
    print("pidfile named the new master %.2f s after the kill; longest request %.2f s"
          % (named, gap))
    log = server.log()
    assert server.count(r"\[WARNING\] event=upgrade\.old_master_gone pid=%s" % new) == 1
    # Named before it served (its workers were still importing), promoted only after.
    assert log.index("event=upgrade.old_master_gone pid=%s" % new) \
        < log.index("event=master.serving pid=%s" % new)
    # Fresh connections wake every process on the listener: an orphan must take none of them.
    served = [requests.get(server.url + "/", headers={"Connection": "close"}, timeout=10)
              .json()["version"] for _ in range(20)]
    assert served == ["2"] * 20, served
    log = server.log()
    assert log.index("event=master.serving pid=%s" % new) < log.index("Master has been promoted")
    assert "Traceback" not in log


# -- 5. a stop does not wait for workers that never became ready ------------------------------

def test_term_during_a_reload_whose_workers_hang_at_import_stops_at_once(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS + "graceful_timeout = 10\n")
    write_app(workdir, "2", before="time.sleep(600)")
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=worker\.booting pid=\d+ ppid=\d+ generation=2", count=2)
    asked = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0
    # Nothing was in flight: the stop must not sit out graceful_timeout (10 s).
    assert time.monotonic() - asked < 5, server.tail()


# -- 6. systemd stays correct after a HUP ------------------------------------------------------

def test_usr2_after_a_hup_tells_systemd_the_new_mainpid(workdir, servers):
    with NotifySocket(workdir) as notify:
        server = servers(workdir, workers=1, config_body=READINESS,
                         env={"NOTIFY_SOCKET": notify.path})
        notify.wait("READY=1")
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.done generation=2")
        write_app(workdir, "2")
        command = upgrade_command(server)
        out, err = command.communicate(timeout=60)
        assert command.returncode == 0, out + err
        new = pid_in(server.pidfile)
        notify.wait("MAINPID=%s" % new)
        notify.wait("new master %s serving" % new)
        assert server.wait_exit(timeout=30) == 0
    assert not [m for m in notify.messages if "STOPPING=1" in m], notify.messages


def test_rolled_back_new_master_does_not_tell_systemd_it_stops(workdir, servers):
    with NotifySocket(workdir) as notify:
        server = servers(workdir, workers=1, config_body=READINESS,
                         env={"NOTIFY_SOCKET": notify.path})
        write_app(workdir, "2", **BROKEN)
        command = upgrade_command(server)
        out, err = command.communicate(timeout=60)
        assert command.returncode == 3, out + err
        notify.wait("upgrade rolled back")
        wait_for(lambda: not os.path.exists(server.pidfile + ".2"), 20, "the new master to exit")
    assert not [m for m in notify.messages if "STOPPING=1" in m], notify.messages


# -- 7, 8, 9. a rolled-back upgrade leaves no trace and says why --------------------------------

def control_socket_answers(workdir):
    from gunicorn.ctl.client import ControlClient
    with ControlClient(os.path.join(workdir, "ctl.sock"), timeout=5) as client:
        return client.send_command("show workers")


@pytest.mark.parametrize("fault", ["broken_release", "new_master_sigkill"])
def test_rolled_back_upgrade_leaves_no_trace_and_a_later_one_succeeds(workdir, servers, fault):
    server = servers(workdir, workers=2, config_body=READINESS)
    if fault == "broken_release":
        write_app(workdir, "2", **BROKEN)
        command = upgrade_command(server)
        out, err = command.communicate(timeout=60)
        assert command.returncode == 3, out + err
        assert "upgrade rolled back: " in err and "RuntimeError: database url missing" in err
    else:
        write_app(workdir, "2", before="time.sleep(30)")
        server.signal(signal.SIGUSR2)
        wait_for(lambda: os.path.exists(server.pidfile + ".2.status"), 20,
                 "the new master's status file")
        os.kill(pid_in(server.pidfile + ".2"), signal.SIGKILL)
        server.wait_log(r"event=upgrade\.rollback")
    wait_for(lambda: not os.path.exists(server.pidfile + ".2")
             and not os.path.exists(server.pidfile + ".2.status"), 10,
             lambda: "no .2 files: %s" % os.listdir(workdir))
    assert server.alive() and pid_in(server.pidfile) == server.pid
    if compat.CONTROL_SOCKET:
        wait_for(lambda: control_socket_answers(workdir), 10, "gunicornc to answer")
    with open(server.pidfile + ".status") as handle:
        listed = [w["pid"] for w in json.load(handle)["workers"]]
    assert all(process_alive(pid) for pid in listed), listed
    write_app(workdir, "3")
    command = upgrade_command(server)
    out, err = command.communicate(timeout=60)
    assert command.returncode == 0, out + err
    assert server.version() == "3"


def test_an_upgrade_that_cannot_write_its_pidfile_is_refused_with_that_reason(workdir, servers):
    rundir = os.path.join(workdir, "run")
    os.makedirs(rundir)
    server = servers(workdir, workers=2, rundir=rundir, config_body=READINESS)
    write_app(workdir, "2")
    with unwritable(rundir):
        server.signal(signal.SIGUSR2)
        server.wait_log(r"\[ERROR\] event=upgrade\.refused pid=%s reason=\"cannot write the "
                        r"pidfile %s\.2: " % (server.pid, re.escape(server.pidfile)))
    assert server.alive() and server.version() == "1"


def test_upgrade_rollback_names_a_new_master_killed_by_a_signal(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="time.sleep(30)")
    os.kill(usr2_new_master(server), signal.SIGSEGV)
    server.wait_log(r"event=upgrade\.rollback .*reason=\"new master killed by SIGSEGV")


# -- 10. generation numbers are never reused ---------------------------------------------------

def test_a_rolled_back_generation_number_is_not_reused(workdir, servers):
    server = servers(workdir, workers=1, config_body=READINESS)
    write_app(workdir, "2", **BROKEN)
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.rollback generation=2")
    write_app(workdir, "3")
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.done generation=3")
    assert server.count(r"event=reload\.start generation=2 ") == 1


# -- 11. correctness found in review -----------------------------------------------------------

def test_max_booting_zero_boots_every_missing_worker_at_once(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS + "graceful_max_booting = 0\n")
    write_app(workdir, "2", before="time.sleep(2)")
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=worker\.booting pid=\d+ ppid=\d+ generation=2", count=2)
    server.signal(signal.SIGTTIN)  # a third worker, wanted while two still boot
    server.wait_log(r"event=reload\.done generation=2 ")
    lines = server.log().split("event=reload.start")[1].splitlines()
    booted = [i for i, l in enumerate(lines) if "event=worker.booting" in l]
    first_ready = next(i for i, l in enumerate(lines) if "event=worker.ready" in l)
    assert len(booted) == 3 and booted[-1] < first_ready, lines


def test_rollback_restores_listeners_pidfile_and_environment(workdir, servers):
    server = servers(workdir, workers=1, serve=None,
                     config_body=READINESS + "raw_env = ['STAGE=one']\n")
    server.settings_in_config(bind=["127.0.0.1:0"], pidfile=server.pidfile)
    server.start().wait_log("event=master.serving")
    other_pid = os.path.join(workdir, "other.pid")
    # The HUP's config: one more listener (a new address), another pidfile and environment.
    server.set_in_config(bind=["127.0.0.1:0", "127.0.0.1:0"], pidfile=other_pid,
                         raw_env=["STAGE=two", "EXTRA=1"])
    write_app(workdir, "2", **BROKEN)
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.rollback generation=2")
    assert pid_in(server.pidfile) == server.pid and not os.path.exists(other_pid)
    opened = server.wait_log(r"event=master\.listening listeners=http://127\.0\.0\.1:\d+,"
                             r"http://127\.0\.0\.1:(\d+)")
    other_port = int(opened.group(1))
    # A replacement of the kept generation gets the kept address and environment.
    write_app(workdir, "1b", before="assert os.environ.get('STAGE') == 'one' "
                                   "and 'EXTRA' not in os.environ, dict(os.environ)")
    victim = ready_workers(server, 1)[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_log(r"event=worker\.ready pid=(?!%s)\d+ generation=1" % victim)
    assert server.version() == "1b"
    with pytest.raises(requests.ConnectionError):
        requests.get("http://127.0.0.1:%s/" % other_port, timeout=5)


def test_a_worker_class_that_is_not_the_packs_stops_the_start_with_one_line(workdir, servers):
    server = servers(workdir, worker="gunicorn.workers.sync.SyncWorker", serve=False)
    code = server.wait_exit(timeout=30)
    assert code != 0
    assert server.count(r"worker_class=gunicorn\.workers\.sync\.SyncWorker is not a "
                        r"gunicorn-graceful worker") == 1
    assert "Traceback" not in server.log()


@pytest.mark.lines
def test_workers_dying_right_after_fork_never_crash_the_master(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS + (
        "import os\n"
        "def post_fork(server, worker):\n"
        "    if server.generation > 1:\n"
        "        os._exit(3)\n"))
    for attempt in range(1, 6):
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.rollback", count=attempt)
    assert server.alive() and server.version() == "1"
    assert "Traceback" not in server.log() and "KeyError" not in server.log()
