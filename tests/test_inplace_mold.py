"""USR2 in place with graceful_mold: the check that imported the new code forks its workers,
and the kept generation's mold crosses both execs."""

import os
import signal

import pytest

from tests.harness import process_alive, under_load, upgrade_command, wait_for, write_app
from tests.test_inplace import IN_PLACE, server_status, upgrade_in_place, workers_of

MOLD = IN_PLACE + "graceful_mold = True\n"
CHECKING = r"event=upgrade\.in_place pid=\d+ generation=\d+ timeout=\S+ checking=(\d+)"


def molds_of(server):
    """{generation: pid} of the molds the status file lists that are not stopping."""
    return {m["generation"]: m["pid"] for m in server_status(server)["molds"]
            if m["state"] != "stopping"}


def replace_one(server, generation):
    """SIGKILL a worker of `generation`; once its replacement serves, the replacement."""
    victim = workers_of(server, generation)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(workers_of(server, generation)) == 2
             and victim not in workers_of(server, generation), 30, "a replacement")
    return victim


@pytest.mark.lines  # the check runs Gunicorn's start with Arbiter.run replaced
def test_in_place_with_the_mold_imports_once_and_rolls_back_to_the_kept_mold(workdir,
                                                                           servers):
    server = servers(workdir, workers=2, config_body=MOLD)
    write_app(workdir, "2")
    load, _, _ = upgrade_in_place(server, 0)
    assert load.failures() == [], load.summary()
    assert server.version() == "2"
    check = int(server.wait_log(CHECKING).group(1))
    assert "event=mold.ready pid=%s generation=2" % check in server.log(), server.tail()
    wait_for(lambda: molds_of(server) == {2: check}, 30, "the kept generation's mold to stop")
    replace_one(server, 2)  # forked by the check, which imported once
    assert server.count("event=mold.start") == 1, server.tail()  # generation 1's only
    # A release whose workers fail readiness: rolled back to generation 2, whose mold (the
    # first check) crosses the exec and the exec back.
    write_app(workdir, "3", healthz=503)
    load, _, err = upgrade_in_place(server, 3)
    assert load.failures() == [], load.summary()
    assert "upgrade rolled back" in err and server.version() == "2"
    failed = int(server.wait_log(CHECKING, count=2).group(1))
    server.wait_log("event=mold.exit pid=%s generation=3" % failed)
    assert molds_of(server) == {2: check}
    write_app(workdir, "3b", healthz=503)  # on disk now: a worker importing it never serves
    replace_one(server, 2)
    assert server.version() == "2" and server.count("event=mold.start") == 1


def test_in_place_with_the_mold_an_import_that_fails_or_is_killed_is_a_refusal(workdir,
                                                                             servers):
    """The exec went ahead once the config passed; the import fails after it: the old code
    is exec'd back, and the upgrade is refused (nothing of the new code ever served)."""
    server = servers(workdir, workers=2, config_body=MOLD)
    # The exec comes once the config passed (well under 2 s), the failure after it.
    write_app(workdir, "2", before="time.sleep(2)\nraise RuntimeError('release 2 cannot import')")
    load, _, err = upgrade_in_place(server, 2)
    assert load.failures() == [], load.summary()
    assert "RuntimeError: release 2 cannot import" in err, err + server.tail()
    assert "event=upgrade.adopted pid=%s direction=back" % server.pid in server.log()
    write_app(workdir, "3", before="time.sleep(30)")
    with under_load(server.url, after=100, threads=4) as load:
        command = upgrade_command(server)
        os.kill(int(server.wait_log(CHECKING, count=2).group(1)), signal.SIGKILL)
        out, err = command.communicate(timeout=60)
    assert command.returncode == 2, out + err + server.tail()
    assert "the new code's check failed" in err and "killed by SIGKILL" in err
    assert load.failures() == [], load.summary()
    assert server.version() == "1" and server.count("event=mold.start") == 1


def test_in_place_with_the_mold_the_new_mold_or_an_old_worker_killed_mid_way(workdir, servers):
    """Once the exec'd code adopted the check as generation 2's mold, while its workers
    boot: the mold is SIGKILLed (a new one starts from the release) and a serving worker of
    the kept generation too (what it held is lost; it is not replaced: the new generation
    is wanted); the upgrade completes."""
    server = servers(workdir, workers=2, config_body=MOLD)
    write_app(workdir, "2", healthz_seconds=2)
    with under_load(server.url, after=100, threads=4) as load:
        command = upgrade_command(server)
        check = int(server.wait_log(CHECKING).group(1))
        server.wait_log("event=upgrade.booting pid=%s generation=2" % server.pid)
        os.kill(check, signal.SIGKILL)
        os.kill(workers_of(server, 1)[0], signal.SIGKILL)
        out, err = command.communicate(timeout=90)
    assert command.returncode == 0, out + err + server.tail()
    # Only what the SIGKILLed worker held is lost: at most one request per client thread.
    lost = [r for r in load.failures() if r.kind in ("reset", "disconnected")]
    assert len(lost) <= 4 and load.failures() == lost, load.summary()
    assert "event=mold.lost pid=%s generation=2" % check in server.log()
    assert server.version() == "2" and list(molds_of(server)) == [2]


def test_in_place_with_the_mold_a_master_killed_while_the_check_imports(workdir, servers):
    """SIGKILL of the exec'd master mid-way: its check (told by the kernel) and the kept
    mold end at once, and the upgrade command says so instead of waiting for its timeout
    (the status file of a killed master stays behind)."""
    server = servers(workdir, workers=2, config_body=MOLD)
    left = [molds_of(server)[1]]
    write_app(workdir, "2", before="time.sleep(30)")
    command = upgrade_command(server)
    left.append(int(server.wait_log(CHECKING).group(1)))
    server.wait_log("event=upgrade.adopted pid=%s direction=new" % server.pid)
    os.kill(server.pid, signal.SIGKILL)
    wait_for(lambda: not any(process_alive(pid) for pid in left), 10, "the molds to end")
    out, err = command.communicate(timeout=10)
    assert command.returncode == 4, out + err
    assert "exited during the in-place upgrade" in err
