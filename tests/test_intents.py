"""Every deploy intent runs or tells its caller why: `gunicorn-graceful reload`, and a HUP or
USR2 that arrives while the master cannot start it now waits and runs (`intents`)."""

import json
import os
import re
import select
import signal
import time

import pytest

from tests.harness import (WORKERS, Server, cli, reload_command, under_load, upgrade_command,
                           wait_for, write_app)

READINESS = "graceful_readiness_path = '/healthz'\n"
IN_PLACE = READINESS + "graceful_upgrade = 'in-place'\n"
SLOW = "time.sleep(%s)"


def outcome(command, code):
    """The one JSON object a `--json` command printed, once it exited with `code`."""
    out, err = command.communicate(timeout=90)
    assert command.returncode == code, out + err
    return json.loads(out)


# A release's import waits at a gate the test opens once the request made meanwhile was
# heard: with an import of a fixed 2 s, a loaded machine could finish the first deploy
# before the second command's signal arrived. Each importer first notes its pid.
GATED = (
    "_here = os.path.dirname(os.path.abspath(__file__))\n"
    "with open(os.path.join(_here, 'gated.log'), 'a') as _log:\n"
    "    _log.write('%d\\n' % os.getpid())\n"
    "_deadline = time.monotonic() + 30\n"
    "while not os.path.exists(os.path.join(_here, 'gate-open')) \\\n"
    "        and time.monotonic() < _deadline:\n"
    "    time.sleep(0.05)\n")


def gated(server):
    """The pids that reached the gate (`GATED`)."""
    try:
        with open(os.path.join(server.workdir, "gated.log")) as handle:
            return handle.read().split()
    except FileNotFoundError:
        return []


def wait_said(command, text, timeout=30):
    """Wait until a background command printed `text` on stderr (--json's progress lines);
    read from the pipe itself, before `communicate()` reads the rest."""
    said, deadline, pipe = b"", time.monotonic() + timeout, command.stderr.fileno()
    while text.encode() not in said:
        left = deadline - time.monotonic()
        assert left > 0, "timed out waiting for %r; the command said %r" % (text, said)
        if select.select([pipe], [], [], left)[0]:
            chunk = os.read(pipe, 4096)
            assert chunk, "the command ended without saying %r: %r" % (text, said)
            said += chunk


def open_gate(server, heard):
    """The gated imports go on, once the master logged `heard` (the request made meanwhile)."""
    server.wait_log(heard)
    with open(os.path.join(server.workdir, "gate-open"), "w"):
        pass


@pytest.mark.lines
@pytest.mark.parametrize("worker", WORKERS)
def test_reload_exits_0_once_the_new_generation_serves_under_load(workdir, servers, worker):
    """Also the plain HUP's claim: every worker replaced, zero failures, one phase each way."""
    server = servers(workdir, worker=worker, workers=2, config_body=READINESS)
    write_app(workdir, "2")
    with under_load(server.url, threads=4) as load:
        done = outcome(reload_command(server, 60, "--json"), 0)
    assert load.failures() == [], load.summary()
    assert (done["command"], done["result"], done["generation"]) == ("reload", "done", 2)
    assert done["master"] == server.pid and server.version() == "2"
    assert server.count(r"event=worker\.retire pid=\d+ generation=1 reason=replaced") == 2
    assert server.count(r"event=worker\.ready pid=\d+ generation=2") == 2
    assert server.count(r"event=master\.phase pid=\d+ from=serving to=reloading") == 1
    assert server.count(r"event=master\.phase pid=\d+ from=reloading to=serving") == 1


@pytest.mark.lines
def test_reload_exits_3_with_the_rollback_reason_and_the_old_generation_serves(workdir,
                                                                                 servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before="raise RuntimeError('database url missing')")
    with under_load(server.url, threads=4) as load:
        done = cli("reload", "--pidfile", server.pidfile, timeout=90)
    assert load.failures() == [], load.summary()
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == \
        "reload rolled back: RuntimeError: database url missing"
    assert 'reason="RuntimeError: database url missing"' in server.log()
    assert server.version() == "1"


@pytest.mark.lines
def test_reload_exits_2_when_refused_in_lame_duck_or_without_the_pack(workdir, servers):
    server = servers(workdir, workers=1, config_body=READINESS +
                     "graceful_shutdown_delay = 5\n")
    server.signal(signal.SIGTERM)
    server.wait_log(r"event=master\.phase pid=\d+ from=serving to=lame_duck")
    done = outcome(reload_command(server, 60, "--json"), 2)
    assert (done["result"], done["reason"]) == ("refused",
                                                 "the master is in lame duck, about to stop")
    server.wait_exit(timeout=30)
    plain = os.path.join(workdir, "plain.py")
    with open(plain, "w") as handle:
        handle.write("workers = 1\n")  # stock Gunicorn: no pack, no status file
    stock = Server(workdir, plain, worker="gunicorn.workers.sync.SyncWorker", workers=1)
    try:
        stock.start().wait_http()
        done = cli("reload", "--pidfile", stock.pidfile)
        assert done.returncode == 2 and "has no status file" in done.stderr, done.stderr
        assert "Handling signal: hup" not in stock.log()
    finally:
        stock.stop()
    done = cli("reload", "--pidfile", stock.pidfile)
    assert done.returncode == 2 and "not running" in done.stderr, done.stderr


def test_two_reloads_at_once_both_end_with_the_code_on_disk_serving(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    write_app(workdir, "2", before=SLOW % 1)
    first = reload_command(server, 60, "--json")
    second = reload_command(server, 60, "--json")
    done = [outcome(first, 0), outcome(second, 0)]
    assert {d["generation"] for d in done} <= {2, 3}, done
    assert server.version() == "2"
    last = server_status(server)  # the kernel may merge two HUPs pending at once into one
    assert last["state"] == "serving" and last["hup_seq"] in (1, 2)
    assert [r["state"] for r in last["reloads"]] in (["done"], ["superseded", "done"]), last


def test_a_hup_right_after_start_waits_for_the_first_generation_and_runs(workdir, servers):
    write_app(workdir, "1", before=GATED)
    server = servers(workdir, workers=2, config_body=READINESS, serve=False)
    server.wait_log(r"event=worker\.booting pid=\d+ ppid=\d+ generation=1")
    write_app(workdir, "2")
    for _ in range(5):  # a deploy tool that retries at once: one reload
        server.signal(signal.SIGHUP)
    reload = reload_command(server, 60, "--json")
    wait_said(reload, "reload deferred: the first generation is still booting")
    open_gate(server, "event=reload.deferred")
    done = outcome(reload, 0)
    assert done["generation"] == 2 and server.version() == "2"
    assert server.count(r"event=reload\.deferred pid=%s seq=\d+ first_seq=1 reason=\"the first "
                        r"generation is still booting\"" % server.pid) >= 2
    assert server.count(r"event=reload\.start") == 1


def while_release_2_boots(server, start, started, importers=2):
    """`start()` (a reload or upgrade command) deploys release 2, whose import waits at the
    gate (`open_gate`); once `started` is logged and its `importers` wait there, release 3
    is on disk for the request made meanwhile."""
    write_app(server.workdir, "2", before=GATED)
    command = start()
    server.wait_log(started)
    wait_for(lambda: len(gated(server)) >= importers, 30, "release 2's importers at the gate")
    write_app(server.workdir, "3")
    return command


def test_a_hup_during_a_hup_ends_with_the_latest_code_serving(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    first = while_release_2_boots(server, lambda: reload_command(server, 60, "--json"),
                                  r"event=reload\.start generation=2")
    second = reload_command(server, 60, "--json")
    open_gate(server, r"event=reload\.start generation=3")
    done = [outcome(first, 0), outcome(second, 0)]
    assert [d["generation"] for d in done] == [3, 3], done
    assert server.version() == "3"


def test_a_hup_during_a_usr2_is_handed_to_the_new_master_and_runs_there(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    upgrade = while_release_2_boots(server, lambda: upgrade_command(server, 60),
                                    r"event=upgrade\.start")
    with under_load(server.url, threads=4) as load:
        reload = reload_command(server, 60, "--json")
        open_gate(server, "event=reload.deferred pid=%s" % server.pid)
        done = outcome(reload, 0)
    out, err = upgrade.communicate(timeout=90)
    assert upgrade.returncode == 0, out + err
    assert load.failures() == [], load.summary()
    assert done["master"] != server.pid and server.version() == "3"
    assert "event=reload.deferred pid=%s" % server.pid in server.log()
    assert "event=reload.forwarded pid=%s new_master=%s" % (server.pid, done["master"]) \
        in server.log()


def test_a_hup_and_usr2s_during_an_in_place_upgrade_run_after_it(workdir, servers):
    server = servers(workdir, workers=2, config_body=IN_PLACE)
    write_app(workdir, "2", before=SLOW % 2)
    upgrade = upgrade_command(server, 60)
    server.wait_log("event=upgrade.in_place pid=%s" % server.pid)
    for _ in range(3):
        server.signal(signal.SIGUSR2)
    write_app(workdir, "3")
    done = outcome(reload_command(server, 90, "--json"), 0)
    out, err = upgrade.communicate(timeout=90)
    assert upgrade.returncode == 0, out + err
    assert done["master"] == server.pid and server.version() == "3"
    wait_for(lambda: server_status(server)["state"] == "serving" and not server_status(
        server)["upgrade_pending"], 60, "the deferred USR2 to run")
    assert server.count(r"event=upgrade\.deferred pid=%s seq=\d+ first_seq=2" % server.pid) >= 1
    assert server.count(r"event=upgrade\.in_place pid=") == 2  # the three USR2s made one


def test_a_usr2_during_a_hup_waits_and_then_upgrades(workdir, servers):
    server = servers(workdir, workers=2, config_body=READINESS)
    reload = while_release_2_boots(server, lambda: reload_command(server, 60, "--json"),
                                   r"event=reload\.start generation=2")
    upgrade = upgrade_command(server, 60, "upgrade", "--json")
    open_gate(server, re.escape("event=upgrade.deferred pid=%s seq=1 first_seq=1 reason=\"a "
                                "HUP reload is in progress (generation 2)\"" % server.pid))
    done = outcome(upgrade, 0)
    assert outcome(reload, 0)["generation"] == 2
    assert done["result"] == "promoted" and server.version() == "3"


def server_status(server):
    with open(server.pidfile + ".status") as handle:
        return json.load(handle)
