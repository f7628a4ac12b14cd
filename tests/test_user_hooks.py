"""A user's server hook that raises in the master: one ERROR line, and the master keeps the
service up (`userhooks`). Gunicorn 27 dies on a HUP to a config whose `pre_fork` raises."""

import os
import signal

import pytest

from tests.harness import under_load, upgrade_command, write_app, write_config

IN_PLACE = "graceful_readiness_path = '/healthz'\ngraceful_upgrade = 'in-place'\n"
RAISES = {
    "pre_fork": "def pre_fork(server, worker):\n    raise RuntimeError('no license file')\n",
    "on_reload": "def on_reload(server):\n    raise RuntimeError('no license file')\n",
}


@pytest.mark.lines
@pytest.mark.parametrize("hook", sorted(RAISES))
def test_a_hup_to_a_config_whose_master_hook_raises_rolls_back_under_load(
        workdir, servers, hook):
    server = servers(workdir, workers=2)
    write_app(workdir, "2")
    with under_load(server.url, threads=4) as load:
        write_config(workdir, body=RAISES[hook])  # the same file: the HUP reads it
        server.signal(signal.SIGHUP)
        server.wait_log(r"event=reload\.rollback", timeout=40)
    assert load.failures() == [], load.summary()
    assert server.alive() and server.version() == "1"
    assert server.count(r"\[ERROR\] event=hook\.failed pid=%d hook=%s release=\S+ "
                        r"error=\"RuntimeError: no license file\" action=\"the generation "
                        r"fails\"" % (server.pid, hook)) >= 1, server.tail()
    assert server.count(r"\[ERROR\] event=reload\.rollback generation=2 kept_generation=1 "
                        r"worker=None after=\S+ reason=\"%s hook raised RuntimeError: no "
                        r"license file\"" % hook) == 1
    # The fixed config goes through, and its workers serve the new code.
    write_config(workdir)
    server.signal(signal.SIGHUP)
    server.wait_log(r"event=reload\.done generation=3", timeout=40)
    assert server.version() == "2"


def test_a_child_exit_hook_that_raises_is_one_line_and_the_master_replaces_the_worker(
        workdir, servers):
    server = servers(workdir, workers=1, config_body=(
        "def child_exit(server, worker):\n    raise RuntimeError('metrics push failed')\n"))
    (worker,) = server.children()
    os.kill(worker, signal.SIGKILL)
    server.wait_log(r"event=hook\.failed pid=%d hook=child_exit .*action=\"the master goes "
                    r"on\"" % server.pid)
    server.wait_log(r"event=worker\.ready", count=2)
    assert server.alive() and server.version() == "1"


def test_an_in_place_upgrade_to_a_release_whose_pre_fork_raises_goes_back(workdir, servers):
    """The check (`--check-config`) never forks, so it passes; the first fork after the exec
    is part of the trial: the old code is exec'd back, the old workers serve on."""
    server = servers(workdir, workers=2, config_body=IN_PLACE)
    old_workers = server.children()
    write_app(workdir, "2")
    with under_load(server.url, threads=4) as load:
        write_config(workdir, body=IN_PLACE + RAISES["pre_fork"])
        command = upgrade_command(server)
        out, err = command.communicate(timeout=90)
    assert command.returncode == 3, out + err + server.tail()
    assert "pre_fork hook raised RuntimeError: no license file" in out + err
    assert load.failures() == [], load.summary()
    assert server.alive() and set(old_workers) <= set(server.children())
    assert "event=upgrade.adopted pid=%s direction=back" % server.pid in server.log()
    assert server.version() == "1"


def test_a_usr2_whose_pre_exec_raises_is_refused_and_the_old_master_serves_on(
        workdir, servers):
    server = servers(workdir, workers=2, config_body=(
        "def pre_exec(server):\n    raise RuntimeError('no license file')\n"))
    command = upgrade_command(server)
    out, err = command.communicate(timeout=90)
    assert command.returncode == 2, out + err + server.tail()
    assert "pre_exec hook raised RuntimeError: no license file" in out + err
    assert server.count(r"event=hook\.failed pid=\d+ hook=pre_exec .* action=\"the upgrade is "
                        r"refused\"") == 1
    assert server.alive() and server.version() == "1"
    assert len(server.masters()) == 1 and len(server.children()) == 2
