"""The mold (graceful_mold): one import per generation, workers forked from it as the master's
children, HUP through a new mold, rollbacks that last, a mold that dies or hangs."""

import json
import os
import re
import signal

import pytest
import requests
from gunicorn.config import Config

from gunicorn_graceful import compat, settings
from gunicorn_graceful.master import mold
from tests.harness import (WORKERS, Load, cli, free_port, make_release, point_link,
                           process_alive, under_load, wait_for, write_app, write_asgi_app)

MOLD = "graceful_mold = True\ngraceful_readiness_path = '/healthz'\n"
# Each import of the app appends the importing pid to imports.log, beside the app.
RECORD_IMPORT = ("open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imports.log'), "
                 "'a').write('%d\\n' % os.getpid())")
# Gunicorn's native asgi worker exists from 24 on (the graceful one refuses to start on 23).
ASGI_CLASSES = ["gunicorn_graceful.workers.GracefulUvicornWorker"] + \
    (["gunicorn_graceful.workers.GracefulASGIWorker"] if compat.NATIVE_ASGI else [])


def imports(workdir):
    """The pids that imported the app, in order."""
    try:
        with open(os.path.join(workdir, "imports.log")) as handle:
            return [int(line) for line in handle.read().split()]
    except OSError:
        return []


def mold_pid(server, generation):
    """The pid of the last mold started for `generation`."""
    found = re.findall(r"event=mold\.start pid=(\d+) generation=%d " % generation, server.log())
    return int(found[-1])


def parent_of(pid):
    with open("/proc/%d/stat" % pid) as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def workers_of(server):
    """The master's children that are workers (every child but its molds)."""
    molds = {int(p) for p in re.findall(r"event=mold\.start pid=(\d+)", server.log())}
    return [pid for pid in server.children() if pid not in molds]


def ready_workers(server):
    """The workers the status file says are ready (not recycling, retiring or draining)."""
    try:
        with open(server.pidfile + ".status") as handle:
            return [w["pid"] for w in json.load(handle)["workers"] if w["state"] == "ready"]
    except (OSError, ValueError):
        return []


def mold_server(servers, workdir, body="", version="1", **kwargs):
    write_app(workdir, version, before=RECORD_IMPORT)
    return servers(workdir, config_body=MOLD + body, **kwargs)


def assert_no_failures(load):
    assert load.failures() == [], load.summary()


def hup_loads_the_new_code(server, workdir, write):
    """Version 2 on disk (`write`), a HUP under load: 0 failed, version 2 serves, and the app
    was imported once per generation, by each generation's mold."""
    write(workdir, "2", before=RECORD_IMPORT)
    with under_load(server.url, threads=4) as load:
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.done generation=2")
    assert_no_failures(load)
    assert server.version() == "2"
    assert imports(workdir) == [mold_pid(server, 1), mold_pid(server, 2)]


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_one_import_per_generation_and_the_workers_are_the_masters_children(
        workdir, servers, worker):
    server = mold_server(servers, workdir, worker=worker, workers=3)
    first_mold = mold_pid(server, 1)
    assert imports(workdir) == [first_mold], "only the mold imports the app, once"
    workers = workers_of(server)
    assert len(workers) == 3 and first_mold in server.children(), server.children()
    assert all(parent_of(pid) == server.pid for pid in workers)
    assert server.count(r"event=mold\.ready pid=%d generation=1 import_time=\S+" % first_mold) == 1
    assert server.version() == "1"
    out = cli("status", "--pidfile", server.pidfile).stdout
    assert "mold pid=%d generation=1 state=ready" % first_mold in out, out


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_hup_loads_new_code_through_a_new_mold_with_zero_failures(workdir, servers, worker):
    server = mold_server(servers, workdir, worker=worker, workers=2)
    hup_loads_the_new_code(server, workdir, write_app)
    old = mold_pid(server, 1)
    server.wait_log(r"event=mold\.exit pid=%d generation=1" % old)
    wait_for(lambda: not process_alive(old), 10, "the old mold to be gone")


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_a_broken_hup_rolls_back_and_replacements_keep_the_old_code(workdir, servers, worker):
    """The code is broken in place on disk; the kept generation's mold still holds the old
    code, so a worker killed after the rollback comes back serving it (no crash loop)."""
    server = mold_server(servers, workdir, worker=worker, workers=2)
    write_app(workdir, "2", before="raise RuntimeError('database url missing')")
    with under_load(server.url, threads=4) as load:
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.rollback")
    assert_no_failures(load)
    os.kill(workers_of(server)[0], signal.SIGKILL)  # not under load: its request would be lost
    server.wait_log(r"event=worker\.ready pid=\d+ generation=1", count=3)
    assert server.count(
        r"\[ERROR\] event=reload\.rollback generation=2 kept_generation=1 worker=\d+ after=\S+ "
        r"reason=\"mold: RuntimeError: database url missing\"") == 1
    assert server.version() == "1" and server.count("event=worker.boot_failed") == 0
    assert len(imports(workdir)) == 1  # the replacement did not import the broken code
    assert not process_alive(mold_pid(server, 2))


def test_killed_and_recycled_workers_are_forked_from_the_mold(workdir, servers):
    server = mold_server(servers, workdir, "max_requests = 20\n", workers=2)
    load = Load(server.url, threads=4).start()
    try:
        server.wait_log(r"event=worker\.recycle pid=\d+ reason=max_requests", count=3)
        load.wait_count(len(load.results) + 100)
    finally:
        load.stop()
    assert_no_failures(load)
    # A ready worker: the last recycle may still be draining one, which would exit 0 first.
    victim = wait_for(lambda: next(iter(ready_workers(server)), None), 10, "a ready worker")
    os.kill(victim, signal.SIGKILL)
    server.wait_log(r"event=worker\.exited pid=%d generation=1 state=\w+ signal=9" % victim)
    wait_for(lambda: len(workers_of(server)) == 2 and server.version() == "1", 10,
             "a replacement for the killed worker")
    assert imports(workdir) == [mold_pid(server, 1)]
    boots = [float(t) for t in re.findall(r"event=worker\.ready pid=\d+ generation=1 "
                                          r"boot_time=(\S+)", server.log())]
    assert len(boots) >= 6, boots
    print("boot times:", boots)


@pytest.mark.lines
def test_a_mold_killed_with_sigkill_is_started_again(workdir, servers):
    server = mold_server(servers, workdir, workers=2)
    first = mold_pid(server, 1)
    with under_load(server.url, threads=4) as load:
        os.kill(first, signal.SIGKILL)
        server.wait_log(r"\[ERROR\] event=mold\.lost pid=%d generation=1 reason=\"killed by "
                        r"SIGKILL\" action=\"starting a new mold for generation 1\"" % first)
        server.wait_log(r"event=mold\.ready pid=\d+ generation=1", count=2)
    assert_no_failures(load)
    os.kill(workers_of(server)[0], signal.SIGKILL)
    server.wait_log(r"event=worker\.ready pid=\d+ generation=1", count=3)
    second = mold_pid(server, 1)
    assert second != first and imports(workdir) == [first, second]


def test_a_mold_started_again_after_a_rollback_loads_the_pinned_release(tmp_path, servers):
    """With graceful_release_link the link points at the rejected release after the rollback:
    the kept generation's new mold still loads the release that generation was pinned to."""
    root = str(tmp_path)
    link = os.path.join(root, "current")
    point_link(link, make_release(root, "1"))
    make_release(root, "2", before="raise RuntimeError('database url missing')")
    server = servers(link, workers=2, rundir=root, config_dir=root,
                     config_body=MOLD + "graceful_release_link = %r\n" % link)
    point_link(link, os.path.join(root, "releases", "2"))
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.rollback generation=2")
    os.kill(mold_pid(server, 1), signal.SIGKILL)
    server.wait_log(r"event=mold\.ready pid=\d+ generation=1", count=2)
    assert server.count(r"event=mold\.start pid=%d generation=1 release=%s"
                        % (mold_pid(server, 1), re.escape(os.path.join(root, "releases", "1"))))
    os.kill(workers_of(server)[0], signal.SIGKILL)
    server.wait_log(r"event=worker\.ready pid=\d+ generation=1", count=3)
    assert server.version() == "1" and server.count("event=worker.boot_failed") == 0


def test_a_mold_that_hangs_at_import_is_killed_at_the_readiness_timeout(workdir, servers):
    server = mold_server(servers, workdir, "graceful_readiness_timeout = 2\n", workers=2)
    write_app(workdir, "2", before="time.sleep(60)")
    with under_load(server.url, threads=2) as load:
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.rollback .*reason=\"mold: the mold was not ready "
                        r"within graceful_readiness_timeout=2\.0s")
    assert_no_failures(load)
    assert server.version() == "1"
    wait_for(lambda: not process_alive(mold_pid(server, 2)), 10, "the hung mold to be gone")


def test_term_while_the_mold_imports_stops_everything_at_once(workdir, servers):
    write_app(workdir, "1", before="time.sleep(60)")
    server = servers(workdir, config_body=MOLD, serve=False, workers=2)
    server.wait_log(r"event=mold\.start pid=\d+ generation=1")
    first_mold = mold_pid(server, 1)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0
    wait_for(lambda: not process_alive(first_mold), 10, "the mold to be gone")


def test_a_mold_that_cannot_import_at_start_stops_the_master_with_its_reason(workdir, servers):
    write_app(workdir, "1", before="raise RuntimeError('database url missing')")
    server = servers(workdir, config_body=MOLD, serve=False, workers=2)
    assert server.wait_exit(30) == 4  # Gunicorn's APP_LOAD_ERROR
    assert server.count(r"Reason: App failed to load\. worker=\d+ cause=\"mold: RuntimeError: "
                        r"database url missing\"") == 1


def test_usr2_starts_a_new_master_with_its_own_mold(workdir, servers):
    server = mold_server(servers, workdir, workers=2)
    write_app(workdir, "2", before=RECORD_IMPORT)
    with under_load(server.url, threads=4) as load:
        server.signal(signal.SIGUSR2)
        server.wait_log(r"event=upgrade\.promoted", timeout=60)
        assert server.wait_exit(30) == 0
    assert_no_failures(load)
    assert server.version() == "2"
    assert len(imports(workdir)) == 2  # the old master's mold, then the new master's


def test_mold_with_preload_app_fails_the_start_naming_both(workdir, servers):
    server = servers(workdir, config_body=MOLD + "preload_app = True\n", serve=False)
    assert server.wait_exit(30) != 0
    assert server.count(r"Error: gunicorn-graceful: graceful_mold=true and preload_app=True: "
                        r"the mold imports the app once per generation, the master must not; "
                        r"set preload_app = False") == 1


def test_a_hup_that_turns_the_mold_off_is_refused(workdir, servers):
    server = mold_server(servers, workdir, workers=2)
    with open(os.path.join(workdir, "gunicorn_conf.py")) as handle:
        config = handle.read()
    with open(os.path.join(workdir, "gunicorn_conf.py"), "w") as handle:
        handle.write(config.replace("graceful_mold = True", "graceful_mold = False"))
    server.signal(signal.SIGHUP)
    server.wait_log(r"\[ERROR\] event=reload\.config_failed .*reason=\"graceful_mold changes on "
                    r"a restart or a USR2 only")
    assert server.version() == "1" and server.alive()


def test_an_import_that_starts_a_thread_is_warned_about(workdir, servers):
    write_app(workdir, "1", before="import threading; threading.Thread(target=time.sleep, "
                                   "args=(60,), name='pool-refresher', daemon=True).start()")
    server = servers(workdir, config_body=MOLD, workers=1)
    assert server.count(r"\[WARNING\] event=mold\.fork_unsafe pid=\d+ generation=1 "
                        r"threads=pool-refresher sockets=- ") == 1


@pytest.mark.parametrize("worker", ASGI_CLASSES)
def test_asgi_workers_from_the_mold_and_a_hup(workdir, servers, worker):
    write_asgi_app(workdir, "1", before=RECORD_IMPORT)
    server = servers(workdir, config_body="graceful_mold = True\n", app="asgiapp:app",
                     worker=worker, workers=2)
    assert server.version() == "1"
    hup_loads_the_new_code(server, workdir, write_asgi_app)


def test_metrics_count_the_requests_of_workers_forked_from_the_mold(workdir, servers):
    port = free_port()
    server = mold_server(servers, workdir, 'graceful_metrics_bind = "127.0.0.1:%d"\n'
                         'max_requests = 15\n' % port, workers=2)
    load = Load(server.url, threads=4).start()
    try:
        server.wait_log(r"event=worker\.recycle", count=4)
    finally:
        load.stop()
    answered = sum(1 for r in load.results if r.status == 200)
    scraped = lambda: _requests_total(port)  # noqa: E731
    wait_for(lambda: scraped() == answered, 10,
             lambda: "gunicorn_requests_total %s == %s answered" % (scraped(), answered))


def _requests_total(port):
    text = requests.get("http://127.0.0.1:%d/metrics" % port, timeout=5).text
    return sum(float(v) for v in re.findall(r"^gunicorn_requests_total\{[^}]*\} (\S+)$", text,
                                            re.M))


def test_the_mold_is_refused_off_linux_in_one_line(monkeypatch):
    monkeypatch.setattr(mold.sys, "platform", "darwin")
    assert mold.problem(Config(), settings.Settings(mold=True)) == (
        "graceful_mold=true needs Linux (the master becomes a child subreaper, a Linux prctl); "
        "this is darwin: set graceful_mold = False")
    assert mold.problem(Config(), settings.Settings(mold=False)) is None
